// Package local_test runs `kn-llmd local` end to end, as a user would: the
// built binary as a subprocess, the OpenAI Go SDK as the client, Prometheus
// metrics to check what happened inside, and signals to stop it.
package local_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmd-kn/llmd-kn/internal/testutil"
)

var knLLMD string // the built binary

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kn-llmd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	knLLMD = filepath.Join(dir, "kn-llmd")
	gocmd := os.Getenv("GO") // as the Makefile's
	if gocmd == "" {
		gocmd = "go"
	}
	build := exec.Command(gocmd, "build", "-o", knLLMD, "github.com/llmd-kn/llmd-kn/cmd/kn-llmd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kn-llmd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runtime is a running `kn-llmd local`.
type runtime struct {
	cmd            *exec.Cmd
	stdout, stderr *testutil.SyncBuffer
	api, status    string
	curl           string
	done           chan struct{}
	err            error
}

// start runs kn-llmd local on free ports and waits for its banner.
func start(t *testing.T, args ...string) *runtime {
	t.Helper()
	args = append([]string{"local", "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}, args...)
	cmd := exec.Command(knLLMD, args...)
	rt := &runtime{cmd: cmd, stdout: &testutil.SyncBuffer{}, stderr: &testutil.SyncBuffer{}, done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout = io.MultiWriter(rt.stdout, pw)
	cmd.Stderr = rt.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		rt.err = cmd.Wait()
		pw.Close()
		close(rt.done)
	}()
	t.Cleanup(func() {
		select {
		case <-rt.done:
		default:
			_ = cmd.Process.Kill()
			<-rt.done
		}
		if t.Failed() {
			t.Logf("kn-llmd local stdout:\n%s\nstderr:\n%s", rt.stdout, rt.stderr)
		}
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, pr)
	}()
	timeout := time.After(60 * time.Second)
	for rt.curl == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("kn-llmd local exited before it was ready: %v\n%s", rt.err, rt.stderr)
			}
			fields := strings.Fields(l)
			switch {
			case strings.HasPrefix(l, "API:") && len(fields) > 1:
				rt.api = fields[1]
			case strings.HasPrefix(l, "Status:") && len(fields) > 1:
				rt.status = strings.TrimSuffix(fields[1], "/")
			case strings.HasPrefix(strings.TrimSpace(l), "curl "):
				rt.curl = strings.TrimSpace(l)
			}
		case <-timeout:
			t.Fatalf("no banner within 60 s:\n%s\n%s", rt.stdout, rt.stderr)
		}
	}
	go func() {
		for range lines {
		}
	}()
	if rt.api == "" || rt.status == "" {
		t.Fatalf("banner without API or Status lines:\n%s", rt.stdout)
	}
	return rt
}

// stop sends SIGINT and expects a clean exit.
func (rt *runtime) stop(t *testing.T) {
	t.Helper()
	if err := rt.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rt.done:
	case <-time.After(30 * time.Second):
		t.Fatal("kn-llmd local did not stop within 30 s of SIGINT")
	}
	if rt.err != nil {
		t.Fatalf("kn-llmd local exited with %v", rt.err)
	}
	if !strings.Contains(rt.stderr.String(), "msg=stopped") {
		t.Fatalf("no clean stop in the log:\n%s", rt.stderr)
	}
}

