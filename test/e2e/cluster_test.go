package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/internaltls"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
)

const (
	knativeNamespace = "knative-serving"
	// llmdNamespace holds llmd-kn's components: webhook, autoscaler and
	// activator.
	llmdNamespace = "llmd-kn"
	testNamespace = "e2e"
	nodeName      = "gpu-node-0"
	// gpusPerNode is the fake node's nvidia.com/gpu allocatable.
	gpusPerNode = 8
	// scaleToZeroGrace is the autoscaler's scale-to-zero-grace-period
	// (config-llmd-autoscaler; 30 s by default): how long a revision with
	// min-scale 0 keeps its pods without traffic.
	scaleToZeroGrace = 2 * time.Second
	// tickInterval is the autoscaler's tick-interval (2 s by default).
	tickInterval = time.Second
	// activatorName is the llmd-activator's name in its stats reports (its
	// pod name in a cluster).
	activatorName = "llmd-activator-e2e"
	// autoscalerServerName is the name in the autoscaler's certificate
	// (its Service's), which the activator verifies though it dials an
	// address.
	autoscalerServerName = "llmd-autoscaler." + llmdNamespace + ".svc"
)

// binaries the end-to-end tier needs besides kube-apiserver and etcd, all
// built by `hack/build-k8s.sh all`.
var binaries = []string{"kube-controller-manager", "kube-scheduler", "kwok", "knative-controller", "knative-webhook", "kn"}

// cluster is the control plane every test of the package shares.
type cluster struct {
	env        *envtest.Environment
	cfg        *rest.Config
	client     client.Client
	kubeconfig string
	bin        string // the assets folder
	dir        string // temp folder: kubeconfig, logs, built binaries
	procs      procs
	reaper     *reaper // kills what is left if this binary dies

	// hostIP is this host's non-loopback address: the address of the
	// webhooks' and the activator's EndpointSlices.
	hostIP string
	// autoscalerURL is the autoscaler's stats address (https://host:port);
	// statsClient trusts its certificate as the activator does (the CA
	// bundle of the Secret the autoscaler keeps, autoscalerCA, for the
	// Service's name).
	autoscalerURL string
	autoscalerCA  string
	statsClient   *http.Client
	// autoscaler is its process, autoscalerArgs its flags and
	// autoscalerReady its /readyz: what restartAutoscaler needs.
	autoscaler      *proc
	autoscalerArgs  []string
	autoscalerReady string
	// activatorKubeconfig and activatorTokenFile are what every activator
	// process runs with (the llmd-activator ServiceAccount's identity).
	activatorKubeconfig, activatorTokenFile string
	// activatorURL is llmd-kn's activator's OpenAI API (http://hostIP:port),
	// the address of the llmd-activator Service's EndpointSlice;
	// activatorAdminURL serves its /metrics, /stats and /healthz.
	activatorURL, activatorAdminURL string
	// statsToken is a token of the activator's ServiceAccount for the
	// autoscaler's audience, as its projected volume holds: what the
	// activator and the load step present to the stats API.
	statsToken string
}

// logf writes a progress line to the test binary's stderr (TestMain has no
// testing.T).
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
}

// phase runs f and logs how long it took.
func phase(label string, f func() error) error {
	start := time.Now()
	err := f()
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	logf("%-48s %6.1fs", label, time.Since(start).Seconds())
	return nil
}

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, servingv1.AddToScheme, autoscalingv1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// moduleDirs finds where the module cache holds the given modules at the
// versions a wrapper module of hack/tools requires, so that the CRDs and
// configuration match the binaries built from it.
func moduleDirs(root, wrapper string, paths ...string) (map[string]string, error) {
	cmd := exec.Command("go", append([]string{"list", "-m", "-f", "{{.Path}} {{.Dir}}"}, paths...)...)
	cmd.Dir = filepath.Join(root, "hack", "tools", wrapper)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -m in hack/tools/%s: %v: %s", wrapper, err, stderr.String())
	}
	dirs := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, dir, _ := strings.Cut(line, " ")
		if dir == "" {
			return nil, fmt.Errorf("module %s is not in the module cache: run hack/build-k8s.sh all", path)
		}
		dirs[path] = dir
	}
	return dirs, nil
}

