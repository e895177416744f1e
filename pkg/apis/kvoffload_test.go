package apis

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseKVOffload(t *testing.T) {
	cases := []struct {
		name string
		ann  map[string]string
		want KVOffloadSpec
	}{
		{"absent: off, default deadline", map[string]string{}, KVOffloadSpec{Mode: KVOffloadOff, Deadline: DefaultKVOffloadDeadline}},
		{"tiers without offload", map[string]string{KVCPUTierBytesAnnotation: "64Gi", KVDiskTierBytesAnnotation: "0.5T"},
			KVOffloadSpec{Mode: KVOffloadOff, Deadline: DefaultKVOffloadDeadline, CPUTierBytes: 64 << 30, DiskTierBytes: 500e9}},
		{"on scale down, everything set", map[string]string{
			KVOffloadAnnotation:         "on-scale-down",
			KVOffloadURIAnnotation:      "s3://kv-bucket/llama?region=us-east-1&endpoint=http://minio:9000",
			KVOffloadMaxBytesAnnotation: "200Gi",
			KVOffloadDeadlineAnnotation: "45s",
			KVPrefetchBytesAnnotation:   "8Gi",
			KVOffloadSecretAnnotation:   "kv-store-credentials",
		}, KVOffloadSpec{Mode: KVOffloadOnScaleDown, URI: "s3://kv-bucket/llama?region=us-east-1&endpoint=http://minio:9000",
			MaxBytes: 200 << 30, Deadline: 45 * time.Second, PrefetchBytes: 8 << 30, Secret: "kv-store-credentials"}},
		{"write-through to a shared volume", map[string]string{KVOffloadAnnotation: "write-through", KVOffloadURIAnnotation: "file:///mnt/kv"},
			KVOffloadSpec{Mode: KVOffloadWriteThrough, URI: "file:///mnt/kv", Deadline: DefaultKVOffloadDeadline}},
		{"gs and plain bytes", map[string]string{KVOffloadAnnotation: "write-through", KVOffloadURIAnnotation: "gs://b", KVOffloadMaxBytesAnnotation: "1073741824"},
			KVOffloadSpec{Mode: KVOffloadWriteThrough, URI: "gs://b", MaxBytes: 1 << 30, Deadline: DefaultKVOffloadDeadline}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse(c.ann, path, vocab)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(c.want, s.KVOffload); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if s.KVOffload.Enabled() != (c.want.Mode != KVOffloadOff) {
				t.Errorf("Enabled() = %v for mode %q", s.KVOffload.Enabled(), c.want.Mode)
			}
		})
	}
}

