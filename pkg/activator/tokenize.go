package activator

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/kvstore"
	"github.com/llmd-kn/llmd-kn/pkg/router"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/engine"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/native"
)

// tokenizerFor returns the revision's tokenizer (llm-d.ai/tokenizer): the
// model's Hugging Face files when configured and found, the engine's own
// when asked, else the estimate. A native tokenizer that cannot be had
// falls back to the estimate with a warning, once per folder: routing
// stays approximate rather than failing requests.
func (a *Activator) tokenizerFor(rev *revision) tokenizer.Tokenizer {
	spec := &rev.config().Spec
	switch spec.Tokenizer {
	case apis.TokenizerEstimate:
		return tokenizer.Estimate
	case apis.TokenizerEngine:
		if tk, ok := a.engineToks.Load(rev); ok {
			return tk.(*engine.Tokenizer)
		}
		tk, _ := a.engineToks.LoadOrStore(rev, engine.New(rev.readyPodURL, engine.Options{Model: spec.Model}))
		return tk.(*engine.Tokenizer)
	}
	dir, ok := a.nativeDir(spec)
	if !ok {
		return tokenizer.Estimate
	}
	tk, err := a.nativeTokenizer(dir)
	if err != nil {
		a.warnTokenizer("dir:"+dir, "tokenizer files unusable; using the estimate", "dir", dir, "err", err)
		return tokenizer.Estimate
	}
	return tk
}

// nativeDir returns the folder of the revision's native tokenizer files,
// if it has one (warning once when native was asked for and none exists).
func (a *Activator) nativeDir(spec *apis.Spec) (string, bool) {
	if spec.TokenizerDir != "" {
		return spec.TokenizerDir, true
	}
	// Looked up once per model (the folder is read at the first request
	// or revision that names the model; files added later need a restart).
	type found struct {
		dir string
		ok  bool
	}
	v, seen := a.tokFound.Load(spec.Model)
	if !seen {
		dir, ok := native.FindModel(a.opts.TokenizerDir, spec.Model)
		v, _ = a.tokFound.LoadOrStore(spec.Model, found{dir, ok})
	}
	dir, ok := v.(found).dir, v.(found).ok
	if !ok && spec.Tokenizer == apis.TokenizerNative {
		a.warnTokenizer("model:"+spec.Model, "no tokenizer files for the model in the activator's tokenizer folder; using the estimate",
			"model", spec.Model, "tokenizerDir", a.opts.TokenizerDir)
	}
	return dir, ok
}

// preloadTokenizer starts loading a revision's native tokenizer in the
// background (a second or more for a large tokenizer.json), so that its
// first request does not wait for it, and logs which tokenizer the
// revision uses: the estimate is named as approximate.
func (a *Activator) preloadTokenizer(key RevisionKey, spec *apis.Spec) {
	log := a.opts.Logger.With("revision", key.String(), "model", spec.Model)
	switch spec.Tokenizer {
	case apis.TokenizerEstimate:
		log.Info("tokenizer: estimate (approximate token ids)")
		return
	case apis.TokenizerEngine:
		log.Info("tokenizer: engine (the pods' own, over HTTP)")
		return
	}
	dir, ok := a.nativeDir(spec)
	if !ok {
		log.Info("tokenizer: estimate (approximate token ids): no tokenizer files for the model", "tokenizerDir", a.opts.TokenizerDir)
		return
	}
	go func() {
		tk, err := a.nativeTokenizer(dir)
		if err != nil {
			log.Warn("tokenizer: estimate (approximate token ids): tokenizer files unusable", "dir", dir, "err", err)
			return
		}
		log.Info("tokenizer: native", "dir", dir, "vocabSize", tk.VocabSize())
	}()
}

