package webhook

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// KV offload in a cluster (llm-d.ai/kv-offload and the tier annotations).
//
// Which vLLM connector:
//   - only a CPU tier (llm-d.ai/kv-cpu-tier-bytes, no disk tier, no shared
//     storage): vLLM's own OffloadingConnector (CPUOffloadingSpec,
//     cpu_bytes_to_use), which needs nothing but the flag;
//   - a disk tier or shared storage: LMCache (LMCacheConnectorV1), one
//     connector that holds a CPU tier, a local disk tier and a remote
//     store, configured by LMCACHE_* environment variables.
//
// The storage credentials are the Secret's keys turned into the
// environment by reference (envFrom.secretRef): the webhook reads only the
// Secret's name, never its contents, and writes nothing secret anywhere.
const (
	// OffloadingConnector is vLLM's native CPU offloading connector.
	OffloadingConnector = "OffloadingConnector"
	// LMCacheConnector is LMCache's vLLM v1 connector.
	LMCacheConnector = "LMCacheConnectorV1"
	// KVDiskVolume is the emptyDir the disk tier lives on, mounted at
	// KVDiskPath.
	KVDiskVolume = "llmd-kv-disk"
	KVDiskPath   = "/var/lib/llm-d/kv-disk"
	// LMCacheChunkTokens is LMCache's chunk (its unit of storage): 256
	// tokens is its default and a multiple of vLLM's 16-token block.
	LMCacheChunkTokens = 256

	// KVOffloadInjectedAnnotation records on the template what the
	// webhook injected for KV offload (flag, environment names, Secret
	// reference, volume), so that a later change of the annotations
	// replaces it instead of leaving stale settings; what a user wrote is
	// never in it and never touched.
	KVOffloadInjectedAnnotation = "status.llm-d.ai/kv-offload"
)

// Environment variables the webhook may set.
const (
	EnvKVOffloadMode = "LLMD_KV_OFFLOAD_MODE"
	EnvKVOffloadURI  = "LLMD_KV_OFFLOAD_URI"
)

// injected is what one defaulting pass added, recorded in
// KVOffloadInjectedAnnotation as JSON.
type injected struct {
	Flag   string   `json:"flag,omitempty"` // the --kv-transfer-config value written
	Env    []string `json:"env,omitempty"`
	Secret string   `json:"secret,omitempty"`
	Volume bool     `json:"volume,omitempty"`
}

// defaultKVOffload configures the serving container c of tmpl for the
// revision's KV tiers and offload. Idempotent; it never changes what the
// user wrote, and replaces what an earlier pass injected.
func defaultKVOffload(tmpl *servingv1.RevisionTemplateSpec, c *corev1.Container, features *config.Features) []string {
	ann := tmpl.Annotations
	removeInjected(tmpl, c)
	spec, err := apis.Parse(ann, "", apis.Vocabulary{})
	if err != nil {
		return nil // validation reports it
	}
	k := spec.KVOffload
	if !k.Enabled() && k.CPUTierBytes == 0 && k.DiskTierBytes == 0 {
		return nil
	}
	var warnings []string
	if spec.Disaggregated() {
		return []string{fmt.Sprintf("KV offload and tiers not configured: prefill-decode pods use --kv-transfer-config for NIXL, "+
			"and combining it with an offloading connector is not supported yet; remove %s/%s/%s or %s",
			apis.KVOffloadAnnotation, apis.KVCPUTierBytesAnnotation, apis.KVDiskTierBytesAnnotation, apis.DisaggregationAnnotation)}
	}
	if runsShell(c) {
		return []string{"the serving container runs a shell script: KV offload flags not added; configure vLLM's --kv-transfer-config yourself"}
	}
	var rec injected
	disk := k.DiskTierBytes > 0
	if disk && features.PodSpecVolumesEmptyDir == config.Disabled {
		warnings = append(warnings, "KV disk tier not configured: it needs an emptyDir volume; enable kubernetes.podspec-volumes-emptydir in Knative's config-features")
		disk = false
	}
	useLMCache := k.Enabled() || disk
	if !useLMCache && k.CPUTierBytes == 0 {
		return warnings
	}
	value := kvTransferConfigFor(useLMCache, k.CPUTierBytes)
	if !hasFlag(c, flagKVTransfer) {
		c.Args = append(c.Args, flagKVTransfer, value)
		rec.Flag = value
	}
	if useLMCache {
		env := []corev1.EnvVar{
			{Name: "LMCACHE_CHUNK_SIZE", Value: strconv.Itoa(LMCacheChunkTokens)},
			{Name: "LMCACHE_LOCAL_CPU", Value: pyBool(k.CPUTierBytes > 0)},
		}
		if k.CPUTierBytes > 0 {
			env = append(env, corev1.EnvVar{Name: "LMCACHE_MAX_LOCAL_CPU_SIZE", Value: gb(k.CPUTierBytes)})
		}
		if disk {
			env = append(env,
				corev1.EnvVar{Name: "LMCACHE_LOCAL_DISK", Value: "file://" + KVDiskPath + "/"},
				corev1.EnvVar{Name: "LMCACHE_MAX_LOCAL_DISK_SIZE", Value: gb(k.DiskTierBytes)})
		}
		if k.Enabled() {
			env = append(env, corev1.EnvVar{Name: EnvKVOffloadMode, Value: k.Mode})
			// Knative makes the revision's timeoutSeconds the pods'
			// termination grace period: a pod stopped at scale-down
			// that has not flushed by then is killed.
			if ts := tmpl.Spec.TimeoutSeconds; ts != nil && time.Duration(*ts)*time.Second < k.Deadline {
				warnings = append(warnings, fmt.Sprintf("timeoutSeconds %d (the pods' termination grace period) is shorter than %s %s: "+
					"a pod stopped at scale-down may be killed before its KV flush ends", *ts, apis.KVOffloadDeadlineAnnotation, k.Deadline))
			}
			if k.URI == "" {
				warnings = append(warnings, fmt.Sprintf("%s is %s but %s is not set: nothing is written to shared storage",
					apis.KVOffloadAnnotation, k.Mode, apis.KVOffloadURIAnnotation))
			} else {
				env = append(env,
					corev1.EnvVar{Name: EnvKVOffloadURI, Value: k.URI},
					corev1.EnvVar{Name: "LMCACHE_REMOTE_URL", Value: k.URI},
					corev1.EnvVar{Name: "LMCACHE_REMOTE_SERDE", Value: "naive"})
				if w := fileURIMounted(c, k.URI); w != "" {
					warnings = append(warnings, w)
				}
			}
		}
		for _, e := range env {
			if !hasEnv(c, e.Name) {
				c.Env = append(c.Env, e)
				rec.Env = append(rec.Env, e.Name)
			}
		}
		if disk {
			size := resource.NewQuantity(k.DiskTierBytes, resource.BinarySI)
			tmpl.Spec.Volumes = append(tmpl.Spec.Volumes, corev1.Volume{Name: KVDiskVolume,
				VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: size}}})
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: KVDiskVolume, MountPath: KVDiskPath})
			rec.Volume = true
		}
	}
	if k.Enabled() && k.Secret != "" && !refsSecret(c, k.Secret) {
		c.EnvFrom = append(c.EnvFrom, corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: k.Secret}}})
		rec.Secret = k.Secret
	}
	if rec.Flag != "" || len(rec.Env) > 0 || rec.Secret != "" || rec.Volume {
		b, _ := json.Marshal(rec)
		ann[KVOffloadInjectedAnnotation] = string(b)
	}
	return warnings
}

