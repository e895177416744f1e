package tokenizer

import "context"

// Tokenizer turns a request's prompt into the token ids an engine computes
// for it. Implementations: native (pkg/tokenizer/native: the model's
// Hugging Face files), engine (pkg/tokenizer/engine: the pod's own
// tokenizer over HTTP) and Estimate (this package's stand-in). Safe for
// concurrent use.
type Tokenizer interface {
	// Encode returns the ids of a completion prompt as the engine's
	// /v1/completions computes them (special tokens added: a Llama 3
	// prompt starts with <|begin_of_text|>).
	Encode(ctx context.Context, text string) ([]uint32, error)
	// ApplyChatTemplate returns the ids of a conversation rendered with the
	// model's chat template, as /v1/chat/completions computes them.
	ApplyChatTemplate(ctx context.Context, msgs []Message, addGenerationPrompt bool) ([]uint32, error)
	// ApplyChat is ApplyChatTemplate with the rest of a chat request's
	// inputs to the template (tools, chat_template_kwargs,
	// continue_final_message), as vLLM passes them.
	ApplyChat(ctx context.Context, msgs []Message, opts ChatOptions) ([]uint32, error)
	// Info says what the tokenizer is.
	Info() Info
}

// ChatOptions are a chat request's inputs to the chat template besides
// its messages. Raw JSON fields are as the client sent them (validated
// JSON); nil when absent or null.
type ChatOptions struct {
	// AddGenerationPrompt opens an assistant turn (vLLM's default: true).
	AddGenerationPrompt bool
	// ContinueFinalMessage ends the prompt inside the final message, so
	// the model continues it (exclusive with AddGenerationPrompt).
	ContinueFinalMessage bool
	// Tools is the request's tools (a JSON array).
	Tools []byte
	// Kwargs is the request's chat_template_kwargs (a JSON object), e.g.
	// {"enable_thinking": false}.
	Kwargs []byte
}

// Info describes a Tokenizer.
type Info struct {
	// Kind is "native", "engine" or "estimate".
	Kind string
	// Name says which: the tokenizer files' folder, the pod, or "estimate".
	Name string
	// Exact is whether the ids are the engine's (false for the estimate).
	Exact bool
	// VocabSize bounds valid token ids (0: unknown, as for the engine
	// before its first answer).
	VocabSize int
}

// Estimate is the stand-in tokenizer of this package (Encode and
// ApplyChatTemplate above): approximate, Llama-3-shaped, and what every
// component uses where no tokenizer files or engine mode are configured.
var Estimate Tokenizer = estimate{}

type estimate struct{}

func (estimate) Encode(_ context.Context, text string) ([]uint32, error) {
	return Encode(nil, text), nil
}

func (estimate) ApplyChatTemplate(_ context.Context, msgs []Message, addGenerationPrompt bool) ([]uint32, error) {
	return ApplyChatTemplate(nil, msgs, addGenerationPrompt), nil
}

// ApplyChat ignores what the stand-in template has no place for (tools,
// kwargs); a continued final message gets no generation prompt.
func (estimate) ApplyChat(_ context.Context, msgs []Message, opts ChatOptions) ([]uint32, error) {
	return ApplyChatTemplate(nil, msgs, opts.AddGenerationPrompt && !opts.ContinueFinalMessage), nil
}

func (estimate) Info() Info {
	return Info{Kind: "estimate", Name: "estimate", Exact: false, VocabSize: VocabSize}
}
