package local

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Placeholders of a --pod-command template.
var placeholders = []string{
	"{model}", "{served_model_name}", "{port}", "{args}", "{role}", "{name}",
	"{kv_events_port}", "{kv_events_collector}", "{namespace}", "{revision}", "{time_scale}", "{sim_profile}",
}

// CheckPodCommand reports an unknown {placeholder} in a pod command
// template, and a template that has no {port}: the runtime must tell each
// pod where to listen.
func CheckPodCommand(tmpl string) error {
	if strings.TrimSpace(tmpl) == "" {
		return errors.New("empty pod command")
	}
	rest := tmpl
	for _, p := range placeholders {
		rest = strings.ReplaceAll(rest, p, "")
	}
	if i := strings.Index(rest, "{"); i >= 0 {
		if j := strings.Index(rest[i:], "}"); j > 0 {
			return fmt.Errorf("unknown placeholder %s (known: %s)", rest[i:i+j+1], strings.Join(placeholders, " "))
		}
	}
	if !strings.Contains(tmpl, "{port}") {
		return errors.New("the template must contain {port}: each pod listens on a port the runtime picks")
	}
	return nil
}

// podCommand is one pod's expanded command.
type podCommand struct {
	line   string // for sh -c
	port   int
	kvPort int // 0 when the template has no {kv_events_port}
	env    []string
}

// expandPodCommand fills a template for one pod. Values are shell-quoted
// only where they need it, so that {port} also works inside a quoted JSON
// argument such as '{"endpoint":"tcp://*:{kv_events_port}"}'. collector is
// the runtime's bound KV-event endpoint ({kv_events_collector}), empty when
// it binds none.
func expandPodCommand(tmpl string, svc *Service, name, role string, timeScale float64, collector string) (podCommand, error) {
	port, err := freePort()
	if err != nil {
		return podCommand{}, err
	}
	pc := podCommand{port: port}
	if strings.Contains(tmpl, "{kv_events_port}") {
		if pc.kvPort, err = freePort(); err != nil {
			return podCommand{}, err
		}
	}
	args := make([]string, len(svc.Args), len(svc.Args)+4)
	for i, a := range svc.Args {
		args[i] = shellQuote(a)
	}
	// A chosen step budget (the args set none) goes to the engine as the
	// webhook would put it in a pod's args: prefill pods their own.
	if b := svc.StepBudget; b != nil {
		n := b.Decode.MaxNumBatchedTokens
		if role == "prefill" && b.Prefill.MaxNumBatchedTokens > 0 {
			n = b.Prefill.MaxNumBatchedTokens
		}
		args = append(args, "--max-num-batched-tokens", strconv.Itoa(n))
		if b.Decode.MaxNumSeqs > 0 { // only when the args set none
			args = append(args, "--max-num-seqs", strconv.Itoa(b.Decode.MaxNumSeqs))
		}
	}
	profile := svc.Spec.SimProfile
	r := strings.NewReplacer(
		"{model}", shellQuote(svc.ModelPath),
		"{served_model_name}", shellQuote(svc.Model),
		"{port}", strconv.Itoa(port),
		"{args}", strings.Join(args, " "),
		"{role}", role,
		"{name}", shellQuote(name),
		"{kv_events_port}", strconv.Itoa(pc.kvPort),
		"{kv_events_collector}", collector,
		"{namespace}", shellQuote(svc.Namespace),
		"{revision}", shellQuote(svc.Revision),
		"{time_scale}", strconv.FormatFloat(timeScale, 'g', -1, 64),
		"{sim_profile}", shellQuote(profile),
	)
	pc.line = r.Replace(tmpl)
	if !strings.ContainsAny(pc.line, ";&|\n") && !strings.HasPrefix(strings.TrimSpace(pc.line), "exec ") {
		// A simple command replaces the shell, so that signals, and the
		// kernel's parent-death signal, reach the server itself.
		pc.line = "exec " + strings.TrimSpace(pc.line)
	}
	// What Kubernetes and Knative give a pod, and vLLM's hash seed pinned
	// to the router's (unless the manifest sets its own).
	pc.env = append(pc.env, "PORT="+strconv.Itoa(port), "POD_NAME="+name, "POD_NAMESPACE="+svc.Namespace,
		"POD_IP=127.0.0.1", "K_SERVICE="+svc.Name, "K_REVISION="+svc.Revision, "PYTHONHASHSEED=0")
	for _, e := range svc.Env {
		if e.ValueFrom == nil {
			pc.env = append(pc.env, e.Name+"="+expandEnv(e.Value, svc.Env))
		}
	}
	return pc, nil
}