func (rt *runtime) client() openai.Client {
	return openai.NewClient(option.WithBaseURL(rt.api+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

// metric sums the samples of a metric whose labels contain every given
// label pair.
func (rt *runtime) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(rt.status + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var sum float64
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(string(raw), -1) {
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(m[1], l)
		}
		if ok {
			v, _ := strconv.ParseFloat(m[2], 64)
			sum += v
		}
	}
	return sum
}

func streamChat(t *testing.T, c openai.Client, model, prompt string, maxTokens int64) (string, openai.CompletionUsage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:         model,
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		MaxTokens:     openai.Int(maxTokens),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var text strings.Builder
	var usage openai.CompletionUsage
	chunks := 0
	for stream.Next() {
		ch := stream.Current()
		chunks++
		for _, c := range ch.Choices {
			text.WriteString(c.Delta.Content)
		}
		if ch.Usage.TotalTokens > 0 {
			usage = ch.Usage
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if chunks < 2 {
		t.Fatalf("%d chunks: not streamed", chunks)
	}
	return text.String(), usage
}

const model = "meta-llama/Llama-3.1-8B-Instruct"

// exercise runs what a newcomer does with the quick start: the printed
// curl line, a streamed chat completion, a repeated long prompt (served
// from the prefix cache, its first pass disaggregated).
func exercise(t *testing.T, rt *runtime) {
	t.Helper()
	if !strings.Contains(rt.stdout.String(), "Model:   "+model) || !strings.Contains(rt.curl, model) {
		t.Fatalf("banner:\n%s", rt.stdout)
	}
	if _, err := exec.LookPath("curl"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, "/bin/sh", "-c", rt.curl+" --silent --show-error --fail").Output()
		cancel()
		if err != nil || !strings.Contains(string(out), "data: [DONE]") || strings.Count(string(out), "data: ") < 3 {
			t.Fatalf("the printed curl line: %v\n%s", err, out)
		}
	} else {
		t.Log("curl not installed: the printed curl line is not run")
	}

	c := rt.client()
	text, usage := streamChat(t, c, model, "What does Knative Serving do?", 16)
	if text == "" || usage.CompletionTokens != 16 || usage.PromptTokens == 0 {
		t.Fatalf("text %q usage %+v", text, usage)
	}

	long := strings.Repeat("A platform engineer runs LLMs on Knative with llm-d's routing. ", 60)
	_, first := streamChat(t, c, model, long, 8)
	_, second := streamChat(t, c, model, long, 8)
	if first.PromptTokens < 600 || second.PromptTokens != first.PromptTokens {
		t.Fatalf("prompt tokens %d then %d", first.PromptTokens, second.PromptTokens)
	}
	if cached := second.PromptTokensDetails.CachedTokens; cached < second.PromptTokens*9/10 {
		t.Fatalf("repeated prompt: %d of %d tokens cached", cached, second.PromptTokens)
	}
	if n := rt.metric(t, "llmd_activator_pd_decisions_total", `decision="disaggregated"`); n < 1 {
		t.Fatalf("no disaggregated request in the activator's metrics (%v)", n)
	}
	if n := rt.metric(t, "llmd_local_ready_replicas", `role="decode"`); n != 2 {
		t.Fatalf("ready decode replicas %v", n)
	}
}

// TestQuickstart is the README's first command: `kn-llmd local` with no
// arguments, driven by the OpenAI Go SDK, then stopped with Ctrl-C.
func TestQuickstart(t *testing.T) {
	rt := start(t, "--sim-time-scale", "0.05")
	exercise(t, rt)
	rt.stop(t)
}

// TestPodCommandRunsProcesses runs the pods as `kn-llmd sim` processes and
// checks that they serve, are logged per pod, and die with the runtime.
func TestPodCommandRunsProcesses(t *testing.T) {
	tmpl := knLLMD + " sim --model {model} --port {port} --role {role}" +
		" --time-scale {time_scale} --profile {sim_profile} --kv-events-endpoint 'tcp://*:{kv_events_port}' {args}"
	rt := start(t, "--sim-time-scale", "0.05", "--pod-command", tmpl, "--grace-period", "5s")
	pods := descendants(rt.cmd.Process.Pid)
	if len(pods) != 3 {
		t.Fatalf("want 3 pod processes, found %v", pods)
	}
	exercise(t, rt)
	for _, name := range []string{"llm-00001-decode-1", "llm-00001-decode-2", "llm-00001-prefill-1"} {
		if !strings.Contains(rt.stderr.String(), "["+name+"] ") {
			t.Errorf("no log line prefixed [%s]", name)
		}
	}
	if !strings.Contains(rt.stdout.String(), "processes from --pod-command") {
		t.Errorf("banner:\n%s", rt.stdout)
	}
	rt.stop(t)
	for _, pid := range pods {
		if alive(pid) {
			t.Errorf("pod process %d outlived the runtime", pid)
		}
	}
}

// TestPodsDieWithAKilledRuntime: even a runtime killed with SIGKILL (no
// chance to clean up) leaves no pod behind: the kernel signals them.
func TestPodsDieWithAKilledRuntime(t *testing.T) {
	tmpl := knLLMD + " sim --model {model} --port {port} --role {role}"
	rt := start(t, "--pod-command", tmpl)
	pods := descendants(rt.cmd.Process.Pid)
	if len(pods) != 3 {
		t.Fatalf("want 3 pod processes, found %v", pods)
	}
	_ = rt.cmd.Process.Kill()
	<-rt.done
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pods {
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("pod process %d outlived a killed runtime", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestInvalidManifestFailsFast: the file, the object and the field are
// named, nothing starts, and the exit status is not zero.
func TestInvalidManifestFailsFast(t *testing.T) {
	raw, err := os.ReadFile("../../config/samples/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(string(raw), "routing-profile: default", "routing-profile: fastest", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, knLLMD, "local", "-f", bad, "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	want := bad + `: Service default/llm: spec.template.metadata.annotations[llm-d.ai/routing-profile]: invalid value "fastest"`
	if !strings.Contains(string(out), want) {
		t.Fatalf("output:\n%s\nwant:\n%s", out, want)
	}
}

// descendants lists the processes under pid (from /proc), waiting briefly
// for them to appear.
func descendants(pid int) []int {
	var out []int
	for range 50 {
		out = out[:0]
		children := map[int][]int{}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			p, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if pp := ppid(p); pp > 0 {
				children[pp] = append(children[pp], p)
			}
		}
		queue := []int{pid}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, c := range children[p] {
				out = append(out, c)
				queue = append(queue, c)
			}
		}
		if len(out) > 0 {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

func ppid(pid int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// alive reports whether a process exists and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}
