package activator

import (
	"context"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
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
	tk, err := a.tokenizers.Get(dir)
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
		tk, err := a.tokenizers.Get(dir)
		if err != nil {
			log.Warn("tokenizer: estimate (approximate token ids): tokenizer files unusable", "dir", dir, "err", err)
			return
		}
		log.Info("tokenizer: native", "dir", dir, "vocabSize", tk.VocabSize())
	}()
}

func (a *Activator) warnTokenizer(key, msg string, args ...any) {
	if _, seen := a.tokWarned.LoadOrStore(key, true); !seen {
		a.opts.Logger.Warn(msg, args...)
	}
}

// tokenize replaces the estimate ParseLLMRequest computed with the
// revision's tokenizer's ids, and checks token-id prompts against its
// vocabulary. When the engine cannot answer (no ready pod yet, a timeout,
// an error: the engine will say the same to the client), the estimate
// stays.
func (a *Activator) tokenize(ctx context.Context, c *call) error {
	tk := a.tokenizerFor(c.rev)
	err := c.req.Retokenize(ctx, tk)
	if err != nil && tk.Info().Kind == "engine" {
		a.warnTokenizer("engine:"+c.rev.key.String(), "the engine could not tokenize; using the estimate for this revision's requests it cannot answer",
			"revision", c.rev.key.String(), "err", err)
		return c.req.Retokenize(ctx, tokenizer.Estimate)
	}
	return err
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