// startCluster brings up the whole control plane. On error, stop must still
// be called: it tears down what did start.
func startCluster(ctx context.Context, c *cluster) error {
	root, err := kubetest.RepoRoot()
	if err != nil {
		return err
	}
	if c.bin, err = kubetest.Assets(); err != nil {
		return err
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(c.bin, b)); err != nil {
			return fmt.Errorf("%s not found in %s: run `hack/build-k8s.sh all` (make e2e does)", b, c.bin)
		}
	}
	ip, err := hostIP()
	if err != nil {
		return err
	}
	c.hostIP = ip
	if c.dir, err = os.MkdirTemp("", "llmd-e2e-"); err != nil {
		return err
	}
	if c.reaper, err = startReaper(); err != nil {
		return err
	}
	logf("logs of every component in %s", c.dir)

	// llmd-kn's binaries build while the control plane starts.
	built := make(chan error, 1)
	go func(built chan<- error) {
		start := time.Now()
		build := exec.Command("go", "build", "-o", c.dir+string(filepath.Separator), "./cmd/webhook", "./cmd/autoscaler", "./cmd/activator")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			built <- fmt.Errorf("go build ./cmd/webhook ./cmd/autoscaler ./cmd/activator: %v\n%s", err, out)
			return
		}
		logf("%-48s %6.1fs", "(in parallel) go build llmd-kn webhook, autoscaler, activator", time.Since(start).Seconds())
		built <- nil
	}(built)
	// Whatever happens next, the build is over before the temp folder is
	// removed.
	defer func() {
		if built != nil {
			<-built
		}
	}()

	var mods map[string]string
	if err := phase("module dirs of Knative and kwok", func() error {
		if mods, err = moduleDirs(root, "knative", "knative.dev/serving", "knative.dev/networking", "knative.dev/caching"); err != nil {
			return err
		}
		kwok, err := moduleDirs(root, "kwok", "sigs.k8s.io/kwok")
		if err != nil {
			return err
		}
		mods["sigs.k8s.io/kwok"] = kwok["sigs.k8s.io/kwok"]
		return nil
	}); err != nil {
		return err
	}
	serving, networking := mods["knative.dev/serving"], mods["knative.dev/networking"]

	if err := phase("etcd + kube-apiserver + CRDs (envtest)", func() error {
		res := filepath.Join(serving, "config", "core", "300-resources")
		var crds []string
		for _, f := range []string{"service", "configuration", "revision", "route", "podautoscaler", "metric", "domain-mapping"} {
			crds = append(crds, filepath.Join(res, f+".yaml"))
		}
		for _, f := range []string{"ingress", "serverlessservice", "certificate", "domain-claim"} {
			crds = append(crds, filepath.Join(networking, "config", f+".yaml"))
		}
		crds = append(crds, filepath.Join(mods["knative.dev/caching"], "config", "image.yaml"))
		c.env = &envtest.Environment{
			BinaryAssetsDirectory: c.bin,
			ErrorIfCRDPathMissing: true,
			CRDInstallOptions:     envtest.CRDInstallOptions{Paths: crds},
		}
		// Webhook Services resolve to their endpoints (this host), not to
		// a cluster IP that nothing routes.
		c.env.ControlPlane.GetAPIServer().Configure().Set("enable-aggregator-routing", "true")
		// envtest starts them in process groups of their own; the reaper
		// learns of each as soon as it appears.
		started := make(chan struct{})
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			seen := map[int]bool{}
			for {
				for _, pid := range childrenNamed("etcd", "kube-apiserver") {
					if !seen[pid] {
						seen[pid] = true
						c.reaper.watch(pid)
					}
				}
				select {
				case <-started:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		c.cfg, err = c.env.Start()
		close(started)
		<-watched
		if err != nil {
			return err
		}
		user, err := c.env.AddUser(envtest.User{Name: "e2e-admin", Groups: []string{"system:masters"}}, nil)
		if err != nil {
			return err
		}
		kc, err := user.KubeConfig()
		if err != nil {
			return err
		}
		c.kubeconfig = filepath.Join(c.dir, "kubeconfig")
		return os.WriteFile(c.kubeconfig, kc, 0o600)
	}); err != nil {
		return err
	}
	scheme, err := newScheme()
	if err != nil {
		return err
	}
	if c.client, err = client.New(c.cfg, client.Options{Scheme: scheme}); err != nil {
		return err
	}

	ports, err := freePorts(14)
	if err != nil {
		return err
	}
	port := func() string { p := ports[0]; ports = ports[1:]; return itoa(p) }
	start := c.start

	if err := phase("kube-controller-manager, kube-scheduler, kwok", func() error {
		if _, err := start("kube-controller-manager", filepath.Join(c.bin, "kube-controller-manager"), []string{
			"--kubeconfig=" + c.kubeconfig, "--leader-elect=false", "--secure-port=0",
			// Nodes are kwok's: nothing posts kubelet heartbeats, so the
			// node lifecycle controller would evict every pod.
			"--controllers=*,-node-lifecycle-controller,-node-ipam-controller",
		}, nil); err != nil {
			return err
		}
		if _, err := start("kube-scheduler", filepath.Join(c.bin, "kube-scheduler"), []string{
			"--kubeconfig=" + c.kubeconfig, "--leader-elect=false", "--secure-port=0",
		}, nil); err != nil {
			return err
		}
		stages, err := kwokStages(mods["sigs.k8s.io/kwok"], c.dir)
		if err != nil {
			return err
		}
		if _, err := start("kwok", filepath.Join(c.bin, "kwok"), []string{
			"--kubeconfig=" + c.kubeconfig, "--config=" + stages,
			"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
			"--server-address=127.0.0.1:" + port(), "--cidr=10.244.0.1/16", "--node-ip=10.96.1.1",
		}, nil); err != nil {
			return err
		}
		return c.createNode(ctx)
	}); err != nil {
		return err
	}

	if err := phase("namespaces, Knative config, llmd-kn objects", func() error {
		for _, ns := range []string{knativeNamespace, llmdNamespace, testNamespace} {
			if err := c.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
				return err
			}
		}
		img, err := name.ParseReference(testImage)
		if err != nil {
			return err
		}
		override := map[string]map[string]string{
			// No registry is reachable: never resolve tags to digests
			// for the test image's registry (or the queue-proxy's).
			"config-deployment": {
				"registries-skipping-tag-resolving": img.Context().RegistryStr(),
				"queue-sidecar-image":               testImage,
			},
			// llmd-kn's defaulting gives vLLM its pod IP (KV events).
			"config-features": {"kubernetes.podspec-fieldref": "enabled"},
		}
		cms, err := filepath.Glob(filepath.Join(serving, "config", "core", "configmaps", "*.yaml"))
		if err != nil {
			return err
		}
		cms = append(cms, filepath.Join(networking, "config", "config-network.yaml"))
		for _, f := range cms {
			if err := c.apply(ctx, f, func(u *unstructured.Unstructured) bool {
				if u.GetKind() != "ConfigMap" {
					return false
				}
				for k, v := range override[u.GetName()] {
					if err := unstructured.SetNestedField(u.Object, v, "data", k); err != nil {
						panic(err) // data is a map of strings in every ConfigMap
					}
				}
				return true
			}); err != nil {
				return err
			}
		}
		if err := c.apply(ctx, filepath.Join(serving, "config", "core", "webhooks", "secret.yaml"), nil); err != nil {
			return err
		}
		for _, f := range []string{
			"webhook/200-serviceaccount.yaml", "webhook/200-rbac.yaml", "webhook/300-secret.yaml",
			// The stats API's certificate Secret, which the autoscaler fills.
			"autoscaler/300-secret.yaml",
			// The activator runs with its own identity and RBAC.
			"activator/200-serviceaccount.yaml", "activator/200-rbac.yaml",
		} {
			if err := c.apply(ctx, filepath.Join(root, "config", filepath.FromSlash(f)), nil); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}

	knativeEnv := func(pod string) []string {
		return []string{
			"SYSTEM_NAMESPACE=" + knativeNamespace, "POD_NAME=" + pod,
			"CONFIG_LOGGING_NAME=config-logging", "CONFIG_OBSERVABILITY_NAME=config-observability",
			// Each Knative component assumes a network namespace of its
			// own: distinct ports on this host.
			"PROFILING_PORT=" + port(), "METRICS_PROMETHEUS_PORT=" + port(),
		}
	}
	if err := phase("wait for the llmd-kn build", func() error {
		err := <-built
		built = nil
		return err
	}); err != nil {
		return err
	}
	if err := phase("Knative webhook + llmd-kn webhook ready", func() error {
		kport, lport := port(), port()
		if err := c.hostService(ctx, knativeNamespace, "webhook", "https-webhook", ip, kport); err != nil {
			return err
		}
		if err := c.hostService(ctx, llmdNamespace, "llmd-kn-webhook", "https-webhook", ip, lport); err != nil {
			return err
		}
		for _, f := range []string{"defaulting.yaml", "resource-validation.yaml", "configmap-validation.yaml"} {
			if err := c.apply(ctx, filepath.Join(serving, "config", "core", "webhooks", f), nil); err != nil {
				return err
			}
		}
		if err := c.apply(ctx, filepath.Join(root, "config", "webhook", "500-webhooks.yaml"), nil); err != nil {
			return err
		}
		kw, err := start("knative-webhook", filepath.Join(c.bin, "knative-webhook"),
			[]string{"--kubeconfig=" + c.kubeconfig, "--disable-ha"},
			append(knativeEnv("knative-webhook"), "WEBHOOK_NAME=webhook", "WEBHOOK_PORT="+kport))
		if err != nil {
			return err
		}
		// On SIGTERM it keeps serving for a drain period meant for a
		// load balancer; nothing needs that here.
		kw.grace = time.Second
		lw, err := start("llmd-kn-webhook", filepath.Join(c.dir, "webhook"), []string{
			"--kubeconfig=" + c.kubeconfig, "--namespace=" + llmdNamespace, "--port=" + lport,
			"--cert-dir=" + filepath.Join(c.dir, "llmd-webhook-certs"),
			"--health-addr=127.0.0.1:" + port(), "--metrics-addr=0",
		}, nil)
		if err != nil {
			return err
		}
		if err := c.waitWebhook(ctx, kw, ip+":"+kport, "webhook.serving.knative.dev"); err != nil {
			return err
		}
		return c.waitWebhook(ctx, lw, ip+":"+lport, "defaulting.webhook.llm-d.ai")
	}); err != nil {
		return err
	}

	if err := phase("Knative controller started", func() error {
		// No --disable-ha here: the controller's main does not define it;
		// it takes its leases in knative-serving at once.
		p, err := start("knative-controller", filepath.Join(c.bin, "knative-controller"),
			[]string{"--kubeconfig=" + c.kubeconfig}, knativeEnv("knative-controller"))
		if err != nil {
			return err
		}
		// A bad flag or configuration ends it at once.
		time.Sleep(time.Second)
		if p.exited() {
			return fmt.Errorf("exited: %v\n%s", p.err, p.tail(3000))
		}
		return nil
	}); err != nil {
		return err
	}

	if err := phase("llmd-kn autoscaler", func() error {
		if err := c.activatorService(ctx); err != nil {
			return err
		}
		configDir, err := autoscalerConfig(c.dir)
		if err != nil {
			return err
		}
		stats, health := port(), port()
		c.autoscalerArgs = []string{
			"--kubeconfig=" + c.kubeconfig, "--namespace=" + llmdNamespace, "--config-dir=" + configDir,
			"--stats-bind-address=127.0.0.1:" + stats, "--metrics-bind-address=127.0.0.1:" + port(),
			"--health-probe-bind-address=127.0.0.1:" + health, "--leader-elect=false",
			// TLS as config/ deploys it: its own CA and certificate.
			"--stats-tls-cert-dir=" + filepath.Join(c.dir, "autoscaler-stats-tls"), "--stats-tls-self-signed",
		}
		p, err := start("llmd-kn-autoscaler", filepath.Join(c.dir, "autoscaler"), c.autoscalerArgs, nil)
		if err != nil {
			return err
		}
		c.autoscaler = p
		c.autoscalerURL = "https://127.0.0.1:" + stats
		c.autoscalerReady = "http://127.0.0.1:" + health + "/readyz"
		if err := c.waitHTTP(ctx, p, c.autoscalerReady); err != nil {
			return err
		}
		// What the kubelet mounts in the activator's pod: the bundle alone.
		var sec corev1.Secret
		if err := c.client.Get(ctx, client.ObjectKey{Namespace: llmdNamespace, Name: reconciler.DefaultStatsTLSSecret}, &sec); err != nil {
			return err
		}
		c.autoscalerCA = filepath.Join(c.dir, "autoscaler-ca-bundle.crt")
		if err := os.WriteFile(c.autoscalerCA, sec.Data[internaltls.CABundleFile], 0o600); err != nil {
			return err
		}
		tc, err := internaltls.ClientConfig(c.autoscalerCA, autoscalerServerName)
		if err != nil {
			return fmt.Errorf("the autoscaler's CA bundle in its Secret: %w", err)
		}
		c.statsClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		return nil
	}); err != nil {
		return err
	}

	return phase("llmd-kn activator (cluster mode)", func() error {
		var err error
		if c.activatorKubeconfig, err = c.makeActivatorKubeconfig(ctx); err != nil {
			return err
		}
		if c.activatorTokenFile, err = c.activatorToken(ctx); err != nil {
			return err
		}
		// It listens where its EndpointSlice says, as a pod does on its
		// own IP; the revision Services the autoscaler makes mirror that
		// address.
		api, admin := port(), port()
		a, err := c.startActivator(ctx, "llmd-kn-activator", activatorName, api, admin)
		if err != nil {
			return err
		}
		c.activatorURL, c.activatorAdminURL = a.url, a.adminURL
		return c.activatorEndpoints(ctx, ip, api, admin)
	})
}

// start starts a process of the control plane, stopped with the others.
func (c *cluster) start(name, bin string, args, env []string) (*proc, error) {
	p, err := startProc(c.dir, name, bin, args, env)
	if err != nil {
		return nil, err
	}
	c.procs.add(p)
	c.reaper.watch(p.cmd.Process.Pid)
	return p, nil
}

// activatorProc is one llmd-kn activator process in cluster mode.
type activatorProc struct {
	*proc
	// name is its name in its stats reports (its pod name).
	name          string
	url, adminURL string
}

// startActivator starts an activator in cluster mode as the llmd-activator
// ServiceAccount, reporting to the autoscaler over TLS as name, its API
// and admin servers on this host's address at the ports given, and waits
// until it is ready (its informers have synced; only then is a pod's
// address ready in the Service's endpoints). logName names its log.
func (c *cluster) startActivator(ctx context.Context, logName, name, api, admin string) (*activatorProc, error) {
	p, err := c.start(logName, filepath.Join(c.dir, "activator"), []string{
		"--kubeconfig=" + c.activatorKubeconfig, "--autoscaler-url=" + c.autoscalerURL, "--pod-name=" + name,
		"--autoscaler-token-file=" + c.activatorTokenFile,
		"--autoscaler-ca-file=" + c.autoscalerCA, "--autoscaler-tls-server-name=" + autoscalerServerName,
		"--addr=" + c.hostIP + ":" + api, "--admin-addr=" + c.hostIP + ":" + admin,
		// kwok's pods have addresses where no vLLM answers: every
		// scrape fails; once a second is enough to learn that.
		"--scrape-interval=1s",
	}, nil)
	if err != nil {
		return nil, err
	}
	a := &activatorProc{proc: p, name: name, url: "http://" + c.hostIP + ":" + api, adminURL: "http://" + c.hostIP + ":" + admin}
	if err := c.waitHTTP(ctx, p, a.adminURL+"/healthz"); err != nil {
		return nil, err
	}
	return a, nil
}

// restartAutoscaler stops the autoscaler (SIGTERM, as a rolling update
// does) and starts it again with the same flags, logging to logName; it
// returns once the new one is ready.
func (c *cluster) restartAutoscaler(ctx context.Context, logName string) error {
	c.autoscaler.stop(15 * time.Second)
	p, err := c.start(logName, filepath.Join(c.dir, "autoscaler"), c.autoscalerArgs, nil)
	if err != nil {
		return err
	}
	c.autoscaler = p
	return c.waitHTTP(ctx, p, c.autoscalerReady)
}

// dead describes the components that have exited, with the end of their
// logs: the usual reason why a step waits in vain.
func (c *cluster) dead() string {
	c.procs.mu.Lock()
	defer c.procs.mu.Unlock()
	var b strings.Builder
	for _, p := range c.procs.list {
		if p.exited() {
			fmt.Fprintf(&b, "\n%s exited (%v):\n%s", p.name, p.err, p.tail(2000))
		}
	}
	return b.String()
}

// stop ends every process by PID, components first (all at once), then
// kube-apiserver and etcd (envtest, also by PID), and removes the temp
// folder unless keep.
func (c *cluster) stop(keep bool) {
	start := time.Now()
	// Knative's components have been seen to ignore SIGTERM for 30 s once
	// the API server is gone; they go first, and not for long.
	c.procs.stopAll(5 * time.Second)
	if c.env != nil {
		if err := c.env.Stop(); err != nil {
			logf("stopping kube-apiserver and etcd: %v", err)
		}
	}
	if c.reaper != nil {
		c.reaper.done()
	}
	if c.dir != "" {
		if keep {
			logf("kept the components' logs in %s", c.dir)
		} else {
			os.RemoveAll(c.dir)
		}
	}
	logf("%-48s %6.1fs", "stopped every process", time.Since(start).Seconds())
}

// apply creates each object of a multi-document YAML file; keep, when not
// nil, filters and edits them.
func (c *cluster) apply(ctx context.Context, path string, keep func(*unstructured.Unstructured) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(u.Object) == 0 || (keep != nil && !keep(u)) {
			continue
		}
		if err := c.client.Create(ctx, u); err != nil {
			return fmt.Errorf("%s: %s %s: %w", path, u.GetKind(), u.GetName(), err)
		}
	}
}

// kwokStages writes the kwok stages that make nodes ready and pods run (and
// go away when deleted) into one file, from kwok's module.
func kwokStages(kwok, dir string) (string, error) {
	stage := filepath.Join(kwok, "kustomize", "stage")
	var all bytes.Buffer
	for _, f := range []string{
		"node/fast/node-initialize.yaml",
		"pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml",
	} {
		data, err := os.ReadFile(filepath.Join(stage, f))
		if err != nil {
			return "", err
		}
		all.WriteString("---\n")
		all.Write(data)
		all.WriteString("\n")
	}
	path := filepath.Join(dir, "kwok-stages.yaml")
	return path, os.WriteFile(path, all.Bytes(), 0o600)
}

// createNode makes the fake GPU node kwok manages and waits until it is
// Ready and schedulable.
func (c *cluster) createNode(ctx context.Context) error {
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("512Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
		"nvidia.com/gpu":      *resource.NewQuantity(gpusPerNode, resource.DecimalSI),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        nodeName,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
			Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": nodeName, "nvidia.com/gpu.present": "true"},
		},
		// A Node's status is kept on create; kwok's node-initialize stage
		// keeps the allocatable it finds.
		Status: corev1.NodeStatus{Capacity: res, Allocatable: res},
	}
	if err := c.client.Create(ctx, node); err != nil {
		return err
	}
	return poll(ctx, 30*time.Second, func() (bool, error) {
		var n corev1.Node
		if err := c.client.Get(ctx, types.NamespacedName{Name: nodeName}, &n); err != nil {
			return false, err
		}
		ready := false
		for _, cond := range n.Status.Conditions {
			ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
		}
		if !ready {
			return false, nil
		}
		// The API server taints new nodes not-ready; with no node
		// lifecycle controller, nobody else removes it.
		if len(n.Spec.Taints) == 0 {
			return true, nil
		}
		n.Spec.Taints = nil
		return false, client.IgnoreNotFound(c.client.Update(ctx, &n))
	})
}

