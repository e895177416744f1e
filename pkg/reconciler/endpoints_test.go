package reconciler_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
)

// mirroringManager is kube-controller-manager's EndpointSlice mirroring
// controller's endpointslice.kubernetes.io/managed-by value.
const mirroringManager = "endpointslicemirroring-controller.k8s.io"

// TestRevisionEndpointsWithControllerManager: with kube-controller-manager's
// endpoint controllers running (Endpoints, EndpointSlice, EndpointSlice
// mirroring), as in every cluster, the revision Service has exactly one
// EndpointSlice, this package's, and no core/v1 Endpoints. The control: a
// selector-less Service whose core/v1 Endpoints someone writes gets a second,
// mirrored slice; that is the duplicate writing Endpoints as well would
// make.
func TestRevisionEndpointsWithControllerManager(t *testing.T) {
	cl := apiServer(t)
	ctx := context.Background()
	kcm := filepath.Join(kubetest.AssetsOrSkip(t), "kube-controller-manager")
	if _, err := os.Stat(kcm); err != nil {
		if os.Getenv(kubetest.RequireEnv) == "1" {
			t.Fatalf("kube-controller-manager not built (hack/build-k8s.sh all): %v", err)
		}
		t.Skipf("kube-controller-manager not built (hack/build-k8s.sh all): %v", err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	must(t, os.WriteFile(kubeconfig, cl.kubeconfig, 0o600))
	var logs bytes.Buffer
	cmd := exec.Command(kcm, "--kubeconfig="+kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--controllers=endpoints-controller,endpointslice-controller,endpointslice-mirroring-controller")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b := logs.Bytes()
			t.Logf("kube-controller-manager log (tail):\n%s", b[max(0, len(b)-3000):])
		}
	})

	f := newRevision(t, cl, apis.AutoscalerClass, nil, 1)
	eventually(t, 30*time.Second, "revision EndpointSlice", func() error {
		return cl.c.Get(ctx, f.key(f.name), &discoveryv1.EndpointSlice{})
	})

	// The control: mirroring runs, and would copy Endpoints into a slice.
	ctrlSvc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: f.ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	must(t, cl.c.Create(ctx, ctrlSvc))
	must(t, cl.c.Create(ctx, &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: f.ns},
		Subsets: []corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{{IP: "10.0.0.5"}},
			Ports: []corev1.EndpointPort{{Name: "http", Port: 8080}}}}}))
	eventually(t, 20*time.Second, "kube-controller-manager mirrors the control's Endpoints", func() error {
		select {
		case err := <-exited:
			t.Fatalf("kube-controller-manager exited: %v", err)
		default:
		}
		managers, err := sliceManagers(ctx, cl, f.ns, "legacy")
		if err != nil {
			return err
		}
		if !slices.Equal(managers, []string{mirroringManager}) {
			return fmt.Errorf("slices of the control by manager: %v", managers)
		}
		return nil
	})

	// Mirroring has run over the namespace: the revision Service still has
	// only its own slice, with the activator's address, and no Endpoints.
	managers, err := sliceManagers(ctx, cl, f.ns, f.name)
	must(t, err)
	if !slices.Equal(managers, []string{reconciler.EndpointSliceManager}) {
		t.Errorf("slices of the revision Service by manager: %v, want only %s", managers, reconciler.EndpointSliceManager)
	}
	es := &discoveryv1.EndpointSlice{}
	must(t, cl.c.Get(ctx, f.key(f.name), es))
	if got := sliceAddrs(es); !slices.Contains(got, "10.0.0.5") {
		t.Errorf("revision endpoints %v, want the activator's 10.0.0.5", got)
	}
	if err := cl.c.Get(ctx, f.key(f.name), &corev1.Endpoints{}); !apierrors.IsNotFound(err) {
		t.Errorf("core/v1 Endpoints of the revision Service: %v, want none", err)
	}
}

// sliceManagers lists the managed-by label of each EndpointSlice of a
// Service, sorted.
func sliceManagers(ctx context.Context, cl *cluster, ns, svc string) ([]string, error) {
	var l discoveryv1.EndpointSliceList
	if err := cl.c.List(ctx, &l, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: svc}); err != nil {
		return nil, err
	}
	var out []string
	for _, s := range l.Items {
		out = append(out, s.Labels[discoveryv1.LabelManagedBy])
	}
	slices.Sort(out)
	return out, nil
}
