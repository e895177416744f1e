package config_test

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
)

// freePort picks a free loopback port for a component to listen on, below
// the kernel's ephemeral range (32768-60999 by default): a port drawn from
// that range and released until the component binds it can be taken in
// between by any other test's ":0" listener or outgoing connection under
// `go test ./...` (the autoscaler once failed so: address already in use).
func freePort(t *testing.T) string {
	t.Helper()
	for range 200 {
		p := strconv.Itoa(20000 + rand.IntN(12000))
		l, err := net.Listen("tcp", "127.0.0.1:"+p)
		if err != nil {
			continue
		}
		l.Close()
		return p
	}
	t.Fatal("no free loopback port in 20000-31999")
	return ""
}

var listenArg = regexp.MustCompile(`^:(\d+)$`)

// runComponents runs the three commands as config/ deploys them: each with
// its Deployment's arguments and environment, as its ServiceAccount (so
// with exactly the RBAC config/ grants), reading the ConfigMaps as applied
// to the API server from where its volumes would mount them. Only what a
// pod network gives for free is rewritten: listen addresses become free
// loopback ports, the autoscaler's Service address its loopback port (the
// name its certificate must carry stays the Service's).
// Each must become ready by its own readiness probe, log no "forbidden",
// and exit cleanly on SIGTERM; the autoscaler must win its leader lease.
func runComponents(t *testing.T, env *envtest.Environment, admin client.Client, objs []*unstructured.Unstructured) {
	bin := buildCommands(t)
	ctx := context.Background()
	statsAddr, activatorAdmin := "", ""
	type running struct {
		name string
		out  *testutil.SyncBuffer
	}
	var procs []running
	for _, name := range []string{"llmd-autoscaler", "llmd-activator", "llmd-kn-webhook"} {
		d := convert[appsv1.Deployment](t, find(objs, "Deployment", name))
		c := d.Spec.Template.Spec.Containers[0]
		userName, groups := serviceAccount(d.Spec.Template.Spec.ServiceAccountName)
		user, err := env.AddUser(envtest.User{Name: userName, Groups: groups}, nil)
		if err != nil {
			t.Fatal(err)
		}
		kc, err := user.KubeConfig()
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		kubeconfig := filepath.Join(dir, "kubeconfig")
		if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
			t.Fatal(err)
		}

		mounts := map[string]string{} // mount path -> local directory
		for _, m := range c.VolumeMounts {
			local := filepath.Join(dir, "volumes", m.Name)
			if err := os.MkdirAll(local, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == m.Name && v.Projected != nil {
					// What the kubelet projects: the pod's ServiceAccount
					// token for the audience, from the API server.
					projectTokens(t, admin, d.Spec.Template.Spec.ServiceAccountName, v.Projected, local)
				}
				if v.Name == m.Name && v.Secret != nil {
					// What the kubelet mounts: the Secret's keys (its
					// items only, when listed) as the API server holds
					// them now; the autoscaler, started first, filled it.
					var sec corev1.Secret
					if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: v.Secret.SecretName}, &sec); err != nil {
						t.Fatal(err)
					}
					files := map[string]string{}
					for k := range sec.Data {
						files[k] = k
					}
					if len(v.Secret.Items) > 0 {
						files = map[string]string{}
						for _, it := range v.Secret.Items {
							files[it.Key] = it.Path
						}
					}
					for k, path := range files {
						data, ok := sec.Data[k]
						if !ok {
							t.Fatalf("%s: Secret %s has no key %s to mount (the kubelet would not start the pod)", name, v.Secret.SecretName, k)
						}
						if err := os.WriteFile(filepath.Join(local, path), data, 0o600); err != nil {
							t.Fatal(err)
						}
					}
				}
				if v.Name != m.Name || v.ConfigMap == nil {
					continue
				}
				var cm corev1.ConfigMap
				if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: v.ConfigMap.Name}, &cm); err != nil {
					t.Fatal(err)
				}
				for k, val := range cm.Data {
					if err := os.WriteFile(filepath.Join(local, k), []byte(val), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			mounts[strings.TrimSuffix(m.MountPath, "/")] = local
		}

		ports := map[string]string{} // container port -> loopback address
		var args []string
		for _, a := range c.Args {
			flag, val, ok := strings.Cut(a, "=")
			switch {
			case !ok:
			case listenArg.MatchString(val):
				addr := "127.0.0.1:" + freePort(t)
				ports[listenArg.FindStringSubmatch(val)[1]] = addr
				a = flag + "=" + addr
			case flag == "--port": // the webhook's HTTPS port
				p := freePort(t)
				ports[val] = "127.0.0.1:" + p
				a = flag + "=" + p
			case strings.Contains(val, "llmd-autoscaler.llmd-kn.svc:8090"):
				a = flag + "=" + strings.Replace(val, "llmd-autoscaler.llmd-kn.svc:8090", statsAddr, 1)
				// Dialled by address, it still verifies the Service's
				// name in the autoscaler's certificate.
				args = append(args, "--autoscaler-tls-server-name=llmd-autoscaler.llmd-kn.svc")
			default:
				for mp, local := range mounts {
					if val == mp || strings.HasPrefix(val, mp+"/") {
						a = flag + "=" + local + strings.TrimPrefix(val, mp)
					}
				}
			}
			args = append(args, a)
		}
		args = append(args, "--kubeconfig="+kubeconfig)
		if name == "llmd-autoscaler" {
			statsAddr = ports["8090"]
		}
		if name == "llmd-activator" {
			activatorAdmin = ports["9091"]
		}

		cmd := exec.Command(filepath.Join(bin, commands[name]), args...)
		cmd.Env = os.Environ()
		for _, e := range c.Env {
			switch {
			case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
				cmd.Env = append(cmd.Env, e.Name+"="+name+"-test")
			case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
				cmd.Env = append(cmd.Env, e.Name+"="+ns)
			case e.ValueFrom == nil:
				cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
			}
		}
		out := &testutil.SyncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("%s after SIGTERM: %v\n%s", name, err, out)
				}
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
				t.Errorf("%s ignored SIGTERM for 30s", name)
			}
		})
		procs = append(procs, running{name, out})

		probe := c.ReadinessProbe.HTTPGet
		addr := ports[strconv.Itoa(int(portNumber(c, probe.Port)))]
		if addr == "" {
			t.Fatalf("%s: the readiness port %v is not one of its listen flags", name, probe.Port)
		}
		start := time.Now()
		for {
			resp, err := http.Get("http://" + addr + probe.Path)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("%s exited before it was ready: %v\n%s", name, err, out)
			default:
			}
			if time.Since(start) > 60*time.Second {
				t.Fatalf("%s: GET %s never answered 200 (last: %v)\n%s", name, probe.Path, err, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%s ready %.1fs after start", name, time.Since(start).Seconds())
	}

	// The autoscaler leads (its Lease in llmd-kn), and then its controllers
	// list and watch what they need.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var leases coordinationv1.LeaseList
		if err := admin.List(ctx, &leases, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		if len(leases.Items) > 0 && leases.Items[0].Spec.HolderIdentity != nil {
			t.Logf("lease %s held by %s", leases.Items[0].Name, *leases.Items[0].Spec.HolderIdentity)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader lease in %s after 30s\n%s", ns, procs[0].out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	// The activator's reports carry its projected token, which the
	// autoscaler's TokenReview (with config/'s RBAC) accepts.
	resp, err := http.Get("http://" + activatorAdmin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(metrics), `llmd_activator_autoscaler_report_failures_total{kind="stats"}`) {
		t.Errorf("the autoscaler refused the activator's reports:\n%s\n%s", grepLines(string(metrics), "report_failures"), procs[0].out)
	}
	for _, p := range procs {
		if log := p.out.String(); strings.Contains(strings.ToLower(log), "forbidden") {
			t.Errorf("%s was refused something by the API server's RBAC:\n%s", p.name, log)
		}
	}
}

// projectTokens writes what a projected volume's serviceAccountToken
// sources hold: a token of sa for their audience, from the TokenRequest API.
func projectTokens(t *testing.T, admin client.Client, sa string, p *corev1.ProjectedVolumeSource, dir string) {
	t.Helper()
	for _, src := range p.Sources {
		tok := src.ServiceAccountToken
		if tok == nil {
			continue
		}
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{tok.Audience}, ExpirationSeconds: tok.ExpirationSeconds}}
		account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}
		if err := admin.SubResource("token").Create(context.Background(), account, tr); err != nil {
			t.Fatalf("token of %s for %q: %v", sa, tok.Audience, err)
		}
		if err := os.WriteFile(filepath.Join(dir, tok.Path), []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
