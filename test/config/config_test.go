// Package config_test checks config/, what an admin applies with
// `kubectl apply -k config/`: the real kubectl renders and applies it
// against a real API server (envtest, with Knative Serving's CRDs), Pod
// Security "restricted" and RBAC are enforced by that server, the
// ConfigMaps are read by the code that reads them in the components, the
// samples pass the webhook's validation (pkg/admission), and the Grafana
// dashboard queries only metrics the activator and vLLM export.
package config_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/llmd-kn/llmd-kn/internal/kubetest"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/autoscaler"
	"github.com/llmd-kn/llmd-kn/pkg/reconciler"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// repo returns the repository root.
func repo(t *testing.T) string {
	t.Helper()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// readObjects decodes every object of a multi-document YAML file.
func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeAll(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return objs
}

func decodeAll(data []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, err
		}
		if s := string(bytes.TrimSpace(j)); s == "null" || s == "{}" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// configMap reads one ConfigMap manifest of config/configmaps.
func configMap(t *testing.T, name string) *corev1.ConfigMap {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo(t), "config", "configmaps", "200-"+name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{}
	if err := yaml.UnmarshalStrict(data, cm); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if cm.Name != name || cm.Namespace != "llmd-kn" {
		t.Fatalf("ConfigMap %s/%s, want llmd-kn/%s", cm.Namespace, cm.Name, name)
	}
	return cm
}

// The router ConfigMap is what pkg/router parses, and it is the built-in
// configuration: an admin reading it reads the defaults in force.
func TestRouterConfigMapIsTheBuiltInConfiguration(t *testing.T) {
	cm := configMap(t, router.ConfigMapName)
	if keys := sortedKeys(cm.Data); !slices.Equal(keys, []string{router.ConfigKey}) {
		t.Fatalf("keys %v, want [%s] (the activator reads --router-config=/etc/llmd/router/%s)", keys, router.ConfigKey, router.ConfigKey)
	}
	got, err := router.ParseConfig([]byte(cm.Data[router.ConfigKey]))
	if err != nil {
		t.Fatalf("config-llmd-router %s: %v", router.ConfigKey, err)
	}
	if g, w := mustJSON(t, got), mustJSON(t, router.DefaultConfig()); g != w {
		t.Errorf("config-llmd-router differs from router.DefaultConfigYAML:\n got %s\nwant %s", g, w)
	}
	// Read alone (not merged over the built-in), the file still holds every
	// profile: deleting one in the ConfigMap would not remove it, so the
	// ConfigMap must list them all for what it shows to be the truth.
	var doc struct {
		Profiles []struct {
			Name string `json:"name"`
		} `json:"profiles"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data[router.ConfigKey]), &doc); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range doc.Profiles {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	if want := router.DefaultConfig().ProfileNames(); !slices.Equal(names, want) {
		t.Errorf("profiles listed %v, built in %v", names, want)
	}
}

// The tier ConfigMap is what activator.ParseTiers reads and equals the
// built-in table.
func TestTiersConfigMapIsTheBuiltInTable(t *testing.T) {
	cm := configMap(t, "config-llmd-tiers")
	if keys := sortedKeys(cm.Data); !slices.Equal(keys, []string{"tiers.yaml"}) {
		t.Fatalf("keys %v, want [tiers.yaml]", keys)
	}
	got, err := activator.ParseTiers([]byte(cm.Data["tiers.yaml"]))
	if err != nil {
		t.Fatalf("config-llmd-tiers tiers.yaml: %v", err)
	}
	want := activator.DefaultTiers()
	if !slices.Equal(got.Names(), want.Names()) {
		t.Fatalf("tiers %v, built in %v", got.Names(), want.Names())
	}
	for _, name := range want.Names() {
		g, _ := got.Get(name)
		w, _ := want.Get(name)
		if g != w {
			t.Errorf("tier %s: ConfigMap %+v, built in %+v", name, g, w)
		}
	}
}

// The autoscaler ConfigMap, mounted as the autoscaler mounts it (one file
// per key, _example included), loads with pkg/reconciler's reader into
// exactly the built-in defaults, and its _example documents those values.
func TestAutoscalerConfigMapHoldsTheDefaults(t *testing.T) {
	cm := configMap(t, "config-llmd-autoscaler")
	want := []string{"_example", reconciler.KeyMaxScaleDownRate, reconciler.KeyMaxScaleUpRate,
		reconciler.KeyPanicThresholdPercentage, reconciler.KeyPanicWindowPercentage, reconciler.KeyScaleDownDelay,
		reconciler.KeyScaleToZeroGracePeriod, reconciler.KeyStableWindow, reconciler.KeyTargetUtilization,
		reconciler.KeyTickInterval, reconciler.KeyColdStart}
	sort.Strings(want)
	if keys := sortedKeys(cm.Data); !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
	dir := t.TempDir()
	for k, v := range cm.Data {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := reconciler.LoadConfigDir(dir)
	if err != nil {
		t.Fatalf("config-llmd-autoscaler: %v", err)
	}
	if def := autoscaler.DefaultConfig(); got != def {
		t.Errorf("config-llmd-autoscaler loads as\n%+v\nbuilt-in defaults\n%+v", got, def)
	}
	var example map[string]string
	if err := yaml.UnmarshalStrict([]byte(cm.Data["_example"]), &example); err != nil {
		t.Fatalf("_example: %v", err)
	}
	for k, v := range cm.Data {
		if k != "_example" && example[k] != v {
			t.Errorf("_example documents %s: %q, the ConfigMap sets %q", k, example[k], v)
		}
	}
	if len(example) != len(cm.Data)-1 {
		t.Errorf("_example documents %d keys, the ConfigMap has %d", len(example), len(cm.Data)-1)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// kubectl is the kubectl hack/build-k8s.sh builds next to kube-apiserver.
func kubectl(t *testing.T) string {
	t.Helper()
	path := filepath.Join(kubetest.AssetsOrSkip(t), "kubectl")
	if _, err := os.Stat(path); err != nil {
		if os.Getenv(kubetest.RequireEnv) == "1" {
			t.Fatalf("kubectl not built: %v (hack/build-k8s.sh)", err)
		}
		t.Skipf("kubectl not built: %v (hack/build-k8s.sh)", err)
	}
	return path
}

// render runs `kubectl kustomize dir`.
func render(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	out, err := runKubectl(context.Background(), kubectl(t), "", "kustomize", dir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
	}
	objs, err := decodeAll([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func runKubectl(ctx context.Context, bin, kubeconfig string, args ...string) (string, error) {
	return runKubectlStdin(ctx, bin, kubeconfig, "", args...)
}

// runKubectlStdin runs kubectl with stdin and returns its combined output.
func runKubectlStdin(ctx context.Context, bin, kubeconfig, stdin string, args ...string) (string, error) {
	if kubeconfig != "" {
		args = append([]string{"--kubeconfig", kubeconfig}, args...)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	return out.String(), err
}

func id(u *unstructured.Unstructured) string {
	if u.GetNamespace() == "" {
		return fmt.Sprintf("%s %s", u.GetKind(), u.GetName())
	}
	return fmt.Sprintf("%s %s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
}
