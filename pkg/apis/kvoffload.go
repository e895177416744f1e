package apis

import (
	"fmt"
	"math"
	"net/url"
	pathpkg "path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// KVOffloadSchemes are the storage URL schemes llm-d.ai/kv-offload-uri
// accepts: the gocloud.dev/blob drivers pkg/kvstore opens.
var KVOffloadSchemes = []string{"file", "s3", "gs", "azblob"}

// credentialQueryKeys are URL query keys that would put a secret in an
// annotation (pre-signed URLs, SAS tokens, inline keys): refused, so that
// credentials only ever come from llm-d.ai/kv-offload-secret.
var credentialQueryKeys = []string{"secret", "key", "token", "password", "sig", "signature", "credential", "sas", "x-amz-"}

// ParseKVOffloadURI validates a storage URL: a known scheme, a bucket (or an
// absolute, clean path for file://), and no credentials in it.
func ParseKVOffloadURI(v string) (*url.URL, error) {
	if len(v) > 2048 || strings.ContainsAny(v, "\x00\n\r\t ") {
		return nil, fmt.Errorf("invalid value: must be a storage URL of at most 2048 characters without spaces")
	}
	u, err := url.Parse(v)
	if err != nil {
		// url's errors quote the input: fine, it is not secret (userinfo
		// is refused below, before any message could carry it).
		return nil, fmt.Errorf("invalid value: not a URL")
	}
	if !slices.Contains(KVOffloadSchemes, u.Scheme) {
		return nil, fmt.Errorf("invalid scheme %q: must be one of %s (like s3://bucket/prefix or file:///var/lib/kv)", u.Scheme, strings.Join(KVOffloadSchemes, ", "))
	}
	if u.User != nil {
		return nil, fmt.Errorf("credentials in the URL are refused: name a Secret in %s instead", KVOffloadSecretAnnotation)
	}
	for k := range u.Query() {
		lk := strings.ToLower(k)
		for _, c := range credentialQueryKeys {
			if strings.Contains(lk, c) {
				return nil, fmt.Errorf("query parameter %q looks like a credential: name a Secret in %s instead", k, KVOffloadSecretAnnotation)
			}
		}
	}
	if u.Scheme == "file" {
		if u.Host != "" || !pathpkg.IsAbs(u.Path) || pathpkg.Clean(u.Path) != u.Path || u.Path == "/" {
			return nil, fmt.Errorf("invalid value %q: file:// needs an absolute, clean directory (a mounted volume), like file:///var/lib/llm-d/kv", v)
		}
		return u, nil
	}
	if u.Host == "" {
		return nil, fmt.Errorf("invalid value %q: %s:// needs a bucket, like %s://my-bucket/kv", v, u.Scheme, u.Scheme)
	}
	return u, nil
}

// byteUnits are the suffixes ParseBytes accepts, as Kubernetes quantities
// spell them (binary Ki..Ti, decimal k/K..T).
var byteUnits = []struct {
	suffix string
	mult   float64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"Pi", 1 << 50},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"P", 1e15},
}

// MaxBytes bounds every byte-size annotation (1 EiB).
const MaxBytes = int64(1) << 60

// ParseBytes reads a byte size: an integer, or a number with a Kubernetes
// quantity suffix (Ki, Mi, Gi, Ti, Pi, k, M, G, T, P), like 200Gi or 1.5T.
func ParseBytes(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := 1.0
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = num, u.mult
			break
		}
	}
	if s == "" || strings.ContainsAny(s, "eE_xXpP") {
		return 0, fmt.Errorf("not a byte size")
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 {
		return 0, fmt.Errorf("not a byte size")
	}
	b := f * mult
	if b >= float64(MaxBytes) {
		return 0, fmt.Errorf("larger than 1Ei")
	}
	return int64(math.Round(b)), nil
}

// secretName is a DNS-1123 subdomain, what Kubernetes accepts as a Secret
// name.
var secretName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// parseKVOffload reads the KV-offload and tier annotations into k.
func parseKVOffload(ann map[string]string, k *KVOffloadSpec, fail func(key, format string, args ...any)) {
	if v, ok := ann[KVOffloadAnnotation]; ok {
		switch v {
		case KVOffloadOff, KVOffloadOnScaleDown, KVOffloadWriteThrough:
			k.Mode = v
		default:
			fail(KVOffloadAnnotation, "invalid value %q: must be one of %s, %s, %s", v, KVOffloadOff, KVOffloadOnScaleDown, KVOffloadWriteThrough)
		}
	}
	size := func(key string, dst *int64, positive bool) {
		v, ok := ann[key]
		if !ok {
			return
		}
		n, err := ParseBytes(v)
		if err != nil || (positive && n == 0) {
			min := ">= 0"
			if positive {
				min = "> 0"
			}
			fail(key, "invalid value %q: must be a byte size %s up to 1Ei, like 200Gi, 64G or 1073741824", v, min)
			return
		}
		*dst = n
	}
	size(KVOffloadMaxBytesAnnotation, &k.MaxBytes, true)
	size(KVPrefetchBytesAnnotation, &k.PrefetchBytes, false)
	size(KVCPUTierBytesAnnotation, &k.CPUTierBytes, false)
	size(KVDiskTierBytesAnnotation, &k.DiskTierBytes, false)
	if v, ok := ann[KVOffloadDeadlineAnnotation]; ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 || d > time.Hour {
			fail(KVOffloadDeadlineAnnotation, "invalid value %q: must be a positive duration up to 1h, like 30s or 2m", v)
		} else {
			k.Deadline = d
		}
	}
	if v, ok := ann[KVOffloadURIAnnotation]; ok {
		if _, err := ParseKVOffloadURI(v); err != nil {
			fail(KVOffloadURIAnnotation, "%v", err)
		} else {
			k.URI = v
		}
	}
	if v, ok := ann[KVOffloadSecretAnnotation]; ok {
		// The message never repeats the value: someone may have pasted
		// the Secret's contents here.
		if len(v) > 253 || !secretName.MatchString(v) {
			fail(KVOffloadSecretAnnotation, "invalid value: must be the name of a Secret in the Service's namespace (a DNS-1123 subdomain), never its contents")
		} else {
			k.Secret = v
		}
	}
	if _, ok := ann[KVOffloadAnnotation]; !ok || ann[KVOffloadAnnotation] == KVOffloadOff {
		for _, key := range []string{KVOffloadURIAnnotation, KVOffloadMaxBytesAnnotation, KVOffloadDeadlineAnnotation, KVPrefetchBytesAnnotation, KVOffloadSecretAnnotation} {
			if _, set := ann[key]; set {
				fail(key, "only meaningful with %s: %s or %s", KVOffloadAnnotation, KVOffloadOnScaleDown, KVOffloadWriteThrough)
			}
		}
	}
	if k.MaxBytes > 0 && k.PrefetchBytes > k.MaxBytes {
		fail(KVPrefetchBytesAnnotation, "prefetch of %d bytes exceeds %s (%d bytes): nothing beyond the stored bytes can be prefetched", k.PrefetchBytes, KVOffloadMaxBytesAnnotation, k.MaxBytes)
	}
	if k.Secret != "" && k.URI != "" && strings.HasPrefix(k.URI, "file://") {
		fail(KVOffloadSecretAnnotation, "a file:// URI needs no credentials: the Secret would be mounted for nothing")
	}
}
