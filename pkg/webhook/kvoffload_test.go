package webhook

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

func kvTransferArg(t *testing.T, c corev1.Container) map[string]any {
	t.Helper()
	v, ok := flagValue(c.Args, flagKVTransfer)
	if !ok {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		t.Fatalf("%s is not JSON: %v", flagKVTransfer, err)
	}
	return m
}

func envMap(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			m[e.Name] = e.Value
		}
	}
	return m
}

func TestKVOffloadInjectionPerMode(t *testing.T) {
	const model = "meta-llama/Llama-3.1-8B-Instruct"
	cases := []struct {
		name       string
		ann        map[string]string
		connector  string // "" : no --kv-transfer-config
		cpuBytes   float64
		env        map[string]string // LMCACHE_* and LLMD_KV_* wanted
		secret     string
		diskVolume bool
	}{
		{name: "off: nothing", ann: map[string]string{apis.KVOffloadAnnotation: "off"}},
		{name: "cpu tier only: vLLM's offloading connector",
			ann:       map[string]string{apis.KVCPUTierBytesAnnotation: "64Gi"},
			connector: OffloadingConnector, cpuBytes: 64 << 30},
		{name: "cpu and disk tiers: LMCache",
			ann:       map[string]string{apis.KVCPUTierBytesAnnotation: "32G", apis.KVDiskTierBytesAnnotation: "500G"},
			connector: LMCacheConnector,
			env: map[string]string{"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "32",
				"LMCACHE_LOCAL_DISK": "file:///var/lib/llm-d/kv-disk/", "LMCACHE_MAX_LOCAL_DISK_SIZE": "500"},
			diskVolume: true},
		{name: "on-scale-down to s3 with a Secret",
			ann: map[string]string{apis.KVOffloadAnnotation: "on-scale-down", apis.KVOffloadURIAnnotation: "s3://kv/llama?region=eu-west-1",
				apis.KVOffloadSecretAnnotation: "kv-creds", apis.KVCPUTierBytesAnnotation: "16G"},
			connector: LMCacheConnector,
			env: map[string]string{"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "16",
				EnvKVOffloadMode: "on-scale-down", EnvKVOffloadURI: "s3://kv/llama?region=eu-west-1",
				"LMCACHE_REMOTE_URL": "s3://kv/llama?region=eu-west-1", "LMCACHE_REMOTE_SERDE": "naive"},
			secret: "kv-creds"},
		{name: "write-through to gs, no Secret (workload identity)",
			ann:       map[string]string{apis.KVOffloadAnnotation: "write-through", apis.KVOffloadURIAnnotation: "gs://kv"},
			connector: LMCacheConnector,
			env: map[string]string{"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_LOCAL_CPU": "False",
				EnvKVOffloadMode: "write-through", EnvKVOffloadURI: "gs://kv", "LMCACHE_REMOTE_URL": "gs://kv", "LMCACHE_REMOTE_SERDE": "naive"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ann := map[string]string{apis.ModelAnnotation: model}
			for k, v := range tc.ann {
				ann[k] = v
			}
			tmpl := template(ann, vllm())
			warnings := DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
			if len(warnings) != 0 {
				t.Errorf("warnings: %v", warnings)
			}
			c := tmpl.Spec.Containers[0]
			kv := kvTransferArg(t, c)
			if tc.connector == "" {
				if kv != nil {
					t.Fatalf("unexpected %s %v", flagKVTransfer, kv)
				}
			} else {
				if kv["kv_connector"] != tc.connector || kv["kv_role"] != "kv_both" {
					t.Fatalf("%s = %v, want %s kv_both", flagKVTransfer, kv, tc.connector)
				}
				if tc.connector == OffloadingConnector {
					extra, _ := kv["kv_connector_extra_config"].(map[string]any)
					if extra["cpu_bytes_to_use"] != tc.cpuBytes {
						t.Errorf("cpu_bytes_to_use = %v, want %v", extra["cpu_bytes_to_use"], tc.cpuBytes)
					}
				}
			}
			got := map[string]string{}
			for k, v := range envMap(c) {
				if strings.HasPrefix(k, "LMCACHE_") || strings.HasPrefix(k, "LLMD_KV_") {
					got[k] = v
				}
			}
			want := tc.env
			if want == nil {
				want = map[string]string{}
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("env (-want +got):\n%s", d)
			}
			var refs []string
			for _, e := range c.EnvFrom {
				if e.SecretRef != nil {
					refs = append(refs, e.SecretRef.Name)
				}
			}
			if tc.secret == "" && len(refs) > 0 || tc.secret != "" && !slices.Equal(refs, []string{tc.secret}) {
				t.Errorf("secret refs %v, want %q", refs, tc.secret)
			}
			hasVol := slices.ContainsFunc(tmpl.Spec.Volumes, func(v corev1.Volume) bool {
				return v.Name == KVDiskVolume && v.EmptyDir != nil && v.EmptyDir.SizeLimit != nil
			}) && slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == KVDiskPath })
			if hasVol != tc.diskVolume {
				t.Errorf("disk volume %v, want %v", hasVol, tc.diskVolume)
			}
			// Idempotent: a second pass changes nothing.
			before := tmpl.DeepCopy()
			DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
			if d := cmp.Diff(before, tmpl); d != "" {
				t.Errorf("second pass changed (-first +second):\n%s", d)
			}
		})
	}
}

