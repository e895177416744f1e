package vllmsim_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/kvevents"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

// TestKVTiers: a simulator with a CPU and a disk tier below a small GPU
// cache serves a prefix the GPU evicted from the tiers (cached_tokens as
// vLLM reports connector hits, the tier counters move), and publishes the
// tiers' KV events with vLLM's media: the prompt's first block stored on
// "CPU" with its tokens, and, once the CPU tier evicted it, removed from
// "CPU" and stored on "STORAGE".
func TestKVTiers(t *testing.T) {
	const blockBytes = 16 * 131072 // a 16-token block of Llama-3.1-8B
	s := startSim(t, vllmsim.Config{
		HashSeed:      42,
		NumBlocks:     80, // 1,280 tokens: one ~1,000-token prompt at a time
		CPUTierBytes:  100 * blockBytes,
		DiskTierBytes: 1000 * blockBytes,
		KVEvents:      vllmsim.KVEventsConfig{Enable: true, Publisher: "zmq", Endpoint: "tcp://*:0", Topic: "kv@127.0.0.1@demo"},
	})
	events := subscribe(t, fmt.Sprintf("tcp://127.0.0.1:%d", s.KVEventsAddr().(*net.TCPAddr).Port))
	// PUB/SUB drops what is published before the subscription reaches the
	// publisher: send short throwaway requests until events flow.
	deadline := time.Now().Add(30 * time.Second)
	for warm := 0; ; warm++ {
		completeCached(t, s, longText(20, fmt.Sprint("warm", warm)))
		select {
		case <-events:
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no KV events received")
			}
			continue
		}
		break
	}

	prompt := longText(1000, "tiers")
	tokens := vllmsim.EncodeCompletionPrompt(nil, prompt)
	vh, err := kvblock.NewVLLMHasher(16, kvblock.AlgoSHA256CBOR, "42")
	if err != nil {
		t.Fatal(err)
	}
	hashes, _ := vh.Extend(nil, nil, tokens)
	first := hashes[0]

	n, cached := completeCached(t, s, prompt)
	if cached != 0 {
		t.Fatalf("first request cached %d tokens", cached)
	}
	// Two other long prompts evict it from the GPU (80 blocks); the CPU
	// tier (100 blocks) then holds the newest ones and has moved the
	// oldest of the first prompt's blocks to disk.
	completeCached(t, s, longText(1000, "filler one"))
	completeCached(t, s, longText(1000, "filler two"))
	_, cached = completeCached(t, s, prompt)
	if want := (n - 1) / 16 * 16; cached != want {
		t.Errorf("cached tokens from the tiers %d, want %d (all whole blocks but the last token's)", cached, want)
	}
	cpu := valueOr0(t, s, "kn_llmd_sim_kv_tier_hit_tokens_total", "medium", "CPU")
	disk := valueOr0(t, s, "kn_llmd_sim_kv_tier_hit_tokens_total", "medium", "STORAGE")
	if int(cpu+disk) != cached || disk == 0 {
		t.Errorf("tier hit tokens cpu %v disk %v, want them to sum to %d with some from disk", cpu, disk, cached)
	}
	if gpuHits := valueOr0(t, s, "vllm:prefix_cache_hits_total"); gpuHits != 0 {
		t.Errorf("GPU prefix hits %v, want 0 (the prefix came from the tiers)", gpuHits)
	}

	// The events of the first block: stored on GPU and on CPU (with its
	// tokens), removed from CPU and stored on STORAGE; on each medium
	// never removed before it was stored.
	want := map[string]bool{"BlockStored GPU": true, "BlockStored CPU": true, "BlockRemoved CPU": true, "BlockStored STORAGE": true}
	var seen []string
	held := map[string]bool{}
	timeout := time.After(30 * time.Second)
	for len(want) > 0 {
		var r received
		select {
		case r = <-events:
		case <-timeout:
			t.Fatalf("events for the first block: %v; missing %v", seen, want)
		}
		for _, ev := range r.batch.Events {
			for i, h := range ev.Hashes {
				if h != first {
					continue
				}
				k := fmt.Sprintf("%s %s", ev.Kind, ev.Medium)
				seen = append(seen, k)
				delete(want, k)
				switch ev.Kind {
				case kvevents.BlockStored:
					if len(ev.TokenIDs) < (i+1)*16 || ev.TokenIDs[i*16] != tokens[0] {
						t.Errorf("%s store of the first block without its tokens", ev.Medium)
					}
					held[ev.Medium] = true
				case kvevents.BlockRemoved:
					if !held[ev.Medium] {
						t.Errorf("first block removed from %s before it was stored there (seen %v)", ev.Medium, seen)
					}
					held[ev.Medium] = false
				}
			}
		}
	}
}
