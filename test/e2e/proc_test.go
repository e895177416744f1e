package e2e_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one host process of the control plane: started in its own
// process group, its output in a log file, stopped by PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	// grace is how long stop waits after SIGTERM; 0 means stopAll's.
	grace time.Duration
	done  chan struct{} // closed when the process has exited
	err   error         // Wait's result, once done is closed
}

// startProc starts bin with args and extra environment, logging to
// logDir/name.log.
func startProc(logDir, name, bin string, args, env []string) (*proc, error) {
	path := filepath.Join(logDir, name+".log")
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Env = append(os.Environ(), env...)
	// Its own process group, so that stopping it reaches anything it forks.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: path, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then sends
// SIGKILL and waits for the exit.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	fmt.Fprintf(os.Stderr, "e2e: %s (pid %d) still running %v after SIGTERM: SIGKILL\n", p.name, pid, grace)
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		fmt.Fprintf(os.Stderr, "e2e: %s (pid %d) still running after SIGKILL\n", p.name, pid)
	}
}

// tail is the end of the process's log, for failure messages.
func (p *proc) tail(n int) string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	if len(data) > n {
		data = data[len(data)-n:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return string(data)
}

// procs is the set of processes to stop.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

func (ps *procs) add(p *proc) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.list = append(ps.list, p)
}

// stopAll stops every process at once (they are independent clients of
// the API server) and returns when all have exited.
func (ps *procs) stopAll(grace time.Duration) {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := grace
			if p.grace > 0 {
				g = p.grace
			}
			p.stop(g)
		}()
	}
	wg.Wait()
}

// freePorts is n distinct free ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// hostIP is a non-loopback IPv4 address of this machine: the API server
// refuses loopback endpoints for the webhooks it calls.
func hostIP() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.IsLoopback() || n.IP.To4() == nil || n.IP.IsLinkLocalUnicast() {
			continue
		}
		return n.IP.String(), nil
	}
	return "", errors.New("no non-loopback IPv4 address: the API server cannot reach webhooks on this host")
}

func itoa(i int) string { return strconv.Itoa(i) }

// reaper is a small shell process that outlives this test binary if it
// crashes (a panic in another goroutine, the -timeout alarm, a signal): it
// reads process-group IDs from a pipe and, when the pipe closes without a
// "clear" line, kills each group with SIGKILL. The normal path stops
// everything itself and then clears the list.
type reaper struct {
	cmd *exec.Cmd
	w   io.WriteCloser
	mu  sync.Mutex
}

const reaperScript = `pids=""
while read -r p; do
	if [ "$p" = clear ]; then pids=""; else pids="$pids $p"; fi
done
for p in $pids; do kill -9 -$p 2>/dev/null; done
exit 0`

func startReaper() (*reaper, error) {
	cmd := exec.Command("/bin/sh", "-c", reaperScript)
	// Not in this binary's process group: a ^C to the group must not end
	// it before it has done its work.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the process reaper: %w", err)
	}
	return &reaper{cmd: cmd, w: w}, nil
}

// watch adds a process group (the PID of its leader).
func (r *reaper) watch(pgid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintln(r.w, pgid)
}

// done tells the reaper that everything was stopped, and waits for it.
func (r *reaper) done() {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintln(r.w, "clear")
	r.w.Close()
	_ = r.cmd.Wait()
}

// childrenNamed returns the PIDs of this process's children whose command
// name is one of names (envtest's etcd and kube-apiserver, which it starts
// in their own process groups).
func childrenNamed(names ...string) []int {
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var pids []int
	for _, d := range dirs {
		data, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(data)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		comm := s[open+1 : closing]
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(self) || !slices.Contains(names, comm) {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(s[:open])); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
