package local

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	llmdtest "github.com/llmd-kn/llmd-kn/internal/testutil"
)

// chromium finds a headless-capable Chromium: Debian's /usr/bin/chromium,
// or chromium on the PATH.
func chromium() string {
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestStatusPageInChromium loads the status page in headless Chromium and
// checks that its script fetched /status.json and rendered the live
// numbers: every pod by name and role, and the tokens the requests sent.
func TestStatusPageInChromium(t *testing.T) {
	bin := chromium()
	if bin == "" {
		t.Skip("Chromium not found (/usr/bin/chromium or chromium on the PATH): install it with hack/install-chromium.sh (make test does)")
	}
	rt := newRuntime(t, string(QuickstartYAML), nil)
	waitReady(t, rt)
	prompt := strings.Repeat("Knative serves LLMs with llm-d. ", 120)
	for range 3 {
		if code, body := complete(t, rt.APIURL(), "", "meta-llama/Llama-3.1-8B-Instruct", prompt, 8); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--dump-dom", "--virtual-time-budget=3000", rt.StatusURL())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr llmdtest.SyncBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // Chromium's helpers, if any linger
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	t.Logf("chromium rendered the page in %v", time.Since(start).Round(time.Millisecond))
	dom := string(out)
	for _, want := range []string{
		`data-service="default/llm"`,
		`data-pod="llm-00001-decode-1"`, `data-pod="llm-00001-decode-2"`, `data-pod="llm-00001-prefill-1"`,
		"decode pods: 2 ready / 2 desired", "prefill pods: 1 ready / 1 desired",
		"meta-llama/Llama-3.1-8B-Instruct",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %s", want)
		}
	}
	num := func(re string) int {
		m := regexp.MustCompile(re).FindStringSubmatch(dom)
		if m == nil {
			t.Fatalf("the rendered page has no %s:\n%s", re, dom)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	if n := num(`data-k="promptTokens">(\d+)<`); n < 3*100 {
		t.Errorf("prompt tokens shown: %d", n)
	}
	if n := num(`data-k="cachedTokens">(\d+)<`); n == 0 {
		t.Error("no cached tokens shown after a repeated prompt")
	}
	if n := num(`data-k="requests">(\d+)<`); n != 3 {
		t.Errorf("requests shown: %d", n)
	}
	if n := num(`data-k="disaggregated">(\d+)<`); n == 0 {
		t.Error("no P/D request shown")
	}
	podTokens := regexp.MustCompile(`data-k="podPromptTokens">(\d+)<`).FindAllStringSubmatch(dom, -1)
	total := 0
	for _, m := range podTokens {
		n, _ := strconv.Atoi(m[1])
		total += n
	}
	if len(podTokens) != 3 || total == 0 {
		t.Errorf("pods' prompt tokens: %v", podTokens)
	}
	if n := num(`data-refreshes="(\d+)"`); n < 2 {
		t.Errorf("the page refreshed %d times in 3 s of virtual time, want it polling", n)
	}
}