// nativeTokenizer returns the tokenizer whose files are in dir: a folder,
// or an object-storage folder (s3://bucket/prefix, gs://, azblob://,
// file:///dir) read once, each file bounded in size, and validated by
// parsing it like a folder's.
func (a *Activator) nativeTokenizer(dir string) (*native.Tokenizer, error) {
	if !strings.Contains(dir, "://") {
		return a.tokenizers.Get(dir)
	}
	return a.tokenizers.GetFunc(dir, func(opts native.Options) (*native.Tokenizer, error) {
		bucket, prefix, err := splitTokenizerURL(dir)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		st, err := kvstore.Open(ctx, bucket, kvstore.Options{MaxObjectBytes: maxTokenizerFileBytes})
		if err != nil {
			return nil, err
		}
		defer st.Close()
		read := func(file string) ([]byte, error) {
			b, err := st.GetRaw(ctx, path.Join(prefix, file))
			if errors.Is(err, kvstore.ErrNotFound) {
				return nil, fmt.Errorf("%w: %s", native.ErrNoFile, file)
			}
			return b, err
		}
		return native.LoadFiles(read, dir, opts)
	})
}

// maxTokenizerFileBytes bounds one tokenizer file read from object storage
// (Llama 3's tokenizer.json is 9 MB, Qwen 3's 11 MB).
const maxTokenizerFileBytes = 64 << 20

// splitTokenizerURL splits an object-storage folder into the bucket URL
// and the key prefix: s3://bucket/models/x?region=r is s3://bucket?region=r
// and models/x; file:///models/x is the folder itself.
func splitTokenizerURL(s string) (bucket, prefix string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("tokenizer %s: %w", s, err)
	}
	if u.Scheme == "file" {
		return s, "", nil
	}
	prefix = strings.Trim(u.Path, "/")
	u.Path = ""
	return u.String(), prefix, nil
}

func (a *Activator) warnTokenizer(key, msg string, args ...any) {
	if _, seen := a.tokWarned.LoadOrStore(key, true); !seen {
		a.opts.Logger.Warn(msg, args...)
	}
}

// tokenize sets the request's ids with the revision's tokenizer, and
// checks token-id prompts against its vocabulary. When the engine cannot
// answer (no ready pod yet, a timeout, an error: the engine will say the
// same to the client), the request is tokenized with the estimate.
func (a *Activator) tokenize(ctx context.Context, c *call) error {
	tk := a.tokenizerFor(c.rev)
	kind := tk.Info().Kind
	st := &c.rev.tok
	start := a.opts.Now()
	err := c.req.Retokenize(ctx, tk)
	st.observe(kind, a.opts.Now().Sub(start), err)
	if err != nil && kind == "engine" {
		reason := "engine_error"
		if _, ok := c.rev.readyPodURL(); !ok {
			reason = "no_engine"
		}
		st.fallback(reason)
		a.warnTokenizer("engine:"+c.rev.key.String(), "the engine could not tokenize; using the estimate for this revision's requests it cannot answer",
			"revision", c.rev.key.String(), "err", err)
		return c.req.Retokenize(ctx, tokenizer.Estimate)
	}
	if kind == "estimate" && c.rev.config().Spec.Tokenizer == apis.TokenizerNative {
		st.fallback("native_unavailable")
	}
	return err
}

// tokKinds are the tokenizer kinds, in the order tokStats keeps them.
var tokKinds = [...]string{"native", "engine", "estimate"}

// tokBuckets are the tokenization latency buckets, in seconds: a warm
// native chat takes microseconds, an engine call milliseconds.
var tokBuckets = []float64{1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2}

// tokStats are a revision's tokenization figures: per kind, calls and
// their latency (a histogram) and errors; fallbacks to the estimate by
// reason; the kind last used.
type tokStats struct {
	mu        sync.Mutex
	last      string
	kinds     [len(tokKinds)]tokKindStats
	fallbacks map[string]uint64
}

type tokKindStats struct {
	count, errors uint64
	sum           float64
	buckets       []uint64 // cumulative counts are computed at scrape time
}

