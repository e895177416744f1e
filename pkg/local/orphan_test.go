//go:build linux

package local

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// orphanCommands are pod commands of the shapes issue 17's failure 9 left
// behind: compound ones, where the shell forks the server instead of
// becoming it, and a simple one for comparison.
var orphanCommands = []string{
	"sleep 300 && echo never",
	"true; sleep 301",
	"sleep 302 | cat",
	"sleep 303",
}

// fakeRuntime is the runtime's process path in a process of its own:
// it starts one procRunner per command, writes each shell's pid (its
// process group) to dir/pgids, and waits to be killed.
func fakeRuntime(dir string) {
	var pgids []string
	for i, c := range orphanCommands {
		line := c
		if !strings.ContainsAny(line, ";&|") {
			line = "exec " + line // as expandPodCommand makes a simple command
		}
		p := newProcRunner(podCommand{line: line}, fmt.Sprintf("pod-%d", i), io.Discard)
		if _, _, err := p.start(); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		pgids = append(pgids, strconv.Itoa(p.proc.Process.Pid))
	}
	_ = os.WriteFile(filepath.Join(dir, "pgids"), []byte(strings.Join(pgids, " ")), 0o644)
	select {}
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

// TestPodsDieWithAKilledRuntime: issue 17's failure 9. The runtime is
// killed with SIGKILL (no cleanup runs); every process of every pod, whatever
// the shape of its command, is gone within seconds.
func TestPodsDieWithAKilledRuntime(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rt := exec.Command(exe, "-test.run=^$")
	rt.Env = append(os.Environ(), "LOCAL_TEST_RUNTIME="+dir)
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	var pgids []int
	deadline := time.Now().Add(20 * time.Second)
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "pgids")); err == nil {
			for _, f := range strings.Fields(string(raw)) {
				n, _ := strconv.Atoi(f)
				pgids = append(pgids, n)
			}
			break
		}
		if time.Now().After(deadline) {
			_ = rt.Process.Kill()
			t.Fatal("the runtime never started its pods")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every pod's server is running (sleep is the "server").
	for i, g := range pgids {
		for len(groupMembers(g)) == 0 || !hasSleep(groupMembers(g)) {
			if time.Now().After(deadline) {
				t.Fatalf("pod %d (%q) never started its server", i, orphanCommands[i])
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := rt.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = rt.Wait()
	deadline = time.Now().Add(10 * time.Second)
	for i, g := range pgids {
		for len(groupMembers(g)) > 0 {
			if time.Now().After(deadline) {
				left := groupMembers(g)
				for _, pid := range left {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				t.Errorf("pod %d (%q): processes %v outlived the runtime by 10s", i, orphanCommands[i], left)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func hasSleep(pids []int) bool {
	for _, pid := range pids {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "sleep" {
			return true
		}
	}
	return false
}
