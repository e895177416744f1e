// Package native is a pure-Go reading of a Hugging Face tokenizer: the
// byte-level BPE model, normalizer, pre-tokenizer split patterns, added and
// special tokens and post-processor of tokenizer.json, and the chat template
// of tokenizer_config.json rendered with a Go Jinja engine. It gives the
// token ids vLLM computes for the same prompt (vLLM renders the template to
// text, then encodes it without adding special tokens; a completion prompt
// is encoded with them).
//
// Files come from a directory (a mounted volume or a Hugging Face cache
// folder); nothing is downloaded. Families known to be exact (tested
// against transformers.js on the published files): Llama 3.x and Qwen 2.5 /
// Qwen 3. Other byte-level BPE tokenizers load when every component they
// name is one this package implements, and are refused with an error
// naming the component otherwise (SentencePiece-style Metaspace models,
// WordPiece, Unigram: not implemented).
//
// This package does no I/O except Load reading the directory, and keeps no
// global state.
package native

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/ardanlabs/jinja"
	"golang.org/x/text/unicode/norm"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// Tokenizer is a loaded Hugging Face tokenizer. It is safe for concurrent
// use.
type Tokenizer struct {
	name         string
	vocab        map[string]uint32 // raw bytes of a token -> id
	byteID       [256]uint32
	merges       map[uint64]merge
	ignoreMerges bool
	idBytes      [][]byte // id -> raw bytes (added tokens: their content)
	special      []bool   // id -> is a special token (skipped by Decode when asked)
	vocabSize    int

	normalize func(string) string
	split     []splitter

	added     []addedToken
	rawFirst  [256]bool // first bytes of added tokens matched on raw text
	normFirst [256]bool // ... on normalized text
	hasNorm   bool
	// byPrefix indexes added tokens of two bytes or more by their first two
	// bytes, oneByte those of one byte, each longest first; [0] raw, [1]
	// normalized. (Llama 3's 256 all start with "<|": HTML must not cost a
	// scan of all of them at every '<'.)
	byPrefix [2]map[uint16][]int32
	oneByte  [2][256][]int32

	prefix, suffix []uint32 // post-processor: ids around a single sequence when special tokens are added

	chat      *jinja.Template
	chatErr   error
	chatVars  map[string]any
	sections  *sectionCache
	words     wordCache
	scratches sync.Pool
}

type addedToken struct {
	id                      uint32
	content                 string
	special, normalized     bool
	lstrip, rstrip, oneWord bool
}

// Options tune a Tokenizer.
type Options struct {
	// SectionCacheBytes bounds the cache of encoded text sections (the
	// text between two special tokens: in a chat, a message's content).
	// 0 means a default of 32 MiB; negative disables the cache.
	SectionCacheBytes int
}

// Load reads tokenizer.json and, when present, tokenizer_config.json (and
// chat_template.jinja) from dir. dir may also be a Hugging Face cache folder
// (models--org--name, with snapshots/<rev>/ and refs/main).
func Load(dir string, opts Options) (*Tokenizer, error) {
	resolved, err := ResolveDir(dir)
	if err != nil {
		return nil, err
	}
	tj, err := os.ReadFile(filepath.Join(resolved, "tokenizer.json"))
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", dir, err)
	}
	cj, err := os.ReadFile(filepath.Join(resolved, "tokenizer_config.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer %s: %w", dir, err)
	}
	tmpl, err := os.ReadFile(filepath.Join(resolved, "chat_template.jinja"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer %s: %w", dir, err)
	}
	t, err := Parse(tj, cj, string(tmpl), opts)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", dir, err)
	}
	t.name = filepath.Base(strings.TrimRight(dir, "/"))
	return t, nil
}

// ErrNoFile is what a LoadFiles reader returns for a file that is absent.
var ErrNoFile = errors.New("no such tokenizer file")