func (s *tokStats) observe(kind string, d time.Duration, err error) {
	i := slices.Index(tokKinds[:], kind)
	if i < 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = kind
	k := &s.kinds[i]
	if k.buckets == nil {
		k.buckets = make([]uint64, len(tokBuckets))
	}
	k.count++
	k.sum += d.Seconds()
	if j, _ := slices.BinarySearch(tokBuckets, d.Seconds()); j < len(tokBuckets) {
		k.buckets[j]++
	}
	if err != nil {
		k.errors++
	}
}

func (s *tokStats) fallback(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fallbacks == nil {
		s.fallbacks = map[string]uint64{}
	}
	s.fallbacks[reason]++
}

// tokCollector exports every revision's tokenization figures at scrape
// time, so that nothing lingers for revisions that are gone.
type tokCollector struct{ a *Activator }

var (
	tokKindDesc = prometheus.NewDesc("llmd_activator_tokenizer",
		"The tokenizer a revision's requests were last tokenized with (1): native (the model's files, exact), engine (the pods' own, exact) or estimate (approximate ids).",
		[]string{"revision", "kind"}, nil)
	tokSecondsDesc = prometheus.NewDesc("llmd_activator_tokenize_seconds",
		"Time to tokenize a request's prompt (chat template included), by tokenizer kind.", []string{"revision", "kind"}, nil)
	tokErrorsDesc = prometheus.NewDesc("llmd_activator_tokenize_errors_total",
		"Prompts a tokenizer could not tokenize (for the engine kind: the engine did not answer, or answered an error).", []string{"revision", "kind"}, nil)
	tokFallbackDesc = prometheus.NewDesc("llmd_activator_tokenizer_fallbacks_total",
		"Requests tokenized with the estimate instead of the revision's tokenizer, by reason: engine_error, no_engine (no ready pod to ask), native_unavailable (llm-d.ai/tokenizer native without usable files).",
		[]string{"revision", "reason"}, nil)
)

func (tokCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tokKindDesc, tokSecondsDesc, tokErrorsDesc, tokFallbackDesc} {
		ch <- d
	}
}

func (c tokCollector) Collect(ch chan<- prometheus.Metric) {
	c.a.mu.RLock()
	revs := make([]*revision, 0, len(c.a.revs))
	for _, rev := range c.a.revs {
		revs = append(revs, rev)
	}
	c.a.mu.RUnlock()
	for _, rev := range revs {
		name := rev.key.String()
		st := &rev.tok
		st.mu.Lock()
		if st.last != "" {
			ch <- prometheus.MustNewConstMetric(tokKindDesc, prometheus.GaugeValue, 1, name, st.last)
		}
		for i, k := range st.kinds {
			if k.count == 0 {
				continue
			}
			cum := make(map[float64]uint64, len(tokBuckets))
			var n uint64
			for j, b := range tokBuckets {
				n += k.buckets[j]
				cum[b] = n
			}
			ch <- prometheus.MustNewConstHistogram(tokSecondsDesc, k.count, k.sum, cum, name, tokKinds[i])
			ch <- prometheus.MustNewConstMetric(tokErrorsDesc, prometheus.CounterValue, float64(k.errors), name, tokKinds[i])
		}
		for reason, n := range st.fallbacks {
			ch <- prometheus.MustNewConstMetric(tokFallbackDesc, prometheus.CounterValue, float64(n), name, reason)
		}
		st.mu.Unlock()
	}
}

// readyPodURL returns the base URL of a ready decode-capable pod, rotating
// among them, for the engine tokenizer.
func (rev *revision) readyPodURL() (string, bool) {
	rev.mu.RLock()
	defer rev.mu.RUnlock()
	n := len(rev.list)
	start := int(rev.tokNext.Add(1))
	for i := 0; i < n; i++ {
		p := rev.list[(start+i)%n]
		if p.spec.Role == router.RolePrefill {
			continue
		}
		p.mu.Lock()
		ready := p.healthy && !p.down
		p.mu.Unlock()
		if ready {
			return p.spec.URL, true
		}
	}
	return "", false
}
