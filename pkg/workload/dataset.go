package workload

import "math"

// Dataset says what each request of a workload asks for: its prompt and its
// output length, and for traces when it arrives. Datasets are random-access
// and immutable, hence safe for concurrent use: request i is a pure function
// of i, the configuration and the seed.
type Dataset interface {
	// Len returns the number of requests, or -1 when the dataset is endless.
	Len() int
	// Request returns request i (0 ≤ i, and i < Len() when bounded), with
	// Index i. Its At is the trace timestamp when Timed, else 0.
	Request(i int) Request
	// Timed reports whether requests carry arrival times of their own.
	Timed() bool
}

// Seed domains: each stream of random numbers has its own, so that, for
// example, changing an output length does not change any prompt.
const (
	sharedSystemDomain   = 0x73702d73797374 // "sp-syst"
	sharedQuestionDomain = 0x73702d71756573 // "sp-ques"
	sharedOrderDomain    = 0x73702d6f726465 // "sp-orde"
	repPrefixDomain      = 0x72702d70726566 // "rp-pref"
	repSuffixDomain      = 0x72702d73756666 // "rp-suff"
	repOrderDomain       = 0x72702d6f726465 // "rp-orde"
	randomPrefixDomain   = 0x726e2d70726566 // "rn-pref"
	randomInnerDomain    = 0x726e2d696e6e65 // "rn-inne"
	randomLengthDomain   = 0x726e2d6c656e67 // "rn-leng"
)

// maxPrompts bounds the distinct prompts of a generator, whose order is a
// permutation held in memory.
const maxPrompts = 1 << 24

// SharedPrefixConfig configures llm-d's shared-prefix workload, as
// inference-perf's `shared_prefix` data generator makes it: Groups groups of
// PromptsPerGroup prompts; every prompt of a group starts with the group's
// own SystemPromptLen-token system prompt and ends with its own
// QuestionLen-token question; every request asks for OutputLen tokens.
// Zero fields take the values of llm-d's published benchmark (see
// LLMDSharedPrefix).
type SharedPrefixConfig struct {
	Groups          int `json:"groups,omitempty"`
	PromptsPerGroup int `json:"promptsPerGroup,omitempty"`
	SystemPromptLen int `json:"systemPromptLen,omitempty"`
	QuestionLen     int `json:"questionLen,omitempty"`
	OutputLen       int `json:"outputLen,omitempty"`
	// Order is how requests take prompts. "shuffle" (the default) is
	// inference-perf's: all Groups × PromptsPerGroup prompts are shuffled
	// once and requests take them in that order, cycling, so every prompt
	// recurs once per cycle. "random": each request takes a prompt chosen
	// uniformly and independently.
	Order string `json:"order,omitempty"`
}

// LLMDSharedPrefix returns the shared-prefix workload of llm-d's "KV-cache
// wins you can see" benchmark: 150 groups × 5 prompts, a 6,000-token system
// prompt per group, a 1,200-token question per prompt, 1,000 output tokens.
// Its arrivals are LLMDLadder.
func LLMDSharedPrefix() SharedPrefixConfig {
	return SharedPrefixConfig{Groups: 150, PromptsPerGroup: 5, SystemPromptLen: 6000, QuestionLen: 1200, OutputLen: 1000, Order: "shuffle"}
}

func (c SharedPrefixConfig) withDefaults() SharedPrefixConfig {
	d := LLMDSharedPrefix()
	setDefault(&c.Groups, d.Groups)
	setDefault(&c.PromptsPerGroup, d.PromptsPerGroup)
	setDefault(&c.SystemPromptLen, d.SystemPromptLen)
	setDefault(&c.QuestionLen, d.QuestionLen)
	setDefault(&c.OutputLen, d.OutputLen)
	if c.Order == "" {
		c.Order = d.Order
	}
	return c
}

func (c SharedPrefixConfig) validate(v *validator, path string) {
	c = c.withDefaults()
	v.check(c.Groups > 0, path+"groups", "must be positive, got %d", c.Groups)
	v.check(c.PromptsPerGroup > 0, path+"promptsPerGroup", "must be positive, got %d", c.PromptsPerGroup)
	if c.Groups > 0 && c.PromptsPerGroup > 0 {
		v.check(c.Groups <= maxPrompts/c.PromptsPerGroup, path+"groups", "groups × promptsPerGroup must be at most %d", maxPrompts)
	}
	v.check(c.SystemPromptLen > 0 && c.SystemPromptLen <= maxLength, path+"systemPromptLen", "must be in [1, %d], got %d", maxLength, c.SystemPromptLen)
	v.check(c.QuestionLen > 0 && c.QuestionLen <= maxLength, path+"questionLen", "must be in [1, %d], got %d", maxLength, c.QuestionLen)
	v.check(c.OutputLen > 0 && c.OutputLen <= maxLength, path+"outputLen", "must be in [1, %d], got %d", maxLength, c.OutputLen)
	v.check(c.Order == "shuffle" || c.Order == "random", path+"order", `must be "shuffle" or "random", got %q`, c.Order)
}

