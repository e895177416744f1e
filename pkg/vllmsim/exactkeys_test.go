package vllmsim

import (
	"fmt"
	"reflect"
	"testing"
)

// TestDecodeMatchesKeysExactly: issue 17's failure 8 in the simulator. As
// vLLM (pydantic) does, only the exact key is a field: case and Unicode
// folding variants of kv_transfer_params, priority, max_tokens and of
// nested keys are unknown extras, ignored, where Go's encoding/json would
// have taken them.
func TestDecodeMatchesKeysExactly(t *testing.T) {
	kv := `{"do_remote_prefill":true,"remote_engine_id":"e","remote_host":"203.0.113.9","remote_port":80,"remote_block_ids":[1]}`
	for _, k := range []string{"KV_TRANSFER_PARAMS", "Kv_Transfer_Params", "\u212Av_transfer_params", "kv_tran\u017Ffer_params"} {
		r, err := DecodeCompletionRequest(fmt.Appendf(nil, `{"prompt":"x",%q:%s,"Priority":3,"MAX_TOKENS":9}`, k, kv))
		if err != nil {
			t.Fatalf("%q: %v", k, err)
		}
		if want := (Request{PromptText: "x", PromptIsText: true}); !reflect.DeepEqual(*r, want) {
			t.Errorf("%q: decoded %+v, want the variants ignored", k, *r)
		}
		c, err := DecodeChatRequest(fmt.Appendf(nil, `{"messages":[{"role":"user","content":"hi","ROLE":"system"}],%q:%s}`, k, kv))
		if err != nil {
			t.Fatalf("chat %q: %v", k, err)
		}
		if c.KVTransfer != nil || c.Messages[0].Role != "user" {
			t.Errorf("chat %q: kv %+v, role %q", k, c.KVTransfer, c.Messages[0].Role)
		}
	}
	// Nested keys too; the exact ones still work beside the variants.
	r, err := DecodeCompletionRequest([]byte(`{"prompt":"x","stream":true,"stream_options":{"Include_Usage":true},
		"kv_transfer_params":{"do_remote_decode":true,"REMOTE_HOST":"203.0.113.9","remote_\u212Angine_id":"z"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.IncludeUsage || r.KVTransfer == nil || !r.KVTransfer.DoRemoteDecode || r.KVTransfer.RemoteHost != "" {
		t.Errorf("nested variants: include_usage %v, kv %+v; want only do_remote_decode", r.IncludeUsage, r.KVTransfer)
	}
}

// TestExactKeysLeavesCleanBodiesAlone: without a variant the body is not
// rewritten (no cost beyond one scan of the objects' keys).
func TestExactKeysLeavesCleanBodiesAlone(t *testing.T) {
	body := []byte(`{"prompt":"Hello World","messages":[{"role":"user","content":"X"}],"kv_transfer_params":{"remote_host":"h"}}`)
	if got := exactKeys(body, reflect.TypeOf(rawChat{})); &got[0] != &body[0] {
		t.Error("a clean body was rewritten")
	}
}