// hostService makes a selector-less Service whose EndpointSlice names this
// host, the way a webhook running in a pod would be reached.
func (c *cluster) hostService(ctx context.Context, ns, svc, portName, ip, port string) error {
	p := intstr.Parse(port)
	if err := c.client.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: portName, Port: 443, TargetPort: p, Protocol: corev1.ProtocolTCP,
		}}},
	}); err != nil {
		return err
	}
	ready := true
	return c.client.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-host", Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "e2e.llm-d.ai",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &p.IntVal, Protocol: ptr(corev1.ProtocolTCP)}},
	})
}

// activatorService makes the llmd-activator Service of the contracts,
// selector-less: its EndpointSlice (activatorEndpoints) names this host.
func (c *cluster) activatorService(ctx context.Context) error {
	return c.client.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: llmdNamespace, Name: "llmd-activator"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			{Name: "admin", Port: 9091, TargetPort: intstr.FromInt32(9091)},
		}},
	})
}

// activatorEndpoints gives the llmd-activator Service an EndpointSlice with
// one ready address, this host, at the ports the activator listens on; the
// autoscaler mirrors the address into every revision's Service.
func (c *cluster) activatorEndpoints(ctx context.Context, ip, api, admin string) error {
	apiPort, adminPort := intstr.Parse(api), intstr.Parse(admin)
	ready := true
	return c.client.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: llmdNamespace, Name: "llmd-activator-host", Labels: map[string]string{
			discoveryv1.LabelServiceName: "llmd-activator", discoveryv1.LabelManagedBy: "e2e.llm-d.ai",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Port: &apiPort.IntVal, Protocol: ptr(corev1.ProtocolTCP)},
			{Name: ptr("admin"), Port: &adminPort.IntVal, Protocol: ptr(corev1.ProtocolTCP)},
		},
	})
}