// NewSharedPrefix returns the shared-prefix dataset. It is endless: requests
// keep cycling through (or drawing from) the prompts; the arrival process or
// a limit ends the workload.
func NewSharedPrefix(cfg SharedPrefixConfig, seed uint64) (Dataset, error) {
	var v validator
	cfg.validate(&v, "")
	if err := v.err(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	d := &sharedPrefix{cfg: cfg, seed: seed}
	if cfg.Order == "shuffle" {
		d.order = newRNG(derive(seed, sharedOrderDomain, 0)).perm(cfg.Groups * cfg.PromptsPerGroup)
	}
	return d, nil
}

type sharedPrefix struct {
	cfg   SharedPrefixConfig
	seed  uint64
	order []int32 // nil for Order "random"
}

func (d *sharedPrefix) Len() int    { return -1 }
func (d *sharedPrefix) Timed() bool { return false }

func (d *sharedPrefix) Request(i int) Request {
	c := &d.cfg
	var item int
	if d.order != nil {
		item = int(d.order[i%len(d.order)])
	} else {
		item = newRNG(derive(d.seed, sharedOrderDomain, uint64(i))).intn(c.Groups * c.PromptsPerGroup)
	}
	g := item / c.PromptsPerGroup
	r := Request{
		Index:     i,
		PromptLen: c.SystemPromptLen + c.QuestionLen,
		MaxTokens: c.OutputLen,
		Group:     g,
		Item:      item,
	}
	r.prompt.segs = [2]segment{
		{seed: derive(d.seed, sharedSystemDomain, uint64(g)), n: c.SystemPromptLen},
		{seed: derive(d.seed, sharedQuestionDomain, uint64(item)), n: c.QuestionLen},
	}
	return r
}

// PrefixRepetitionConfig configures vLLM's `prefix_repetition` dataset
// (`vllm bench serve --dataset-name prefix_repetition`): NumPrefixes random
// prefixes of PrefixLen tokens, each followed by NumPrompts / NumPrefixes
// (rounded down, as vLLM does) different random suffixes of SuffixLen tokens,
// all shuffled once. Zero fields take vLLM's defaults: 1,000 prompts, 10
// prefixes of 256 tokens, 256-token suffixes, 128 output tokens.
type PrefixRepetitionConfig struct {
	NumPrompts  int `json:"numPrompts,omitempty"`
	NumPrefixes int `json:"numPrefixes,omitempty"`
	PrefixLen   int `json:"prefixLen,omitempty"`
	SuffixLen   int `json:"suffixLen,omitempty"`
	OutputLen   int `json:"outputLen,omitempty"`
}

func (c PrefixRepetitionConfig) withDefaults() PrefixRepetitionConfig {
	setDefault(&c.NumPrompts, 1000)
	setDefault(&c.NumPrefixes, 10)
	setDefault(&c.PrefixLen, 256)
	setDefault(&c.SuffixLen, 256)
	setDefault(&c.OutputLen, 128)
	return c
}

func (c PrefixRepetitionConfig) validate(v *validator, path string) {
	c = c.withDefaults()
	v.check(c.NumPrompts > 0 && c.NumPrompts <= maxPrompts, path+"numPrompts", "must be in [1, %d], got %d", maxPrompts, c.NumPrompts)
	v.check(c.NumPrefixes > 0, path+"numPrefixes", "must be positive, got %d", c.NumPrefixes)
	if c.NumPrefixes > 0 && c.NumPrompts > 0 {
		v.check(c.NumPrompts >= c.NumPrefixes, path+"numPrompts", "must be at least numPrefixes (%d), got %d", c.NumPrefixes, c.NumPrompts)
	}
	v.check(c.PrefixLen > 0 && c.PrefixLen <= maxLength, path+"prefixLen", "must be in [1, %d], got %d", maxLength, c.PrefixLen)
	v.check(c.SuffixLen > 0 && c.SuffixLen <= maxLength, path+"suffixLen", "must be in [1, %d], got %d", maxLength, c.SuffixLen)
	v.check(c.OutputLen > 0 && c.OutputLen <= maxLength, path+"outputLen", "must be in [1, %d], got %d", maxLength, c.OutputLen)
}

// NewPrefixRepetition returns the prefix-repetition dataset: NumPrefixes ×
// (NumPrompts / NumPrefixes) requests, Group the prefix.
func NewPrefixRepetition(cfg PrefixRepetitionConfig, seed uint64) (Dataset, error) {
	var v validator
	cfg.validate(&v, "")
	if err := v.err(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	perPrefix := cfg.NumPrompts / cfg.NumPrefixes
	return &prefixRepetition{
		cfg:       cfg,
		seed:      seed,
		perPrefix: perPrefix,
		order:     newRNG(derive(seed, repOrderDomain, 0)).perm(perPrefix * cfg.NumPrefixes),
	}, nil
}

type prefixRepetition struct {
	cfg       PrefixRepetitionConfig
	seed      uint64
	perPrefix int
	order     []int32
}

func (d *prefixRepetition) Len() int    { return len(d.order) }
func (d *prefixRepetition) Timed() bool { return false }

func (d *prefixRepetition) Request(i int) Request {
	item := int(d.order[i])
	p := item / d.perPrefix
	r := Request{
		Index:     i,
		PromptLen: d.cfg.PrefixLen + d.cfg.SuffixLen,
		MaxTokens: d.cfg.OutputLen,
		Group:     p,
		Item:      item,
	}
	r.prompt.segs = [2]segment{
		{seed: derive(d.seed, repPrefixDomain, uint64(p)), n: d.cfg.PrefixLen},
		{seed: derive(d.seed, repSuffixDomain, uint64(item)), n: d.cfg.SuffixLen},
	}
	return r
}

// RandomConfig configures vLLM's `random` dataset (`vllm bench serve
// --dataset-name random`): each request's prompt and output lengths are
// drawn uniformly from the integers in [⌊L·(1−RangeRatio)⌋, ⌈L·(1+RangeRatio)⌉]
// around InputLen and OutputLen (output at least 1), and its prompt is an
// optional PrefixLen-token prefix shared by all requests followed by that
// many random tokens. Zero fields take vLLM's defaults: 1,000 prompts, 1,024
// input and 128 output tokens, range ratio 0, no prefix.
//
// Unlike vLLM, which walks the vocabulary from a random offset, the tokens
// are independent draws: with this package's small generated vocabulary a
// walk would make unrelated prompts share long runs.
type RandomConfig struct {
	NumPrompts int     `json:"numPrompts,omitempty"`
	InputLen   int     `json:"inputLen,omitempty"`
	OutputLen  int     `json:"outputLen,omitempty"`
	RangeRatio float64 `json:"rangeRatio,omitempty"`
	PrefixLen  int     `json:"prefixLen,omitempty"`
}

func (c RandomConfig) withDefaults() RandomConfig {
	setDefault(&c.NumPrompts, 1000)
	setDefault(&c.InputLen, 1024)
	setDefault(&c.OutputLen, 128)
	return c
}

func (c RandomConfig) validate(v *validator, path string) {
	c = c.withDefaults()
	v.check(c.NumPrompts > 0 && c.NumPrompts <= maxPrompts*64, path+"numPrompts", "must be in [1, %d], got %d", maxPrompts*64, c.NumPrompts)
	v.check(c.InputLen > 0 && c.InputLen <= maxLength/2, path+"inputLen", "must be in [1, %d], got %d", maxLength/2, c.InputLen)
	v.check(c.OutputLen > 0 && c.OutputLen <= maxLength/2, path+"outputLen", "must be in [1, %d], got %d", maxLength/2, c.OutputLen)
	v.check(c.PrefixLen >= 0 && c.PrefixLen <= maxLength, path+"prefixLen", "must be in [0, %d], got %d", maxLength, c.PrefixLen)
	if !(c.RangeRatio >= 0 && c.RangeRatio < 1) {
		v.add(path+"rangeRatio", "must be in [0, 1), got %g", c.RangeRatio)
	} else if c.InputLen > 0 && c.PrefixLen >= 0 {
		lo, _ := lengthRange(c.InputLen, c.RangeRatio)
		v.check(c.PrefixLen+lo >= 1, path+"inputLen", "with rangeRatio %g and no prefix, prompts could be empty", c.RangeRatio)
	}
}

// lengthRange is vLLM's sampling interval around n.
func lengthRange(n int, ratio float64) (lo, hi int) {
	return int(math.Floor(float64(n) * (1 - ratio))), int(math.Ceil(float64(n) * (1 + ratio)))
}

// NewRandom returns the random dataset: NumPrompts requests; Group is 0 when
// there is a shared prefix, else -1.
func NewRandom(cfg RandomConfig, seed uint64) (Dataset, error) {
	var v validator
	cfg.validate(&v, "")
	if err := v.err(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	d := &random{cfg: cfg, seed: seed}
	d.inLo, d.inHi = lengthRange(cfg.InputLen, cfg.RangeRatio)
	d.outLo, d.outHi = lengthRange(cfg.OutputLen, cfg.RangeRatio)
	d.outLo, d.outHi = max(d.outLo, 1), max(d.outHi, 1)
	return d, nil
}

type random struct {
	cfg          RandomConfig
	seed         uint64
	inLo, inHi   int
	outLo, outHi int
}

func (d *random) Len() int    { return d.cfg.NumPrompts }
func (d *random) Timed() bool { return false }

func (d *random) Request(i int) Request {
	g := newRNG(derive(d.seed, randomLengthDomain, uint64(i)))
	in := d.inLo + g.intn(d.inHi-d.inLo+1)
	out := d.outLo + g.intn(d.outHi-d.outLo+1)
	r := Request{Index: i, PromptLen: d.cfg.PrefixLen + in, MaxTokens: out, Group: -1, Item: i}
	if d.cfg.PrefixLen > 0 {
		r.Group = 0
	}
	r.prompt.segs = [2]segment{
		{seed: derive(d.seed, randomPrefixDomain, 0), n: d.cfg.PrefixLen},
		{seed: derive(d.seed, randomInnerDomain, uint64(i)), n: in},
	}
	return r
}

func setDefault(p *int, d int) {
	if *p == 0 {
		*p = d
	}
}