func TestParseKVOffloadRejectsWithFieldPaths(t *testing.T) {
	on := func(kv ...string) map[string]string {
		m := map[string]string{KVOffloadAnnotation: KVOffloadOnScaleDown}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name   string
		ann    map[string]string
		key    string
		hidden string // must not appear in the error
	}{
		{"unknown mode", map[string]string{KVOffloadAnnotation: "always"}, KVOffloadAnnotation, ""},
		{"mode case", map[string]string{KVOffloadAnnotation: "Off"}, KVOffloadAnnotation, ""},
		{"http scheme", on(KVOffloadURIAnnotation, "http://bucket/x"), KVOffloadURIAnnotation, ""},
		{"no scheme", on(KVOffloadURIAnnotation, "/mnt/kv"), KVOffloadURIAnnotation, ""},
		{"relative file", on(KVOffloadURIAnnotation, "file://mnt/kv"), KVOffloadURIAnnotation, ""},
		{"unclean file", on(KVOffloadURIAnnotation, "file:///mnt/../etc"), KVOffloadURIAnnotation, ""},
		{"root file", on(KVOffloadURIAnnotation, "file:///"), KVOffloadURIAnnotation, ""},
		{"s3 without bucket", on(KVOffloadURIAnnotation, "s3:///x"), KVOffloadURIAnnotation, ""},
		{"credentials in userinfo", on(KVOffloadURIAnnotation, "s3://AKIAXXX:hunter2@bucket/x"), KVOffloadURIAnnotation, "hunter2"},
		{"credentials in query", on(KVOffloadURIAnnotation, "azblob://c/x?sig=hunter2"), KVOffloadURIAnnotation, "hunter2"},
		{"aws presigned", on(KVOffloadURIAnnotation, "s3://b/x?X-Amz-Credential=hunter2"), KVOffloadURIAnnotation, "hunter2"},
		{"uri with spaces", on(KVOffloadURIAnnotation, "s3://b/x y"), KVOffloadURIAnnotation, ""},
		{"max bytes zero", on(KVOffloadMaxBytesAnnotation, "0"), KVOffloadMaxBytesAnnotation, ""},
		{"max bytes negative", on(KVOffloadMaxBytesAnnotation, "-1Gi"), KVOffloadMaxBytesAnnotation, ""},
		{"max bytes unit", on(KVOffloadMaxBytesAnnotation, "10GB"), KVOffloadMaxBytesAnnotation, ""},
		{"max bytes exponent", on(KVOffloadMaxBytesAnnotation, "1e9"), KVOffloadMaxBytesAnnotation, ""},
		{"max bytes huge", on(KVOffloadMaxBytesAnnotation, "2048Pi"), KVOffloadMaxBytesAnnotation, ""},
		{"prefetch word", on(KVPrefetchBytesAnnotation, "lots"), KVPrefetchBytesAnnotation, ""},
		{"prefetch over max", on(KVOffloadMaxBytesAnnotation, "1Gi", KVPrefetchBytesAnnotation, "2Gi"), KVPrefetchBytesAnnotation, ""},
		{"deadline zero", on(KVOffloadDeadlineAnnotation, "0s"), KVOffloadDeadlineAnnotation, ""},
		{"deadline too long", on(KVOffloadDeadlineAnnotation, "2h"), KVOffloadDeadlineAnnotation, ""},
		{"deadline number", on(KVOffloadDeadlineAnnotation, "30"), KVOffloadDeadlineAnnotation, ""},
		{"secret contents pasted", on(KVOffloadSecretAnnotation, "AWS_SECRET_ACCESS_KEY=hunter2"), KVOffloadSecretAnnotation, "hunter2"},
		{"secret upper case", on(KVOffloadSecretAnnotation, "KvCreds"), KVOffloadSecretAnnotation, ""},
		{"secret too long", on(KVOffloadSecretAnnotation, strings.Repeat("a", 254)), KVOffloadSecretAnnotation, ""},
		{"secret for file", on(KVOffloadURIAnnotation, "file:///mnt/kv", KVOffloadSecretAnnotation, "creds"), KVOffloadSecretAnnotation, ""},
		{"uri without offload", map[string]string{KVOffloadURIAnnotation: "s3://b/x"}, KVOffloadURIAnnotation, ""},
		{"secret with offload off", map[string]string{KVOffloadAnnotation: "off", KVOffloadSecretAnnotation: "creds"}, KVOffloadSecretAnnotation, ""},
		{"prefetch without offload", map[string]string{KVPrefetchBytesAnnotation: "1Gi"}, KVPrefetchBytesAnnotation, ""},
		{"cpu tier negative", map[string]string{KVCPUTierBytesAnnotation: "-64Gi"}, KVCPUTierBytesAnnotation, ""},
		{"disk tier word", map[string]string{KVDiskTierBytesAnnotation: "big"}, KVDiskTierBytesAnnotation, ""},
		{"tier typo", map[string]string{"llm-d.ai/kv-cpu-bytes": "1Gi"}, "llm-d.ai/kv-cpu-bytes", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.ann, path, vocab)
			if err == nil {
				t.Fatal("accepted")
			}
			if want := path + "[" + c.key + "]"; !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not name %s", err, want)
			}
			if c.hidden != "" && strings.Contains(err.Error(), c.hidden) {
				t.Fatalf("error %q repeats a secret", err)
			}
		})
	}
}

func TestParseBytes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"1024", 1024, true}, {" 1Ki ", 1024, true}, {"1.5Gi", 3 << 29, true}, {"64G", 64e9, true},
		{"2k", 2000, true}, {"2K", 2000, true}, {"1Ti", 1 << 40, true}, {"1P", 1e15, true},
		{"", 0, false}, {"Gi", 0, false}, {"-1", 0, false}, {"1GB", 0, false}, {"1e3", 0, false},
		{"0x10", 0, false}, {"NaN", 0, false}, {"Inf", 0, false}, {"1_000", 0, false}, {"1024Pi", 0, false},
	} {
		got, err := ParseBytes(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

// FuzzKVOffloadAnnotations: any values parse without a panic, and an
// accepted spec is within its documented bounds and carries no userinfo.
func FuzzKVOffloadAnnotations(f *testing.F) {
	f.Add("on-scale-down", "s3://b/x?region=r", "200Gi", "30s", "1Gi", "creds")
	f.Add("write-through", "file:///mnt/kv", "1.5T", "1h", "0", "a.b")
	f.Add("off", "azblob://c", "-1", "0s", "x", "A=B")
	f.Fuzz(func(t *testing.T, mode, uri, maxBytes, deadline, prefetch, secret string) {
		s, err := Parse(map[string]string{
			KVOffloadAnnotation: mode, KVOffloadURIAnnotation: uri, KVOffloadMaxBytesAnnotation: maxBytes,
			KVOffloadDeadlineAnnotation: deadline, KVPrefetchBytesAnnotation: prefetch, KVOffloadSecretAnnotation: secret,
		}, path, vocab)
		if err != nil {
			return
		}
		k := s.KVOffload
		if !k.Enabled() || k.MaxBytes <= 0 || k.MaxBytes >= MaxBytes || k.PrefetchBytes > k.MaxBytes ||
			k.Deadline <= 0 || k.Deadline > time.Hour {
			t.Fatalf("accepted out of bounds: %+v", k)
		}
		if u, err := url.Parse(k.URI); err != nil || u.User != nil {
			t.Fatalf("accepted URI %q: %v", k.URI, err)
		}
	})
}