// makeActivatorKubeconfig writes a kubeconfig for the activator's identity, the
// llmd-activator ServiceAccount (a client certificate for its user name and
// groups; RBAC from config/activator), and checks that RBAC holds it to
// least privilege: it may not read Secrets.
// activatorToken asks the TokenRequest API for a token of the activator's
// ServiceAccount for the autoscaler's audience, as the kubelet does for
// the projected volume in config/activator, and writes it where
// --autoscaler-token-file reads it.
func (c *cluster) activatorToken(ctx context.Context) (string, error) {
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{reconciler.DefaultStatsAudience}}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: llmdNamespace, Name: "llmd-activator"}}
	if err := c.client.SubResource("token").Create(ctx, sa, tr); err != nil {
		return "", fmt.Errorf("token of %s/llmd-activator for %q: %w", llmdNamespace, reconciler.DefaultStatsAudience, err)
	}
	c.statsToken = tr.Status.Token
	path := filepath.Join(c.dir, "activator-autoscaler-token")
	return path, os.WriteFile(path, []byte(tr.Status.Token), 0o600)
}

func (c *cluster) makeActivatorKubeconfig(ctx context.Context) (string, error) {
	user, err := c.env.AddUser(envtest.User{
		Name:   "system:serviceaccount:" + llmdNamespace + ":llmd-activator",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + llmdNamespace},
	}, nil)
	if err != nil {
		return "", err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return "", err
	}
	cl, err := client.New(user.Config(), client.Options{Scheme: c.client.Scheme()})
	if err != nil {
		return "", err
	}
	var secrets corev1.SecretList
	if err := cl.List(ctx, &secrets, client.InNamespace(llmdNamespace)); !apierrors.IsForbidden(err) {
		return "", fmt.Errorf("the activator's identity lists Secrets in %s: %v, want Forbidden (is RBAC enforced?)", llmdNamespace, err)
	}
	path := filepath.Join(c.dir, "activator.kubeconfig")
	return path, os.WriteFile(path, kc, 0o600)
}

