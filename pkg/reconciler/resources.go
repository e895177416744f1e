package reconciler

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"slices"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"knative.dev/pkg/kmeta"
	"knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	"knative.dev/serving/pkg/apis/serving"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
)

// Labels and values of the objects this package creates.
const (
	// RoleLabel marks a pod's llm-d role (prefill or decode).
	RoleLabel   = "llm-d.ai/role"
	RolePrefill = "prefill"
	// ManagedByLabel is app.kubernetes.io/managed-by; ManagedBy its value.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "llmd-kn"
	// EndpointSliceManager is the endpointslice.kubernetes.io/managed-by
	// value of the revision EndpointSlices.
	EndpointSliceManager = "autoscaler.llm-d.ai"
	// TemplateHashAnnotation on a prefill Deployment is the hash of the
	// pod template it was made from; a change updates the Deployment.
	TemplateHashAnnotation = "llm-d.ai/template-hash"

	// QueueProxyContainer is Knative's sidecar, left out of prefill pods.
	QueueProxyContainer = "queue-proxy"
	// ActivatorPort is the activator's OpenAI API port.
	ActivatorPort = 8080
)

// PrefillName is the name of a revision's prefill Deployment.
func PrefillName(revision string) string { return revision + "-prefill" }

// revisionLabels are the labels of the revision Service and EndpointSlice.
func revisionLabels(pa *v1alpha1.PodAutoscaler) map[string]string {
	l := map[string]string{
		serving.RevisionLabelKey: pa.Name,
		ManagedByLabel:           ManagedBy,
	}
	if s := pa.Labels[serving.ServiceLabelKey]; s != "" {
		l[serving.ServiceLabelKey] = s
	}
	if c := pa.Labels[serving.ConfigurationLabelKey]; c != "" {
		l[serving.ConfigurationLabelKey] = c
	}
	return l
}

// MakeService is the revision's public Service: selector-less, named like
// the revision, with Knative's ports (http 80 and http2 81) to the
// activator's port. Its endpoints come from MakeEndpointSlice.
func MakeService(pa *v1alpha1.PodAutoscaler) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:            pa.Name,
			Namespace:       pa.Namespace,
			Labels:          revisionLabels(pa),
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(pa)},
		},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(ActivatorPort)},
				{Name: "http2", Protocol: corev1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(ActivatorPort),
					AppProtocol: ptr.To("kubernetes.io/h2c")},
			},
		},
	}
}

// ActivatorAddresses are the ready IPv4 addresses of the activator's
// EndpointSlices, sorted and without duplicates.
func ActivatorAddresses(activatorSlices []discoveryv1.EndpointSlice) []string {
	var out []string
	for _, s := range activatorSlices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				if ip := net.ParseIP(a); ip != nil && ip.To4() != nil {
					out = append(out, a)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// MakeEndpointSlice is the revision Service's EndpointSlice: the
// activator's ready addresses on its port, under both Service port names.
func MakeEndpointSlice(pa *v1alpha1.PodAutoscaler, addresses []string) *discoveryv1.EndpointSlice {
	labels := revisionLabels(pa)
	labels[discoveryv1.LabelServiceName] = pa.Name
	labels[discoveryv1.LabelManagedBy] = EndpointSliceManager
	eps := make([]discoveryv1.Endpoint, 0, len(addresses))
	for _, a := range addresses {
		eps = append(eps, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:            pa.Name,
			Namespace:       pa.Namespace,
			Labels:          labels,
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(pa)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](ActivatorPort)},
			{Name: ptr.To("http2"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](ActivatorPort),
				AppProtocol: ptr.To("kubernetes.io/h2c")},
		},
	}
}

// MakePrefillDeployment is a disaggregated revision's prefill Deployment:
// the pod template of Knative's revision Deployment (decode) without
// queue-proxy, its preStop hooks (they call queue-proxy) and Knative's
// revisionUID label (so that the revision Deployment's selector never
// matches prefill pods), with the prefill role label; controlled by the
// PodAutoscaler, which Knative's Revision owns, so that garbage collection
// removes it with the revision.
func MakePrefillDeployment(pa *v1alpha1.PodAutoscaler, decode *appsv1.Deployment, replicas int32) *appsv1.Deployment {
	rev := pa.Name
	labels := map[string]string{
		serving.RevisionLabelKey: rev,
		RoleLabel:                RolePrefill,
		ManagedByLabel:           ManagedBy,
	}
	svc := decode.Spec.Template.Labels[serving.ServiceLabelKey]
	if svc == "" {
		svc = pa.Labels[serving.ServiceLabelKey]
	}
	if svc != "" {
		labels[serving.ServiceLabelKey] = svc
	}
	tmpl := *decode.Spec.Template.DeepCopy()
	podLabels := make(map[string]string, len(tmpl.Labels)+len(labels))
	for k, v := range tmpl.Labels {
		if k == serving.RevisionUID || k == RoleLabel {
			continue
		}
		podLabels[k] = v
	}
	for k, v := range labels {
		podLabels[k] = v
	}
	tmpl.Labels = podLabels
	tmpl.Spec.Containers = slices.DeleteFunc(tmpl.Spec.Containers, func(c corev1.Container) bool {
		return c.Name == QueueProxyContainer
	})
	prefillStepBudget(&tmpl)
	for i := range tmpl.Spec.Containers {
		if lc := tmpl.Spec.Containers[i].Lifecycle; lc != nil {
			lc.PreStop = nil
			if lc.PostStart == nil && lc.StopSignal == nil {
				tmpl.Spec.Containers[i].Lifecycle = nil
			}
		}
	}
	selector := map[string]string{serving.RevisionLabelKey: rev, RoleLabel: RolePrefill}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name:            PrefillName(rev),
			Namespace:       pa.Namespace,
			Labels:          labels,
			Annotations:     map[string]string{TemplateHashAnnotation: templateHash(&tmpl)},
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(pa)},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas:                ptr.To(replicas),
			Selector:                &metav1.LabelSelector{MatchLabels: selector},
			Template:                tmpl,
			ProgressDeadlineSeconds: decode.Spec.ProgressDeadlineSeconds,
			Strategy:                decode.Spec.Strategy,
		},
	}
	return d
}

// prefillStepBudget gives prefill pods their own per-step token budget:
// where the webhook chose the budget (status.llm-d.ai/step-token-budget
// says "D prefill=P" and the args carry D), the args carry P instead.
// Budgets a user wrote are left alone.
func prefillStepBudget(tmpl *corev1.PodTemplateSpec) {
	decode, prefill, ok := autoscaler.ParseStepBudgetChoice(tmpl.Annotations[apis.StepTokenBudgetChoiceAnnotation])
	if !ok || prefill == 0 {
		return
	}
	const flag = "--max-num-batched-tokens"
	have, want := strconv.Itoa(decode), strconv.Itoa(prefill)
	for i := range tmpl.Spec.Containers {
		args := tmpl.Spec.Containers[i].Args
		for j, a := range args {
			switch {
			case a == flag+"="+have:
				args[j] = flag + "=" + want
			case a == flag && j+1 < len(args) && args[j+1] == have:
				args[j+1] = want
			default:
				continue
			}
			return
		}
	}
}

// templateHash identifies a pod template, so that a prefill Deployment is
// updated only when its source changed (the API server's defaulting would
// make a direct comparison differ).
func templateHash(t *corev1.PodTemplateSpec) string {
	b, _ := json.Marshal(t) // a PodTemplateSpec always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