// A Secret is referenced by name, never read, and nothing of it (nor any
// value that looks like one) is written into args, env values or
// annotations.
func TestKVOffloadSecretReferencedNeverInlined(t *testing.T) {
	tmpl := template(map[string]string{
		apis.ModelAnnotation:           "m",
		apis.KVOffloadAnnotation:       "on-scale-down",
		apis.KVOffloadURIAnnotation:    "azblob://kv/m",
		apis.KVOffloadSecretAnnotation: "kv-store-credentials",
	}, vllm())
	DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
	c := tmpl.Spec.Containers[0]
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s: a single key reference where the whole Secret was asked", e.Name)
		}
		if strings.Contains(e.Value, "kv-store-credentials") {
			t.Errorf("env %s carries the Secret's name as a value: %q", e.Name, e.Value)
		}
	}
	for _, a := range c.Args {
		if strings.Contains(a, "kv-store-credentials") {
			t.Errorf("arg carries the Secret: %q", a)
		}
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != "kv-store-credentials" ||
		c.EnvFrom[0].SecretRef.Optional != nil {
		t.Fatalf("envFrom %+v, want one required secretRef kv-store-credentials", c.EnvFrom)
	}
	// A Secret reference the user already wrote is not duplicated.
	tmpl2 := template(map[string]string{
		apis.ModelAnnotation:           "m",
		apis.KVOffloadAnnotation:       "on-scale-down",
		apis.KVOffloadURIAnnotation:    "s3://kv/m",
		apis.KVOffloadSecretAnnotation: "kv-store-credentials",
	}, vllm())
	tmpl2.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "kv-store-credentials"}}}}
	DefaultTemplate(tmpl2, knativeConfig(t, nil, fieldRefOn))
	if n := len(tmpl2.Spec.Containers[0].EnvFrom); n != 1 {
		t.Errorf("%d envFrom entries, want the user's one", n)
	}
}

func TestKVOffloadNeverOverridesTheUser(t *testing.T) {
	userKV := `{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both","kv_connector_extra_config":{"x":1}}`
	c := vllm()
	c.Args = append(c.Args, "--kv-transfer-config="+userKV)
	c.Env = []corev1.EnvVar{{Name: "LMCACHE_CHUNK_SIZE", Value: "512"}, {Name: "LMCACHE_REMOTE_URL", Value: "redis://cache:6379"}}
	tmpl := template(map[string]string{
		apis.ModelAnnotation:        "m",
		apis.KVOffloadAnnotation:    "write-through",
		apis.KVOffloadURIAnnotation: "s3://kv/m",
	}, c)
	DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
	got := tmpl.Spec.Containers[0]
	if n := slices.IndexFunc(got.Args, func(a string) bool { return strings.HasPrefix(a, flagKVTransfer) }); n < 0 || got.Args[n] != "--kv-transfer-config="+userKV {
		t.Errorf("user's %s changed: %v", flagKVTransfer, got.Args)
	}
	if strings.Count(strings.Join(got.Args, " "), flagKVTransfer) != 1 {
		t.Errorf("a second %s: %v", flagKVTransfer, got.Args)
	}
	env := envMap(got)
	if env["LMCACHE_CHUNK_SIZE"] != "512" || env["LMCACHE_REMOTE_URL"] != "redis://cache:6379" {
		t.Errorf("user's env changed: %v", env)
	}
	// Turning offload off removes exactly what the webhook added.
	delete(tmpl.Annotations, apis.KVOffloadAnnotation)
	delete(tmpl.Annotations, apis.KVOffloadURIAnnotation)
	DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn))
	got = tmpl.Spec.Containers[0]
	env = envMap(got)
	if _, ok := env[EnvKVOffloadURI]; ok {
		t.Errorf("injected env left behind: %v", env)
	}
	if env["LMCACHE_CHUNK_SIZE"] != "512" || env["LMCACHE_REMOTE_URL"] != "redis://cache:6379" {
		t.Errorf("user's env removed: %v", env)
	}
	if _, ok := tmpl.Annotations[KVOffloadInjectedAnnotation]; ok {
		t.Errorf("injection record left behind")
	}
	if !slices.Contains(got.Args, "--kv-transfer-config="+userKV) {
		t.Errorf("user's flag removed: %v", got.Args)
	}
}