// autoscalerConfig writes config-llmd-autoscaler as a mounted ConfigMap
// would be, one file per key, and returns its folder: a short tick and
// scale-to-zero grace period, so that a revision goes to zero within
// seconds.
func autoscalerConfig(dir string) (string, error) {
	cfg := filepath.Join(dir, "config-llmd-autoscaler")
	if err := os.Mkdir(cfg, 0o700); err != nil {
		return "", err
	}
	for k, v := range map[string]string{
		reconciler.KeyScaleToZeroGracePeriod: scaleToZeroGrace.String(),
		reconciler.KeyTickInterval:           tickInterval.String(),
	} {
		if err := os.WriteFile(filepath.Join(cfg, k), []byte(v), 0o600); err != nil {
			return "", err
		}
	}
	return cfg, nil
}

// waitWebhook waits until a webhook answers TLS on addr and has put its CA
// into the named webhook configuration (its certificate is then the one the
// API server trusts).
func (c *cluster) waitWebhook(ctx context.Context, p *proc, addr, config string) error {
	err := poll(ctx, 60*time.Second, func() (bool, error) {
		if p.exited() {
			return false, permanent{fmt.Errorf("%s exited: %v", p.name, p.err)}
		}
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only waits for the listener
		if err != nil {
			return false, nil
		}
		conn.Close()
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := c.client.Get(ctx, types.NamespacedName{Name: config}, &mwc); err != nil {
			return false, err
		}
		for _, w := range mwc.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				return false, nil
			}
		}
		return len(mwc.Webhooks) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", p.name, err, p.tail(3000))
	}
	return nil
}

// waitHTTP waits until a component's health or readiness endpoint answers
// 200.
func (c *cluster) waitHTTP(ctx context.Context, p *proc, url string) error {
	err := poll(ctx, 60*time.Second, func() (bool, error) {
		if p.exited() {
			return false, permanent{fmt.Errorf("exited: %v", p.err)}
		}
		resp, err := httpClient.Get(url)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", p.name, err, p.tail(3000))
	}
	return nil
}

// permanent marks an error that ends a poll at once.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// poll calls f every 100 ms until it reports done, returns a permanent
// error, or limit passes; other errors are retried (a control plane still
// coming up) and reported if time runs out.
func poll(ctx context.Context, limit time.Duration, f func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error
	for {
		done, err := f()
		if done && err == nil {
			return nil
		}
		var perm permanent
		if errors.As(err, &perm) {
			return perm.error
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("not done within %v: %w", limit, last)
			}
			return fmt.Errorf("not done within %v", limit)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func ptr[T any](v T) *T { return &v }
