// Package reconciler is llmd-kn's controller-runtime reconciler of the
// slo.autoscaling.llm-d.ai PodAutoscaler class: Knative picks a PA's class
// with autoscaling.knative.dev/class, and this package does for that class
// what Knative's own HPA and KPA reconcilers
// (knative.dev/serving/pkg/reconciler/autoscaling) do for theirs.
//
// Per PodAutoscaler of the class it
//   - runs one decider (pkg/autoscaler) per revision, configured from the
//     revision's annotations (autoscaler.ApplySpec) over the
//     config-llmd-autoscaler defaults, every tick on the load the activators
//     report (StatsAPI: POST /v1/stats; POST /v1/poke wakes a revision at
//     zero at once), and exposes its recommendations (GET
//     /v1/recommendations, gauge llmd_autoscaler_recommended_replicas);
//   - scales the decode Deployment (the PA's scaleTargetRef, Knative's
//     revision Deployment) through its scale subresource; a new revision
//     keeps its initial scale (autoscaling.knative.dev/initial-scale,
//     default 1) until it has been reached (ScaleTargetInitialized) and for
//     the scale-to-zero grace period after;
//   - for llm-d.ai/disaggregation: prefill-decode, creates, updates and
//     scales the `<revision>-prefill` Deployment (MakePrefillDeployment),
//     controlled by the PA so that garbage collection removes it with the
//     revision;
//   - owns the revision's traffic endpoint: the Service named like the
//     revision and its EndpointSlice, whose endpoints are the llmd-kn
//     activator's ready addresses;
//   - writes the PA status Knative's revision reconciler reads
//     (PropagateAutoscalerStatus): DesiredScale, ActualScale (ready decode
//     replicas), ServiceName, MetricsServiceName and the conditions
//     ScaleTargetInitialized, SKSReady and Active, with the KPA's rules;
//   - applies Knative's progress-deadline rule (the KPA's activation
//     timeout): a PA that is activating (Active=Unknown) while the decider
//     recommends zero decode replicas keeps the replicas of both roles
//     (a new revision its initial scale) until it has been activating for
//     longer than its progress deadline plus ActivationTimeoutBuffer (30 s, the
//     KPA's, so that Knative's revision reconciler reports the pods'
//     failure first); then the PA is marked Inactive with reason TimedOut
//     and both roles go to zero. Knative's revision reconciler turns an
//     inactive, never initialized PA into ResourcesAvailable=False
//     (ProgressDeadlineExceeded). The deadline is the PA's
//     serving.knative.dev/progress-deadline, else the decode Deployment's
//     progressDeadlineSeconds (Knative sets it from config-deployment's
//     progress-deadline), else 10 min. As in the KPA, demand (a positive
//     recommendation) keeps an activation going, min-scale > 0 never
//     times out, and a later request starts a new activation. Unlike the
//     KPA, an initial-scale above 1 does not exempt a revision, and the
//     reason TimedOut stays while the target is at zero and was never
//     initialized: it records that the initial scale was given up, so that
//     a restarted autoscaler does not apply it again. Time is an input
//     (Options.Now); condition transitions are dated with it.
//
// For a revision with KV offload (llm-d.ai/kv-offload on-scale-down or
// write-through) that is to go to zero, the decode pods are first asked to
// flush their KV cache to shared storage (POST apis.KVFlushPath on each
// running decode pod) and the replicas stay until they have answered or
// llm-d.ai/kv-offload-deadline has passed; demand that returns meanwhile
// cancels the flush. Pods without the endpoint (a plain vLLM, which flushes
// on shutdown) are not waited for. See kvflush.go and docs/kv-offload.md.
//
// In advise mode (llm-d.ai/autoscaler-mode: advise) it computes and reports
// recommendations (an Event per change, the API and the gauge) but leaves
// the replicas alone.
//
// The traffic path of a revision of this class:
//
//	client
//	  │
//	  ▼
//	ingress (Kourier/Istio; KIngress from Knative's Route)
//	  │  Host → revision, headers Knative-Serving-Revision/-Namespace
//	  ▼
//	Service <revision> (ports 80 http, 81 http2; no selector)   ◄── this package
//	  │  EndpointSlice <revision> = ready addresses of
//	  │  llmd-kn/llmd-activator's EndpointSlices, port 8080     ◄── this package
//	  ▼
//	llmd-kn activator (buffers at zero, pokes, routes by KV cache and load)
//	  │  pod IP : container port, chosen per request
//	  ├──────────────► decode pods  (<revision>-deployment, Knative's)
//	  └──────────────► prefill pods (<revision>-prefill, this package's)
//
// No ServerlessService (SKS) is created for this class. Knative's SKS
// switches a revision's public Service between Knative's activator (proxy
// mode) and the pods (serve mode); llmd-kn's activator must see every
// request to route by KV cache, order by SLO tier and drive the P/D
// two-step, so the endpoints always point at it and there is nothing to
// switch. The SKSReady condition therefore reports this package's Service
// and EndpointSlice: ready once the activator has a ready address.
//
// The revision Service's endpoints are written as an EndpointSlice only,
// with no core/v1 Endpoints. What reads them with Knative Serving v0.50.0:
// net-kourier v0.50.0 lists the EndpointSlices labelled
// kubernetes.io/service-name (it moved from Endpoints to EndpointSlices in
// Knative 1.21); net-istio hands the Service's host name to Istio, which
// reads EndpointSlices (net-istio reads Endpoints only of its gateway
// Service, to probe it); Contour reads only EndpointSlices (since 1.31);
// kube-proxy reads EndpointSlices; knative.dev/networking has no Endpoints
// lister. Knative Serving's own readers of core/v1 Endpoints are the SKS
// reconciler, the KPA (its private Service) and Knative's activator, none
// of which exists in this class's path (no SKS), and the Route reconciler,
// for its own placeholder Services only. Writing Endpoints too would need
// the endpointslice.kubernetes.io/skip-mirror label, or
// kube-controller-manager's EndpointSlice mirroring would add a second
// slice with the same addresses; it would buy nothing for these readers,
// cost a write per change to an API deprecated since Kubernetes 1.33, and
// widen the RBAC. Networking layers older than Knative 1.21's read
// Endpoints and are not supported with this class.
//
// RBAC (least privilege): podautoscalers get/list/watch/update/patch and
// podautoscalers/status; revisions get/list/watch; deployments and
// deployments/scale; services and endpointslices (create, update, delete in
// revision namespaces); pods get/list (the decode pods to flush); events;
// leases in the autoscaler's own namespace.
//
// The package must not depend on the activator or the local runtime; it
// imports the pure cores (pkg/autoscaler, pkg/apis, pkg/engine) and
// Knative's and Kubernetes' API types.
package reconciler
