// Package tokenizer holds the Tokenizer interface (iface.go) and the
// project's deterministic stand-in for a model tokenizer, the estimate: an
// approximation, used wherever no tokenizer files or engine mode are
// configured. The simulator, the activator and the workload generators all
// use it by default, so that every component derives the same token ids,
// and therefore the same KV block hashes, from the same text; exact ids come
// from pkg/tokenizer/native (the model's Hugging Face files) or
// pkg/tokenizer/engine (the pod's own tokenizer).
//
// Text is cut into pieces the way BPE tokenizers roughly do: a run of up to
// eight letters with its leading space, a run of up to three digits, or any
// other single character. A piece's id is a hash of its bytes into the
// ordinary vocabulary range; ids from SpecialBase up are special tokens
// (Llama-3 layout). Generated text comes from a fixed word list whose words
// are single pieces, so Decode(Encode(s)) == s for generated text and
// Encode(Decode(ids)) == ids for generated ids.
//
// This package is pure: no I/O, no clock, no global mutable state.
package tokenizer

import (
	"hash/fnv"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	// VocabSize is the size of the id space (Llama-3's).
	VocabSize = 128256
	// SpecialBase is the first special token id; ordinary pieces hash below it.
	SpecialBase = 128000

	BOS         uint32 = 128000 // <|begin_of_text|>
	EOS         uint32 = 128001 // <|end_of_text|>
	StartHeader uint32 = 128006 // <|start_header_id|>
	EndHeader   uint32 = 128007 // <|end_header_id|>
	EOT         uint32 = 128009 // <|eot_id|>

	maxLetters = 8
	maxDigits  = 3
)

var specials = map[uint32]string{
	BOS:         "<|begin_of_text|>",
	EOS:         "<|end_of_text|>",
	StartHeader: "<|start_header_id|>",
	EndHeader:   "<|end_header_id|>",
	EOT:         "<|eot_id|>",
}

// PieceID returns the id of one piece of text.
func PieceID(piece string) uint32 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(piece))
	return uint32(h.Sum64() % SpecialBase)
}

// Encode appends the token ids of text to dst and returns the result.
func Encode(dst []uint32, text string) []uint32 {
	for len(text) > 0 {
		n := pieceLen(text)
		dst = append(dst, PieceID(text[:n]))
		text = text[n:]
	}
	return dst
}

// Count returns the number of tokens in text without allocating.
func Count(text string) int {
	n := 0
	for len(text) > 0 {
		text = text[pieceLen(text):]
		n++
	}
	return n
}

// pieceLen returns the byte length of the first piece of a non-empty text.
func pieceLen(s string) int {
	i := 0
	if s[0] == ' ' && len(s) > 1 {
		i = 1
	}
	r, size := utf8.DecodeRuneInString(s[i:])
	switch {
	case unicode.IsLetter(r):
		n := 0
		for i < len(s) && n < maxLetters {
			r, size = utf8.DecodeRuneInString(s[i:])
			if !unicode.IsLetter(r) {
				break
			}
			i += size
			n++
		}
		return i
	case r >= '0' && r <= '9':
		n := 0
		for i < len(s) && n < maxDigits && s[i] >= '0' && s[i] <= '9' {
			i++
			n++
		}
		return i
	default:
		if i == 1 {
			// A space before something that is neither a letter nor a
			// digit is a piece of its own.
			return 1
		}
		return size
	}
}

// words is the vocabulary generated text is drawn from: common English words,
// each a single piece with its leading space.
var words = strings.Fields(`the of and to in is that it for was on are as with his they at be this from
have or by one had not but what all were when we there can an your which their said if do will each about
how up out them then she many some so these would other into has more her two like him see time could no
make than first been its who now people my made over did down only way find use may water long little very
after words called just where most know get through back much before go good new write our used me man too
any day same right look think also around another came come work three word must because does part even
place well such here take why things help put years different away again off went old number great tell men
say small every found still between name should home big give air line set own under read last never us
left end along while might next sound below saw something thought both few those always looked show large
often together asked house world going want school important until form food keep children feet land side
without boy once animals life enough took sometimes four head above kind began almost live page got earth
need far hand high year mother light parts country father let night following picture being study second
eyes soon times story boys since white days ever paper hard near sentence better best across during today
others however sure means knew try told young miles sun ways thing whole hear example heard several change
answer room sea against top turned learn point city play toward five using himself usually money seen car
morning given fish open river`)

var (
	wordIDs  []uint32
	wordText = map[uint32]string{}
)

func init() {
	for _, w := range words {
		if len(w) > maxLetters {
			continue
		}
		id := PieceID(" " + w)
		if _, dup := wordText[id]; dup {
			continue
		}
		wordIDs = append(wordIDs, id)
		wordText[id] = " " + w
	}
}

// GeneratedVocab returns the ids that generation draws from, in a fixed order.
// The caller must not modify the slice.
func GeneratedVocab() []uint32 { return wordIDs }

// Decode appends the text of ids to sb. Generated ids and special tokens
// decode exactly; any other id decodes as a placeholder piece " <id>".
func Decode(sb *strings.Builder, ids []uint32) {
	for _, id := range ids {
		if w, ok := wordText[id]; ok {
			sb.WriteString(w)
			continue
		}
		if s, ok := specials[id]; ok {
			sb.WriteString(s)
			continue
		}
		sb.WriteString(" <")
		writeUint(sb, id)
		sb.WriteByte('>')
	}
}

// DecodeString returns the text of ids.
func DecodeString(ids []uint32) string {
	var sb strings.Builder
	Decode(&sb, ids)
	return sb.String()
}

func writeUint(sb *strings.Builder, v uint32) {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	sb.Write(b[i:])
}

// Message is one chat message.
type Message struct {
	Role    string
	Content string
	// Extra are the message's other members a chat template may read, as
	// the client sent them (raw JSON, in the order sent): name,
	// tool_calls, tool_call_id, reasoning, reasoning_content. Nil for
	// most messages; the estimate ignores them.
	Extra []Field
}

// Field is one member of a JSON object: its name and raw JSON value.
type Field struct {
	Name  string
	Value []byte
}

// ApplyChatTemplate encodes messages with a Llama-3 style chat template and,
// when addGenerationPrompt is set, opens an assistant turn:
//
//	<|begin_of_text|>(<|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>)*
//	[<|start_header_id|>assistant<|end_header_id|>\n\n]
//
// Equal leading messages give equal leading token ids, so a shared system
// prompt is a shared KV prefix, as with a real model.
func ApplyChatTemplate(dst []uint32, msgs []Message, addGenerationPrompt bool) []uint32 {
	dst = append(dst, BOS)
	for _, m := range msgs {
		dst = append(dst, StartHeader)
		dst = Encode(dst, m.Role)
		dst = append(dst, EndHeader)
		dst = Encode(dst, "\n\n")
		dst = Encode(dst, m.Content)
		dst = append(dst, EOT)
	}
	if addGenerationPrompt {
		dst = append(dst, StartHeader)
		dst = Encode(dst, "assistant")
		dst = append(dst, EndHeader)
		dst = Encode(dst, "\n\n")
	}
	return dst
}