// Changing the tier size replaces the webhook's own flag, and offload
// switched off removes it, volume included.
func TestKVOffloadFollowsChangedAnnotations(t *testing.T) {
	tmpl := template(map[string]string{apis.ModelAnnotation: "m", apis.KVCPUTierBytesAnnotation: "1G"}, vllm())
	cfg := knativeConfig(t, nil, fieldRefOn)
	DefaultTemplate(tmpl, cfg)
	tmpl.Annotations[apis.KVCPUTierBytesAnnotation] = "2G"
	DefaultTemplate(tmpl, cfg)
	c := tmpl.Spec.Containers[0]
	if n := strings.Count(strings.Join(c.Args, " "), flagKVTransfer); n != 1 {
		t.Fatalf("%d %s flags: %v", n, flagKVTransfer, c.Args)
	}
	extra, _ := kvTransferArg(t, c)["kv_connector_extra_config"].(map[string]any)
	if extra["cpu_bytes_to_use"] != float64(2e9) {
		t.Errorf("cpu_bytes_to_use %v after the change, want 2e9", extra["cpu_bytes_to_use"])
	}
	tmpl.Annotations[apis.KVDiskTierBytesAnnotation] = "10G"
	DefaultTemplate(tmpl, cfg)
	if kvTransferArg(t, tmpl.Spec.Containers[0])["kv_connector"] != LMCacheConnector || len(tmpl.Spec.Volumes) != 1 {
		t.Fatalf("disk tier: args %v volumes %v", tmpl.Spec.Containers[0].Args, tmpl.Spec.Volumes)
	}
	delete(tmpl.Annotations, apis.KVCPUTierBytesAnnotation)
	delete(tmpl.Annotations, apis.KVDiskTierBytesAnnotation)
	DefaultTemplate(tmpl, cfg)
	c = tmpl.Spec.Containers[0]
	if kvTransferArg(t, c) != nil || len(tmpl.Spec.Volumes) != 0 || len(c.VolumeMounts) != 0 || len(envMap(c)) != 0 {
		t.Errorf("left behind: args %v volumes %v mounts %v env %v", c.Args, tmpl.Spec.Volumes, c.VolumeMounts, c.Env)
	}
}

func TestKVOffloadWarnings(t *testing.T) {
	cases := []struct {
		name     string
		ann      map[string]string
		features map[string]string
		want     string
	}{
		{"no uri", map[string]string{apis.KVOffloadAnnotation: "on-scale-down"}, fieldRefOn, "nothing is written to shared storage"},
		{"file uri not mounted", map[string]string{apis.KVOffloadAnnotation: "on-scale-down", apis.KVOffloadURIAnnotation: "file:///mnt/kv"}, fieldRefOn, "not on a volume mounted"},
		{"prefill-decode", map[string]string{apis.DisaggregationAnnotation: "prefill-decode", apis.KVCPUTierBytesAnnotation: "1G"}, fieldRefOn, "NIXL"},
		{"emptyDir disabled", map[string]string{apis.KVDiskTierBytesAnnotation: "1G"},
			map[string]string{"kubernetes.podspec-fieldref": "enabled", "kubernetes.podspec-volumes-emptydir": "disabled"}, "emptydir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ann := map[string]string{apis.ModelAnnotation: "m"}
			for k, v := range tc.ann {
				ann[k] = v
			}
			tmpl := template(ann, vllm())
			warnings := DefaultTemplate(tmpl, knativeConfig(t, nil, tc.features))
			if !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, tc.want) }) {
				t.Errorf("warnings %q, want one containing %q", warnings, tc.want)
			}
		})
	}
	// A grace period (timeoutSeconds) shorter than the flush deadline.
	short := template(map[string]string{apis.ModelAnnotation: "m", apis.KVOffloadAnnotation: "on-scale-down",
		apis.KVOffloadURIAnnotation: "s3://kv/llama", apis.KVOffloadDeadlineAnnotation: "2m"}, vllm())
	short.Spec.TimeoutSeconds = ptr[int64](60)
	if w := DefaultTemplate(short, knativeConfig(t, nil, fieldRefOn)); len(w) != 1 || !strings.Contains(w[0], "timeoutSeconds 60") {
		t.Errorf("warnings %q, want one about timeoutSeconds 60", w)
	}
	short.Spec.TimeoutSeconds = ptr[int64](300)
	if w := DefaultTemplate(short, knativeConfig(t, nil, fieldRefOn)); len(w) != 0 {
		t.Errorf("timeoutSeconds 300 over a 2m deadline: warnings %q", w)
	}
	// A file:// store on a mounted volume is fine.
	c := vllm()
	c.VolumeMounts = []corev1.VolumeMount{{Name: "kv", MountPath: "/mnt/kv"}}
	tmpl := template(map[string]string{apis.ModelAnnotation: "m", apis.KVOffloadAnnotation: "write-through", apis.KVOffloadURIAnnotation: "file:///mnt/kv/llama"}, c)
	if w := DefaultTemplate(tmpl, knativeConfig(t, nil, fieldRefOn)); len(w) != 0 {
		t.Errorf("warnings %v", w)
	}
}
