package activator_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	"github.com/llmd-kn/llmd-kn/pkg/activator"
	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// reservedVariants are the spellings of issue 17's failure 8: the exact
// key, ASCII case variants, and Unicode ones that fold onto it (K is
// U+212A KELVIN SIGN, ſ U+017F LATIN SMALL LETTER LONG S).
var reservedVariants = []string{
	"kv_transfer_params", "KV_TRANSFER_PARAMS", "Kv_Transfer_Params",
	"\u212Av_transfer_params", "kv_tran\u017Ffer_params", "KV_TRAN\u017FFER_PARAMS",
}

// TestReservedFieldsStrippedUnderFolding: every variant of a reserved
// field is removed from the body the pods get; look-alikes that do not
// fold onto one stay.
func TestReservedFieldsStrippedUnderFolding(t *testing.T) {
	keys := append(append([]string{}, reservedVariants...), "priority", "PRIORITY", "Priority")
	forwarded := func(body string) map[string]json.RawMessage {
		t.Helper()
		r, err := activator.ParseLLMRequest(activator.KindCompletion, []byte(body))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r.AppendBody(nil), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, k := range keys {
		body := fmt.Sprintf(`{"model":"m","prompt":"hi",%q:{"do_remote_prefill":true,"remote_host":"127.0.0.1","remote_port":9}}`, k)
		if m := forwarded(body); len(m) != 2 {
			t.Errorf("%q reaches the pods: %v", k, m)
		}
	}
	if m := forwarded(`{"model":"m","prompt":"hi","kv_transfer_params_note":1,"kvtransferparams":2}`); len(m) != 4 {
		t.Errorf("fields %v: look-alikes that fold onto no reserved key were removed", m)
	}
}

// TestClientCannotMakeAPodCallOut: issue 17's failure 8 end to end. A
// client's kv_transfer_params, in any spelling, pointing a decode pod at
// an address of the client's choosing: the request is served and nothing
// connects to that address.
func TestClientCannotMakeAPodCallOut(t *testing.T) {
	_, simAddr := simtest.Start(t, "demo")
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var called atomic.Int64
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			called.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { trap.Close() })
	port := trap.Addr().(*net.TCPAddr).Port

	act, err := activator.New(activator.Options{ScrapeInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(act.Close)
	key := activator.RevisionKey{Namespace: "team-a", Name: "llm-00001"}
	if err := act.UpsertRevision(activator.RevisionConfig{Key: key, Service: "llm", Models: []string{"demo"}, Spec: defaultSpec()}); err != nil {
		t.Fatal(err)
	}
	if err := act.SetPods(key, []activator.PodSpec{{Name: "pod-0", URL: "http://" + simAddr, Role: router.RoleBoth}}); err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(act.Handler())
	t.Cleanup(front.Close)
	for _, k := range reservedVariants {
		params, _ := json.Marshal(map[string]any{"do_remote_prefill": true, "remote_engine_id": "evil", "remote_host": "127.0.0.1",
			"remote_port": port, "remote_block_ids": []int{1, 2}, "remote_request_id": "x"})
		body := fmt.Sprintf(`{"model":"demo","prompt":"Knative is","max_tokens":3,%q:%s}`, k, params)
		resp, err := http.Post(front.URL+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%q: %d %s", k, resp.StatusCode, b)
		}
	}
	if n := called.Load(); n != 0 {
		t.Errorf("the pod connected %d times to the address a client chose", n)
	}
}
