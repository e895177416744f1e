//go:build unix

package local

import (
	"os/exec"
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
