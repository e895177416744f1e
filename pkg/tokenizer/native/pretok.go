package native

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2/v2"
)

// A splitter cuts normalized text into pre-tokens, calling yield with each
// piece in order; the pieces concatenate to s.
type splitter interface {
	split(s string, yield func(piece string))
}

// The split patterns of the families this package knows by heart. They are
// GPT-4's (cl100k) pattern with digit runs of up to three (Llama 3.x) or one
// (Qwen 2.5 and 3). Go's regexp lacks the lookahead (?!\S) they use, so
// gptSplit implements them by hand; TestSplitterMatchesRegexp proves it equal
// to a backtracking regex engine on the equality corpus and random text, and
// FuzzSplitter keeps checking.
const (
	patternLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patternQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// patternGPT2 is what a ByteLevel pre-tokenizer with use_regex splits on.
	patternGPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

// newSplitter returns the hand-written splitter for a known pattern and a
// backtracking regex for any other.
func newSplitter(pattern string) (splitter, error) {
	switch pattern {
	case patternLlama3:
		return gptSplit{maxDigits: 3}, nil
	case patternQwen2:
		return gptSplit{maxDigits: 1}, nil
	}
	return newRegexSplit(pattern)
}

// Character classes as the Rust tokenizers' regex engine (Oniguruma) reads
// them: \s is Unicode White_Space (which includes U+0085 and excludes
// U+FEFF, unlike JavaScript's \s), \p{L} and \p{N} the general categories.
func isL(r rune) bool {
	return r < utf8.RuneSelf && (r|0x20 >= 'a' && r|0x20 <= 'z') || r >= utf8.RuneSelf && unicode.IsLetter(r)
}
func isN(r rune) bool {
	return r >= '0' && r <= '9' || r >= utf8.RuneSelf && unicode.IsNumber(r)
}
func isS(r rune) bool     { return unicode.IsSpace(r) }
func isOther(r rune) bool { return !isS(r) && !isL(r) && !isN(r) }

// gptSplit is the cl100k-style pattern, alternative by alternative, with the
// backtracking a regex engine would do spelled out.
type gptSplit struct{ maxDigits int }

func (g gptSplit) split(s string, yield func(string)) {
	for len(s) > 0 {
		n := g.pieceLen(s)
		yield(s[:n])
		s = s[n:]
	}
}

// pieceLen returns the byte length of the first piece of a non-empty s.
func (g gptSplit) pieceLen(s string) int {
	r0, n0 := utf8.DecodeRuneInString(s)
	// 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r0 == '\'' {
		if n := contraction(s[1:]); n > 0 {
			return 1 + n
		}
	}
	// 2. [^\r\n\p{L}\p{N}]?\p{L}+
	if isL(r0) {
		return n0 + letters(s[n0:])
	}
	if r0 != '\r' && r0 != '\n' && !isN(r0) && n0 < len(s) {
		if r1, n1 := utf8.DecodeRuneInString(s[n0:]); isL(r1) {
			return n0 + n1 + letters(s[n0+n1:])
		}
	}
	// 3. \p{N}{1,maxDigits}
	if isN(r0) {
		i, k := n0, 1
		for i < len(s) && (g.maxDigits == 0 || k < g.maxDigits) {
			r, n := utf8.DecodeRuneInString(s[i:])
			if !isN(r) {
				break
			}
			i += n
			k++
		}
		return i
	}
	// 4.  ?[^\s\p{L}\p{N}]+[\r\n]*
	start := 0
	if r0 == ' ' && n0 < len(s) {
		if r1, _ := utf8.DecodeRuneInString(s[1:]); isOther(r1) {
			start = 1
		}
	}
	if r, _ := utf8.DecodeRuneInString(s[start:]); isOther(r) {
		i := start
		for i < len(s) {
			r, n := utf8.DecodeRuneInString(s[i:])
			if !isOther(r) {
				break
			}
			i += n
		}
		for i < len(s) && (s[i] == '\r' || s[i] == '\n') {
			i++
		}
		return i
	}
	// What is left starts with whitespace: find the run.
	end, last, runes, lastNL := 0, 0, 0, -1
	for end < len(s) {
		r, n := utf8.DecodeRuneInString(s[end:])
		if !isS(r) {
			break
		}
		if r == '\r' || r == '\n' {
			lastNL = end
		}
		last = end
		end += n
		runes++
	}
	// 5. \s*[\r\n]+ : the greedy \s* gives back up to the run's last CR or LF.
	if lastNL >= 0 {
		return lastNL + 1
	}
	// 6. \s+(?!\S) : the whole run at the end of the text, else all but its
	// last character (which then starts the next piece).
	if end == len(s) {
		return end
	}
	if runes >= 2 {
		return last
	}
	// 7. \s+
	return end
}

func letters(s string) int {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !isL(r) {
			break
		}
		i += n
	}
	return i
}

// contraction matches s|t|re|ve|m|ll|d case-insensitively at the start of
// s and returns its length (0: none). Case-insensitive means Unicode simple
// case folding, as in the Rust tokenizers' engine (and .NET's): U+017F
// (long s) folds to s. transformers.js rewrites the group as ASCII classes
// and does not; the equality corpus leaves U+017F out for that reason.
func contraction(s string) int {
	lower := func(i int) byte {
		if i >= len(s) {
			return 0
		}
		return s[i] | 0x20
	}
	switch lower(0) {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if lower(1) == 'e' {
			return 2
		}
	case 'l':
		if lower(1) == 'l' {
			return 2
		}
	}
	if strings.HasPrefix(s, "\u017f") {
		return len("\u017f")
	}
	return 0
}

// regexSplit is any other pattern, run by a backtracking engine with the
// lookaround these patterns use.
type regexSplit struct{ re *regexp2.Regexp }

func newRegexSplit(pattern string) (*regexSplit, error) {
	re, err := regexp2.Compile(pattern, regexp2.None)
	if err != nil {
		return nil, fmt.Errorf("split pattern %q: %w", pattern, err)
	}
	return &regexSplit{re: re}, nil
}

// split yields each match and each gap between matches (the Isolated
// behaviour keeps both).
func (x *regexSplit) split(s string, yield func(string)) {
	m, err := x.re.FindStringMatch(s)
	pos := 0
	for err == nil && m != nil {
		start, n := m.ByteRange()
		if start > pos {
			yield(s[pos:start])
		}
		if n > 0 {
			yield(s[start : start+n])
		}
		pos = start + n
		m, err = x.re.FindNextMatch(m)
	}
	if pos < len(s) {
		yield(s[pos:])
	}
}
