//go:build unix

package local

import (
	"os/exec"
	"strings"
	"syscall"
)

// setProcessGroup starts the pod in a process group of its own (and, on
// Linux, has the kernel stop it should the runtime die without cleaning up).
func setProcessGroup(c *exec.Cmd) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	setParentDeathSignal(c.SysProcAttr)
}

func terminateGroup(c *exec.Cmd) { _ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM) }

func killGroup(c *exec.Cmd) { _ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }

// supervised wraps a compound pod command (a && b, a; b, pipes) for sh -c
// so that the whole process group dies with the shell: the kernel's
// parent-death signal (and the runtime's SIGTERM) reaches only the shell,
// whose children would otherwise outlive a runtime killed with SIGKILL
// (issue 17, failure 9). The command runs in the background while the
// shell waits, so that a trapped signal interrupts the wait; the trap
// passes SIGTERM to the group and waits for it. A simple command needs
// none of this: it replaces the shell (exec) and gets the signal itself.
func supervised(line string) string {
	if strings.HasPrefix(strings.TrimSpace(line), "exec ") {
		return line
	}
	return `trap 'trap "" TERM HUP INT; kill -TERM 0 2>/dev/null; wait; exit 143' TERM HUP INT
(
` + line + `
) &
wait $!`
}