// LoadFiles is Load with the files read by read (tokenizer.json required;
// tokenizer_config.json and chat_template.jinja when present, read
// reporting ErrNoFile otherwise): tokenizer files from object storage.
// name names the tokenizer in errors and Info.
func LoadFiles(read func(file string) ([]byte, error), name string, opts Options) (*Tokenizer, error) {
	tj, err := read("tokenizer.json")
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", name, err)
	}
	cj, err := read("tokenizer_config.json")
	if err != nil && !errors.Is(err, ErrNoFile) {
		return nil, fmt.Errorf("tokenizer %s: %w", name, err)
	}
	tmpl, err := read("chat_template.jinja")
	if err != nil && !errors.Is(err, ErrNoFile) {
		return nil, fmt.Errorf("tokenizer %s: %w", name, err)
	}
	t, err := Parse(tj, cj, string(tmpl), opts)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", name, err)
	}
	t.name = name
	return t, nil
}

// ResolveDir returns the folder that holds tokenizer.json: dir itself, or
// the snapshot of a Hugging Face cache folder that refs/main names (the
// only snapshot when there is no refs/main).
func ResolveDir(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err == nil {
		return dir, nil
	}
	if ref, err := os.ReadFile(filepath.Join(dir, "refs", "main")); err == nil {
		snap := filepath.Join(dir, "snapshots", strings.TrimSpace(string(ref)))
		if _, err := os.Stat(filepath.Join(snap, "tokenizer.json")); err == nil {
			return snap, nil
		}
	}
	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*", "tokenizer.json"))
	switch len(snaps) {
	case 1:
		return filepath.Dir(snaps[0]), nil
	case 0:
		return "", fmt.Errorf("tokenizer %s: no tokenizer.json in it or in snapshots/*/", dir)
	}
	return "", fmt.Errorf("tokenizer %s: %d snapshots with tokenizer.json and no refs/main to choose one", dir, len(snaps))
}