// expandEnv resolves $(VAR) references to earlier variables, as
// Kubernetes does for container env.
func expandEnv(v string, env []corev1.EnvVar) string {
	for _, e := range env {
		v = strings.ReplaceAll(v, "$("+e.Name+")", e.Value)
	}
	return v
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@+%", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before the pod binds it; the pod then fails and is restarted on
// a new port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// procRunner runs a pod as a process in its own process group, so that
// stopping it reaches every process it started and a Ctrl-C in the
// terminal reaches only the runtime, which then stops the pods in order.
type procRunner struct {
	cmd  podCommand
	name string
	out  io.Writer

	proc *exec.Cmd
	done chan struct{}
	err  error
	// stopped is set before a requested stop, so the exit is not an error.
	mu      sync.Mutex
	stopped bool
}

func newProcRunner(cmd podCommand, name string, out io.Writer) *procRunner {
	return &procRunner{cmd: cmd, name: name, out: out, done: make(chan struct{})}
}

func (p *procRunner) start() (string, string, error) {
	c := exec.Command("/bin/sh", "-c", supervised(p.cmd.line))
	c.Env = append(os.Environ(), p.cmd.env...)
	w := &prefixWriter{prefix: "[" + p.name + "] ", out: p.out}
	c.Stdout, c.Stderr = w, w
	c.WaitDelay = 2 * time.Second
	setProcessGroup(c)
	if err := c.Start(); err != nil {
		close(p.done)
		return "", "", fmt.Errorf("start %q: %w", p.cmd.line, err)
	}
	p.proc = c
	go func() {
		defer close(p.done)
		err := c.Wait()
		w.flush()
		p.mu.Lock()
		if !p.stopped {
			if err == nil {
				err = errors.New("exited with status 0")
			}
			p.err = err
		}
		p.mu.Unlock()
	}()
	kv := ""
	if p.cmd.kvPort > 0 {
		kv = fmt.Sprintf("tcp://127.0.0.1:%d", p.cmd.kvPort)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", p.cmd.port), kv, nil
}

func (p *procRunner) exited() <-chan struct{} { return p.done }

func (p *procRunner) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// stop sends SIGTERM to the pod's process group, waits up to grace, then
// sends SIGKILL to the group.
func (p *procRunner) stop(grace time.Duration, force <-chan struct{}) {
	if p.proc == nil {
		<-p.done
		return
	}
	select {
	case <-p.done:
		return // already gone (and reaped: its pid may be reused)
	default:
	}
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	terminateGroup(p.proc)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		// The leader is gone; make sure nothing it started lingers.
		killGroup(p.proc)
		return
	case <-t.C:
	case <-force:
	}
	killGroup(p.proc)
	<-p.done
}

// prefixWriter writes whole lines, each prefixed with the pod's name; lines
// of several pods never interleave mid-line.
type prefixWriter struct {
	prefix string
	out    io.Writer
	mu     sync.Mutex
	buf    []byte
}

var outMu sync.Mutex // one line at a time across all pods

func (w *prefixWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(w.buf[:i+1])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // a very long line without a newline
		w.emit(append(w.buf, '\n'))
		w.buf = nil
	}
	return len(b), nil
}

func (w *prefixWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(append(w.buf, '\n'))
		w.buf = nil
	}
}

func (w *prefixWriter) emit(line []byte) {
	outMu.Lock()
	defer outMu.Unlock()
	_, _ = io.WriteString(w.out, w.prefix)
	_, _ = w.out.Write(line)
}
