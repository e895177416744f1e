package router

import (
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

// Two tenants' blocks never mix in predictions: a LoRA adapter's blocks
// (KV events or storage manifests naming it) count only for requests under
// that adapter; a cache_salt request matches no event or manifest (they do
// not say a block's salt) and only what the router recorded for its own
// salt; the shared hash cache never hands a salted request the unsalted
// chain.
func TestTenantsNeverMix(t *testing.T) {
	f := newTierFixture()
	r := mustRouter(t, "")
	// An engine hashes an adapter's blocks apart from the base model's (and
	// storage keys them so): other engine hashes, same tokens.
	loraEv := func(name string) KVEvent {
		eng := testEngine{kvblock.MustHasher(16, uint64(name[0])*0x9e3779b9+7), 16}
		ev := eng.all(f.prompt)
		ev.LoraName = name
		return ev
	}
	if err := r.Apply("base", f.eng.all(f.prompt)); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply("lora-a", loraEv("a")); err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyStorage(loraEv("b")); err != nil {
		t.Fatal(err)
	}
	ep := func(id string) Endpoint { return Endpoint{ID: id, Ready: true, BlockSize: 16} }
	const all = 16 * tierBlocksN
	req := func(lora, salt string) *Request {
		return &Request{Model: "m", Tokens: f.prompt, LoRA: lora, CacheSalt: salt}
	}
	cases := []struct {
		name       string
		req        *Request
		base, a, c int // predicted on base, lora-a, and a cold endpoint
	}{
		{"base model", req("", ""), all, 0, 0},
		{"adapter a", req("a", ""), 0, all, 0},
		{"adapter b: only storage holds it", req("b", ""), all, all, all},
		{"salted", req("", "tenant-1"), 0, 0, 0},
		{"adapter b, salted", req("b", "tenant-1"), 0, 0, 0},
	}
	for _, tc := range cases {
		for _, e := range []struct {
			id   string
			want int
		}{{"base", tc.base}, {"lora-a", tc.a}, {"cold", tc.c}} {
			if got := hit(t, r, "kv-precise", tc.req, ep(e.id)); got != e.want {
				t.Errorf("%s on %s: predicted cached %d, want %d", tc.name, e.id, got, e.want)
			}
		}
	}

	// The router's own record keeps salts apart.
	s, err := r.Scheduler("prefix-approx")
	if err != nil {
		t.Fatal(err)
	}
	var d Decision
	if err := s.Decide(&d, req("", "tenant-1"), []Endpoint{ep("x")}); err != nil {
		t.Fatal(err)
	}
	r.Record(&d)
	for _, tc := range []struct {
		name string
		req  *Request
		want bool
	}{{"same salt", req("", "tenant-1"), true}, {"other salt", req("", "tenant-2"), false}, {"unsalted", req("", ""), false}, {"same salt, adapter a", req("a", "tenant-1"), false}} {
		if got := hit(t, r, "prefix-approx", tc.req, ep("x")); (got > 0) != tc.want {
			t.Errorf("after a tenant-1 request to x, %s: predicted cached %d", tc.name, got)
		}
	}

	// The shared hash cache holds the unsalted chain; a salted request
	// with the same tokens does not take it.
	hc := r.NewHashCache(1 << 20)
	plain := &Request{Model: "m", Tokens: f.prompt, HashCache: hc}
	if got := hit(t, r, "kv-precise", plain, ep("base")); got != all {
		t.Fatalf("unsalted through the hash cache: %d", got)
	}
	salted := &Request{Model: "m", Tokens: f.prompt, HashCache: hc, CacheSalt: "tenant-1"}
	if got := hit(t, r, "kv-precise", salted, ep("base")); got != 0 {
		t.Errorf("salted through the hash cache: predicted cached %d on the unsalted holder, want 0", got)
	}
}
