package vllmsim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
	"github.com/llmd-kn/llmd-kn/pkg/kvevents"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

type received struct {
	topic string
	seq   uint64
	batch kvevents.Batch
}

// subscribe connects a ZMQ SUB socket to addr and decodes what arrives.
func subscribe(t *testing.T, addr string) <-chan received {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub := zmq4.NewSub(ctx)
	if err := sub.Dial(addr); err != nil {
		t.Fatal(err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, "kv@"); err != nil {
		t.Fatal(err)
	}
	out := make(chan received, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := sub.Recv()
			if err != nil {
				return
			}
			topic, seq, payload, err := kvevents.ParseMessage(msg.Frames)
			if err != nil {
				t.Errorf("message: %v", err)
				return
			}
			b, err := kvevents.DecodeBatch(payload)
			if err != nil {
				t.Errorf("payload: %v", err)
				return
			}
			select {
			case out <- received{topic, seq, b}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = sub.Close()
		<-done
	})
	return out
}

func TestKVEventsOverZMQ(t *testing.T) {
	const topic = "kv@10.0.0.7@demo"
	s := startSim(t, vllmsim.Config{
		HashSeed: 42,
		KVEvents: vllmsim.KVEventsConfig{Enable: true, Publisher: "zmq", Endpoint: "tcp://*:0", Topic: topic},
	})
	port := s.KVEventsAddr().(*net.TCPAddr).Port
	events := subscribe(t, fmt.Sprintf("tcp://127.0.0.1:%d", port))

	// PUB/SUB drops what is published before the subscription reaches the
	// publisher: send throwaway requests until events flow.
	deadline := time.Now().Add(30 * time.Second)
	for warm := 0; ; warm++ {
		if code, b := post(t, s.url+"/v1/completions", fmt.Sprintf(`{"prompt":%q,"max_tokens":1}`, longText(40, fmt.Sprint("warm", warm)))); code != 200 {
			t.Fatalf("%d %s", code, b)
		}
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

	prompt := longText(100, "kv events")
	if code, b := post(t, s.url+"/v1/completions", fmt.Sprintf(`{"prompt":%q,"max_tokens":4}`, prompt)); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	tokens := vllmsim.EncodeCompletionPrompt(nil, prompt)
	// vLLM's hashes: sha256_cbor chained from NONE_HASH = sha256_cbor("42")
	// (PYTHONHASHSEED=42), published as the digests' last 8 bytes.
	vh, err := kvblock.NewVLLMHasher(16, kvblock.AlgoSHA256CBOR, "42")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := vh.Extend(nil, nil, tokens)
	if kvblock.MustHasher(16, 42).Hashes(nil, tokens)[0] == want[0] {
		t.Fatal("the simulator's hashes are the router's")
	}

	var lastSeq uint64
	haveSeq := false
	for {
		var r received
		select {
		case r = <-events:
		case <-time.After(30 * time.Second):
			t.Fatal("BlockStored for the prompt never arrived")
		}
		if r.topic != topic {
			t.Fatalf("topic %q, want %q", r.topic, topic)
		}
		if haveSeq && r.seq <= lastSeq {
			t.Fatalf("sequence %d after %d", r.seq, lastSeq)
		}
		lastSeq, haveSeq = r.seq, true
		if !r.batch.HasDPRank || r.batch.DPRank != 0 || r.batch.TS < float64(time.Now().Add(-time.Minute).Unix()) {
			t.Fatalf("batch header %+v", r.batch)
		}
		for _, ev := range r.batch.Events {
			if ev.Kind != kvevents.BlockStored || len(ev.Hashes) == 0 || ev.Hashes[0] != want[0] {
				continue
			}
			// The stored hashes are exactly vLLM's for the prompt's token
			// ids, and the tokens come with them.
			if ev.HasParent || !slices.Equal(ev.Hashes, want) || ev.BlockSize != 16 || ev.Medium != "GPU" {
				t.Fatalf("BlockStored %+v, want hashes %v", ev, want)
			}
			if !slices.Equal(ev.TokenIDs, tokens[:len(want)*16]) {
				t.Fatalf("token ids differ from the prompt's")
			}
			return
		}
	}
}

func TestPrefillDecodeRoundTrip(t *testing.T) {
	prefill := startSim(t, vllmsim.Config{Role: engine.RolePrefill, EngineID: "prefill-0"})
	decode := startSim(t, vllmsim.Config{Role: engine.RoleDecode})
	prompt := longText(500, "disaggregated")
	promptTokens := len(vllmsim.EncodeCompletionPrompt(nil, prompt))

	// Step 1, as llm-d's sidecar does: the prefill engine computes the
	// prompt and one token, and answers where to pull the blocks from.
	code, b := post(t, prefill.url+"/v1/completions", fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":1,"stream":false,
		"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}}`, prompt))
	if code != 200 {
		t.Fatalf("prefill: %d %s", code, b)
	}
	var pre struct {
		Choices []struct {
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		}
		KVTransferParams json.RawMessage `json:"kv_transfer_params"`
	}
	if err := json.Unmarshal(b, &pre); err != nil {
		t.Fatal(err)
	}
	var kv struct {
		DoRemotePrefill bool   `json:"do_remote_prefill"`
		DoRemoteDecode  bool   `json:"do_remote_decode"`
		RemoteBlockIDs  []int  `json:"remote_block_ids"`
		RemoteEngineID  string `json:"remote_engine_id"`
		RemoteHost      string `json:"remote_host"`
		RemotePort      int    `json:"remote_port"`
		RemoteRequestID string `json:"remote_request_id"`
		TPSize          int    `json:"tp_size"`
	}
	if err := json.Unmarshal(pre.KVTransferParams, &kv); err != nil {
		t.Fatalf("kv_transfer_params %s: %v", pre.KVTransferParams, err)
	}
	if pre.Choices[0].FinishReason != "length" || pre.Usage.CompletionTokens != 1 {
		t.Errorf("prefill answer %s", b)
	}
	if !kv.DoRemotePrefill || kv.DoRemoteDecode || kv.RemoteEngineID != "prefill-0" || kv.RemoteHost != "127.0.0.1" ||
		kv.RemotePort != prefill.port || !strings.HasPrefix(kv.RemoteRequestID, "cmpl-") || kv.TPSize != 1 ||
		len(kv.RemoteBlockIDs) != (promptTokens+15)/16 {
		t.Fatalf("kv_transfer_params %s (prompt %d tokens)", pre.KVTransferParams, promptTokens)
	}
	if st := prefill.Stats(); st.Held != 1 || st.KVUsage == 0 {
		t.Fatalf("prefill engine does not hold the blocks: %+v", st)
	}

	// Step 2: the decode engine pulls the KV and streams the tokens.
	resp, body := post(t, decode.url+"/v1/completions", fmt.Sprintf(`{"model":"demo","prompt":%q,"max_tokens":16,"ignore_eos":true,
		"stream":true,"stream_options":{"include_usage":true},"kv_transfer_params":%s}`, prompt, pre.KVTransferParams))
	if resp != 200 {
		t.Fatalf("decode: %d %s", resp, body)
	}
	var content, usage int
	var cached int
	for _, line := range strings.Split(string(body), "\n") {
		line, ok := strings.CutPrefix(line, "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var ch struct {
			Choices []struct{ Text string }
			Usage   *struct {
				CompletionTokens    int `json:"completion_tokens"`
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			}
		}
		if err := json.Unmarshal([]byte(line), &ch); err != nil {
			t.Fatal(err)
		}
		if len(ch.Choices) > 0 {
			content++
		} else if ch.Usage != nil {
			usage = ch.Usage.CompletionTokens
			cached = ch.Usage.PromptTokensDetails.CachedTokens
		}
	}
	if content != 16 || usage != 16 {
		t.Fatalf("decode streamed %d chunks, usage %d", content, usage)
	}
	// Cached tokens include what the prefill engine computed: all but the
	// last prompt token, as vLLM's NIXL connector reports.
	if cached != promptTokens-1 {
		t.Errorf("decode cached tokens %d, want %d", cached, promptTokens-1)
	}
	if st := decode.Stats(); st.ExternalTokens != int64(promptTokens-1) {
		t.Errorf("decode engine pulled %d tokens, want %d", st.ExternalTokens, promptTokens-1)
	}

	// Step 3: the decode engine told the prefill engine to free the blocks.
	eventually(t, "prefill blocks released", func() bool {
		st := prefill.Stats()
		return st.Held == 0 && st.KVUsage == 0
	})
	eventually(t, "prefill KV usage metric back to 0", func() bool {
		return value(t, scrape(t, prefill.url), "vllm:kv_cache_usage_perc") == 0
	})
	if v := value(t, scrape(t, decode.url), "kn_llmd_sim_kv_release_failures_total"); v != 0 {
		t.Errorf("%v release failures", v)
	}

	// Roles are enforced.
	if code, b := post(t, decode.url+"/v1/completions", `{"prompt":"x","kv_transfer_params":{"do_remote_decode":true}}`); code != 400 {
		t.Errorf("remote-decode request on a decode engine: %d %s", code, b)
	}
	if code, b := post(t, prefill.url+"/v1/completions", `{"prompt":"x","kv_transfer_params":{"do_remote_prefill":true}}`); code != 400 {
		t.Errorf("remote-prefill request on a prefill engine: %d %s", code, b)
	}
}

func TestHeldBlocksExpire(t *testing.T) {
	// Nobody pulls: the blocks go at the held timeout (25 s simulated,
	// 500 ms at the test time scale). A check that comes after it (a busy
	// machine) cannot see them held; it must not see them gone before.
	const timeout = 500 * time.Millisecond
	s := startSim(t, vllmsim.Config{Role: engine.RolePrefill, HeldTimeout: 25 * time.Second})
	sent := time.Now()
	code, b := post(t, s.url+"/v1/completions", `{"prompt":"`+longText(50, "held")+`","max_tokens":1,"kv_transfer_params":{"do_remote_decode":true}}`)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	if st := s.Stats(); st.Held != 1 {
		if since := time.Since(sent); since < timeout {
			t.Fatalf("not held %v after the request: %+v", since, st)
		}
		t.Logf("held state checked after the timeout: %+v", st)
	}
	eventually(t, "held blocks expire", func() bool { st := s.Stats(); return st.Held == 0 && st.KVUsage == 0 })
}
