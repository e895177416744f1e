package activator

import (
	"context"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
	"github.com/llmd-kn/llmd-kn/pkg/tokenizer/native"
)

// tokenizerFor returns the revision's tokenizer (llm-d.ai/tokenizer): the
// model's Hugging Face files when configured and found, else the estimate.
// A native tokenizer that cannot be had falls back to the estimate with a
// warning, once per folder: routing stays approximate rather than failing
// requests.
func (a *Activator) tokenizerFor(spec *apis.Spec) tokenizer.Tokenizer {
	if spec.Tokenizer == apis.TokenizerEstimate {
		return tokenizer.Estimate
	}
	dir := spec.TokenizerDir
	if dir == "" {
		var ok bool
		if dir, ok = native.FindModel(a.opts.TokenizerDir, spec.Model); !ok {
			if spec.Tokenizer == apis.TokenizerNative {
				a.warnTokenizer("model:"+spec.Model, "no tokenizer files for the model in the activator's tokenizer folder; using the estimate",
					"model", spec.Model, "tokenizerDir", a.opts.TokenizerDir)
			}
			return tokenizer.Estimate
		}
	}
	tk, err := a.tokenizers.Get(dir)
	if err != nil {
		a.warnTokenizer("dir:"+dir, "tokenizer files unusable; using the estimate", "dir", dir, "err", err)
		return tokenizer.Estimate
	}
	return tk
}

func (a *Activator) warnTokenizer(key, msg string, args ...any) {
	if _, seen := a.tokWarned.LoadOrStore(key, true); !seen {
		a.opts.Logger.Warn(msg, args...)
	}
}

// tokenize replaces the estimate ParseLLMRequest computed with the
// revision's tokenizer's ids, and checks token-id prompts against its
// vocabulary.
func (a *Activator) tokenize(ctx context.Context, c *call) error {
	return c.req.Retokenize(ctx, a.tokenizerFor(&c.rev.config().Spec))
}