// kvTransferConfigFor is the --kv-transfer-config value: LMCache's
// connector (configured by its environment), or vLLM's native CPU
// offloading with the tier's bytes.
func kvTransferConfigFor(lmcache bool, cpuBytes int64) string {
	type extra struct {
		CPUBytes int64 `json:"cpu_bytes_to_use"`
	}
	v := struct {
		Connector string `json:"kv_connector"`
		Role      string `json:"kv_role"`
		Extra     *extra `json:"kv_connector_extra_config,omitempty"`
	}{Connector: LMCacheConnector, Role: "kv_both"}
	if !lmcache {
		v.Connector, v.Extra = OffloadingConnector, &extra{CPUBytes: cpuBytes}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// removeInjected undoes what an earlier pass recorded, so that defaulting
// follows changed annotations; the user's own settings are not recorded
// and stay.
func removeInjected(tmpl *servingv1.RevisionTemplateSpec, c *corev1.Container) {
	raw, ok := tmpl.Annotations[KVOffloadInjectedAnnotation]
	if !ok {
		return
	}
	delete(tmpl.Annotations, KVOffloadInjectedAnnotation)
	var rec injected
	if json.Unmarshal([]byte(raw), &rec) != nil {
		return
	}
	if rec.Flag != "" {
		removeFlag(c, flagKVTransfer, rec.Flag)
	}
	c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return slices.Contains(rec.Env, e.Name) })
	if rec.Secret != "" {
		c.EnvFrom = slices.DeleteFunc(c.EnvFrom, func(e corev1.EnvFromSource) bool {
			return e.SecretRef != nil && e.SecretRef.Name == rec.Secret && e.Prefix == ""
		})
	}
	if rec.Volume {
		c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == KVDiskVolume })
		tmpl.Spec.Volumes = slices.DeleteFunc(tmpl.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == KVDiskVolume })
	}
}

// removeFlag removes the first flag of c.Args if its value is value.
func removeFlag(c *corev1.Container, flag, value string) {
	for i := 0; i < len(c.Args); i++ {
		name, v, inline := splitFlag(c.Args[i])
		if name != flag {
			continue
		}
		switch {
		case inline && v == value:
			c.Args = slices.Delete(c.Args, i, i+1)
		case !inline && i+1 < len(c.Args) && c.Args[i+1] == value:
			c.Args = slices.Delete(c.Args, i, i+2)
		}
		return
	}
}

func refsSecret(c *corev1.Container, name string) bool {
	for _, e := range c.EnvFrom {
		if e.SecretRef != nil && e.SecretRef.Name == name {
			return true
		}
	}
	return false
}

// fileURIMounted warns when a file:// store is not on a volume mounted
// into the container: each pod would then write its own ephemeral copy.
func fileURIMounted(c *corev1.Container, uri string) string {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "file" {
		return ""
	}
	for _, m := range c.VolumeMounts {
		mp := strings.TrimSuffix(m.MountPath, "/")
		if u.Path == mp || strings.HasPrefix(u.Path, mp+"/") {
			return ""
		}
	}
	return fmt.Sprintf("%s %s is not on a volume mounted into the container: mount a shared volume (ReadWriteMany) there, or each pod keeps its own copy and it is lost with the pod",
		apis.KVOffloadURIAnnotation, uri)
}

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// gb is a size in LMCache's unit (GB, 1e9 bytes; fractions allowed).
func gb(n int64) string {
	return strconv.FormatFloat(float64(n)/1e9, 'f', -1, 64)
}