// The parts of tokenizer.json this package reads.
type fileJSON struct {
	AddedTokens []struct {
		ID         uint32 `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer    *component `json:"normalizer"`
	PreTokenizer  *component `json:"pre_tokenizer"`
	PostProcessor *component `json:"post_processor"`
	Model         struct {
		Type                    string            `json:"type"`
		Vocab                   map[string]uint32 `json:"vocab"`
		Merges                  []json.RawMessage `json:"merges"`
		IgnoreMerges            bool              `json:"ignore_merges"`
		ByteFallback            bool              `json:"byte_fallback"`
		Dropout                 *float64          `json:"dropout"`
		ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
	} `json:"model"`
}

// component is any of the normalizer, pre-tokenizer and post-processor
// objects: a type and that type's fields.
type component struct {
	Type           string       `json:"type"`
	Normalizers    []*component `json:"normalizers"`
	Pretokenizers  []*component `json:"pretokenizers"`
	Processors     []*component `json:"processors"`
	Pattern        *pattern     `json:"pattern"`
	Behavior       string       `json:"behavior"`
	Invert         bool         `json:"invert"`
	AddPrefixSpace bool         `json:"add_prefix_space"`
	UseRegex       *bool        `json:"use_regex"`
	Single         []struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
		Sequence *struct {
			ID string `json:"id"`
		} `json:"Sequence"`
	} `json:"single"`
	SpecialTokens map[string]struct {
		IDs []uint32 `json:"ids"`
	} `json:"special_tokens"`
}

type pattern struct {
	Regex  *string `json:"Regex"`
	String *string `json:"String"`
}

// maxVocab bounds ids read from a file, so a hostile file cannot make Parse
// allocate without limit.
const maxVocab = 1 << 22

// Parse builds a Tokenizer from the contents of tokenizer.json,
// tokenizer_config.json (may be empty) and a chat template that overrides
// the config's (may be empty).
func Parse(tokenizerJSON, configJSON []byte, chatTemplate string, opts Options) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(tokenizerJSON, &f); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	m := f.Model
	if m.Type != "BPE" && m.Type != "" {
		return nil, fmt.Errorf("tokenizer.json: model type %q is not implemented (only byte-level BPE)", m.Type)
	}
	if m.ByteFallback || m.Dropout != nil && *m.Dropout != 0 ||
		m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" ||
		m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, errors.New("tokenizer.json: BPE with byte_fallback, dropout, a subword prefix or a word suffix is not implemented")
	}
	if len(m.Vocab) == 0 {
		return nil, errors.New("tokenizer.json: empty vocabulary")
	}
	t := &Tokenizer{name: "tokenizer", ignoreMerges: m.IgnoreMerges}
	chars := byteLevelChars()
	charByte := make(map[rune]byte, 256)
	for b, r := range chars {
		charByte[r] = byte(b)
	}
	decodeLevel := func(tok string) (string, bool) {
		var b strings.Builder
		for _, r := range tok {
			c, ok := charByte[r]
			if !ok {
				return "", false
			}
			b.WriteByte(c)
		}
		return b.String(), true
	}
	maxID := uint32(0)
	t.vocab = make(map[string]uint32, len(m.Vocab))
	for tok, id := range m.Vocab {
		if id >= maxVocab {
			return nil, fmt.Errorf("tokenizer.json: vocabulary id %d too large", id)
		}
		raw, ok := decodeLevel(tok)
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: vocabulary entry %q is not byte-level (not implemented)", tok)
		}
		t.vocab[raw] = id
		maxID = max(maxID, id)
	}
	for _, a := range f.AddedTokens {
		if a.ID >= maxVocab {
			return nil, fmt.Errorf("tokenizer.json: added token id %d too large", a.ID)
		}
		maxID = max(maxID, a.ID)
	}
	t.vocabSize = int(maxID) + 1
	t.idBytes = make([][]byte, t.vocabSize)
	t.special = make([]bool, t.vocabSize)
	for raw, id := range t.vocab {
		t.idBytes[id] = []byte(raw)
	}
	for b := 0; b < 256; b++ {
		id, ok := t.vocab[string([]byte{byte(b)})]
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: byte 0x%02x has no token (not a byte-level vocabulary)", b)
		}
		t.byteID[b] = id
	}
	t.merges = make(map[uint64]merge, len(m.Merges))
	for rank, raw := range m.Merges {
		a, b, err := mergePair(raw)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.json: merges[%d]: %w", rank, err)
		}
		ra, oka := decodeLevel(a)
		rb, okb := decodeLevel(b)
		if !oka || !okb {
			return nil, fmt.Errorf("tokenizer.json: merges[%d] is not byte-level", rank)
		}
		ia, oka := t.vocab[ra]
		ib, okb := t.vocab[rb]
		id, okm := t.vocab[ra+rb]
		if !oka || !okb || !okm {
			return nil, fmt.Errorf("tokenizer.json: merges[%d] %q %q names a token not in the vocabulary", rank, a, b)
		}
		if _, dup := t.merges[pairKey(ia, ib)]; !dup {
			t.merges[pairKey(ia, ib)] = merge{rank: uint32(rank), id: id}
		}
	}
	for _, a := range f.AddedTokens {
		if a.Content == "" {
			return nil, fmt.Errorf("tokenizer.json: added token %d is empty", a.ID)
		}
		t.added = append(t.added, addedToken{id: a.ID, content: a.Content, special: a.Special,
			normalized: a.Normalized, lstrip: a.LStrip, rstrip: a.RStrip, oneWord: a.SingleWord})
		t.idBytes[a.ID] = []byte(a.Content)
		t.special[a.ID] = a.Special
		if a.Normalized {
			t.normFirst[a.Content[0]] = true
			t.hasNorm = true
		} else {
			t.rawFirst[a.Content[0]] = true
		}
	}
	// Longest first, so that the first match at a position is the longest.
	sort.SliceStable(t.added, func(i, j int) bool { return len(t.added[i].content) > len(t.added[j].content) })
	t.byPrefix = [2]map[uint16][]int32{{}, {}}
	for k, a := range t.added {
		n := 0
		if a.normalized {
			n = 1
		}
		if len(a.content) == 1 {
			t.oneByte[n][a.content[0]] = append(t.oneByte[n][a.content[0]], int32(k))
			continue
		}
		key := uint16(a.content[0])<<8 | uint16(a.content[1])
		t.byPrefix[n][key] = append(t.byPrefix[n][key], int32(k))
	}
	var err error
	if t.normalize, err = normalizer(f.Normalizer); err != nil {
		return nil, fmt.Errorf("tokenizer.json: normalizer: %w", err)
	}
	if t.split, err = preTokenizer(f.PreTokenizer); err != nil {
		return nil, fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	if t.prefix, t.suffix, err = postProcessor(f.PostProcessor); err != nil {
		return nil, fmt.Errorf("tokenizer.json: post_processor: %w", err)
	}
	for _, id := range append(append([]uint32(nil), t.prefix...), t.suffix...) {
		if int(id) >= t.vocabSize {
			return nil, fmt.Errorf("tokenizer.json: post_processor: id %d out of vocabulary", id)
		}
	}
	if err := t.loadConfig(configJSON, chatTemplate); err != nil {
		return nil, fmt.Errorf("tokenizer_config.json: %w", err)
	}
	switch {
	case opts.SectionCacheBytes == 0:
		t.sections = newSectionCache(32 << 20)
	case opts.SectionCacheBytes > 0:
		t.sections = newSectionCache(opts.SectionCacheBytes)
	}
	t.scratches.New = func() any { return new(scratch) }
	return t, nil
}

func mergePair(raw json.RawMessage) (string, string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		a, b, ok := strings.Cut(s, " ")
		if !ok {
			return "", "", fmt.Errorf("%q is not two tokens", s)
		}
		return a, b, nil
	}
	var p []string
	if err := json.Unmarshal(raw, &p); err != nil || len(p) != 2 {
		return "", "", errors.New("not a pair of tokens")
	}
	return p[0], p[1], nil
}

func normalizer(c *component) (func(string) string, error) {
	if c == nil {
		return nil, nil
	}
	switch c.Type {
	case "NFC":
		return norm.NFC.String, nil
	case "NFD":
		return norm.NFD.String, nil
	case "NFKC":
		return norm.NFKC.String, nil
	case "NFKD":
		return norm.NFKD.String, nil
	case "Sequence":
		var fs []func(string) string
		for _, n := range c.Normalizers {
			f, err := normalizer(n)
			if err != nil {
				return nil, err
			}
			if f != nil {
				fs = append(fs, f)
			}
		}
		if len(fs) == 0 {
			return nil, nil
		}
		return func(s string) string {
			for _, f := range fs {
				s = f(s)
			}
			return s
		}, nil
	}
	return nil, fmt.Errorf("type %q is not implemented", c.Type)
}

func preTokenizer(c *component) ([]splitter, error) {
	if c == nil {
		return nil, nil
	}
	switch c.Type {
	case "Sequence":
		var out []splitter
		for _, p := range c.Pretokenizers {
			s, err := preTokenizer(p)
			if err != nil {
				return nil, err
			}
			out = append(out, s...)
		}
		return out, nil
	case "Split":
		if c.Pattern == nil {
			return nil, errors.New("Split without a pattern")
		}
		if c.Behavior != "Isolated" || c.Invert {
			return nil, fmt.Errorf("Split behavior %q (invert %v) is not implemented", c.Behavior, c.Invert)
		}
		var expr string
		switch {
		case c.Pattern.Regex != nil:
			expr = *c.Pattern.Regex
		case c.Pattern.String != nil:
			expr = regexpQuote(*c.Pattern.String)
		default:
			return nil, errors.New("Split pattern is neither Regex nor String")
		}
		s, err := newSplitter(expr)
		if err != nil {
			return nil, err
		}
		return []splitter{s}, nil
	case "ByteLevel":
		if c.AddPrefixSpace {
			return nil, errors.New("ByteLevel with add_prefix_space is not implemented")
		}
		if c.UseRegex == nil || *c.UseRegex {
			s, err := newSplitter(patternGPT2)
			if err != nil {
				return nil, err
			}
			return []splitter{s}, nil
		}
		return nil, nil // only maps bytes to characters, which the model does on ids
	}
	return nil, fmt.Errorf("type %q is not implemented", c.Type)
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$#&-~ `, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func postProcessor(c *component) (prefix, suffix []uint32, err error) {
	if c == nil {
		return nil, nil, nil
	}
	switch c.Type {
	case "ByteLevel":
		return nil, nil, nil // offsets only
	case "Sequence":
		for _, p := range c.Processors {
			pre, suf, err := postProcessor(p)
			if err != nil {
				return nil, nil, err
			}
			if len(pre)+len(suf) > 0 {
				if len(prefix)+len(suffix) > 0 {
					return nil, nil, errors.New("two processors that add tokens")
				}
				prefix, suffix = pre, suf
			}
		}
		return prefix, suffix, nil
	case "TemplateProcessing":
		seen := false
		for _, piece := range c.Single {
			switch {
			case piece.Sequence != nil:
				if seen {
					return nil, nil, errors.New("TemplateProcessing with two sequences in single")
				}
				seen = true
			case piece.SpecialToken != nil:
				st, ok := c.SpecialTokens[piece.SpecialToken.ID]
				if !ok {
					return nil, nil, fmt.Errorf("TemplateProcessing names %q, not in special_tokens", piece.SpecialToken.ID)
				}
				if seen {
					suffix = append(suffix, st.IDs...)
				} else {
					prefix = append(prefix, st.IDs...)
				}
			}
		}
		return prefix, suffix, nil
	}
	return nil, nil, fmt.Errorf("type %q is not implemented", c.Type)
}

// Name is the tokenizer's name (its folder's).
func (t *Tokenizer) Name() string { return t.name }

// VocabSize is one more than the largest id, added tokens included: the
// bound vLLM checks token-id prompts against.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// TokenID returns the id of a token given by its text (an added token's
// content, or a vocabulary entry's bytes).
func (t *Tokenizer) TokenID(text string) (uint32, bool) {
	for _, a := range t.added {
		if a.content == text {
			return a.id, true
		}
	}
	id, ok := t.vocab[text]
	return id, ok
}

// AppendEncode appends the ids of text to dst. With addSpecial, the
// post-processor's tokens (Llama 3's <|begin_of_text|>) surround them, as
// for a completion prompt. Invalid UTF-8 is replaced first, as an engine
// decoding the request would.
func (t *Tokenizer) AppendEncode(dst []uint32, text string, addSpecial bool) []uint32 {
	text = ToValidUTF8(text)
	if addSpecial {
		dst = append(dst, t.prefix...)
	}
	s := t.scratches.Get().(*scratch)
	dst = t.encodeRaw(dst, text, s)
	t.scratches.Put(s)
	if addSpecial {
		dst = append(dst, t.suffix...)
	}
	return dst
}

// encodeRaw splits text on added tokens matched before normalization and
// encodes what lies between.
func (t *Tokenizer) encodeRaw(dst []uint32, text string, s *scratch) []uint32 {
	for len(text) > 0 {
		start, end, id := t.findAdded(text, false)
		dst = t.encodeSection(dst, text[:start], s)
		if start == len(text) {
			break
		}
		dst = append(dst, id)
		text = text[end:]
	}
	return dst
}

// encodeSection encodes the text between two added tokens: the unit that
// the Hugging Face pipeline normalizes and pre-tokenizes on its own, and so
// the unit that can be cached exactly.
func (t *Tokenizer) encodeSection(dst []uint32, text string, s *scratch) []uint32 {
	if text == "" {
		return dst
	}
	if t.sections != nil && len(text) >= minCachedSection {
		if ids, ok := t.sections.get(text); ok {
			return append(dst, ids...)
		}
		n := len(dst)
		dst = t.encodeNormalized(dst, text, s)
		t.sections.put(text, dst[n:])
		return dst
	}
	return t.encodeNormalized(dst, text, s)
}

func (t *Tokenizer) encodeNormalized(dst []uint32, text string, s *scratch) []uint32 {
	if t.normalize != nil {
		text = t.normalize(text)
	}
	for len(text) > 0 {
		start, end, id := len(text), len(text), uint32(0)
		if t.hasNorm {
			start, end, id = t.findAdded(text, true)
		}
		dst = t.preTokenize(dst, text[:start], 0, s)
		if start == len(text) {
			break
		}
		dst = append(dst, id)
		text = text[end:]
	}
	return dst
}

func (t *Tokenizer) preTokenize(dst []uint32, text string, level int, s *scratch) []uint32 {
	if text == "" {
		return dst
	}
	if level == len(t.split) {
		return t.bpe(dst, text, s)
	}
	t.split[level].split(text, func(piece string) {
		dst = t.preTokenize(dst, piece, level+1, s)
	})
	return dst
}

// findAdded returns the leftmost-longest added token in text among those
// matched on raw (normalized=false) or normalized text, with the bytes its
// lstrip/rstrip absorb; start == len(text) when there is none.
func (t *Tokenizer) findAdded(text string, normalized bool) (start, end int, id uint32) {
	first, n := &t.rawFirst, 0
	if normalized {
		first, n = &t.normFirst, 1
	}
	for i := 0; i < len(text); i++ {
		if !first[text[i]] {
			continue
		}
		if i+1 < len(text) {
			for _, k := range t.byPrefix[n][uint16(text[i])<<8|uint16(text[i+1])] {
				if s, e, ok := t.matchAdded(text, i, k); ok {
					return s, e, t.added[k].id
				}
			}
		}
		for _, k := range t.oneByte[n][text[i]] {
			if s, e, ok := t.matchAdded(text, i, k); ok {
				return s, e, t.added[k].id
			}
		}
	}
	return len(text), len(text), 0
}

// matchAdded reports whether added token k matches text at i, and the
// span it takes with the whitespace its lstrip/rstrip absorb.
func (t *Tokenizer) matchAdded(text string, i int, k int32) (s, e int, ok bool) {
	a := &t.added[k]
	if !strings.HasPrefix(text[i:], a.content) {
		return 0, 0, false
	}
	s, e = i, i+len(a.content)
	if a.oneWord && (isWordBefore(text[:s]) || isWordAfter(text[e:])) {
		return 0, 0, false
	}
	if a.lstrip {
		s = len(strings.TrimRightFunc(text[:s], unicode.IsSpace))
	}
	if a.rstrip {
		e = len(text) - len(strings.TrimLeftFunc(text[e:], unicode.IsSpace))
	}
	return s, e, true
}

func isWordBefore(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return s != "" && (unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_')
}

func isWordAfter(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return s != "" && (unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_')
}

// Decode returns the text of ids (skipping special tokens when asked);
// ids out of the vocabulary are an error.
func (t *Tokenizer) Decode(ids []uint32, skipSpecial bool) (string, error) {
	var b []byte
	for i, id := range ids {
		if int(id) >= len(t.idBytes) || t.idBytes[id] == nil {
			return "", fmt.Errorf("token id %d at position %d is not in the vocabulary", id, i)
		}
		if skipSpecial && t.special[id] {
			continue
		}
		b = append(b, t.idBytes[id]...)
	}
	return ToValidUTF8(string(b)), nil
}

// Encode implements tokenizer.Tokenizer: a completion prompt's ids, special
// tokens added.
func (t *Tokenizer) Encode(_ context.Context, text string) ([]uint32, error) {
	return t.AppendEncode(nil, text, true), nil
}

// ApplyChatTemplate implements tokenizer.Tokenizer.
func (t *Tokenizer) ApplyChatTemplate(_ context.Context, msgs []tokenizer.Message, addGenerationPrompt bool) ([]uint32, error) {
	return t.AppendChat(nil, msgs, addGenerationPrompt)
}

// ApplyChat implements tokenizer.Tokenizer.
func (t *Tokenizer) ApplyChat(_ context.Context, msgs []tokenizer.Message, opts tokenizer.ChatOptions) ([]uint32, error) {
	return t.AppendChatWith(nil, msgs, opts)
}

// Info implements tokenizer.Tokenizer.
func (t *Tokenizer) Info() tokenizer.Info {
	return tokenizer.Info{Kind: "native", Name: t.name, Exact: true, VocabSize: t.vocabSize}
}

var _ tokenizer.Tokenizer = (*Tokenizer)(nil)
