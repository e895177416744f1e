//go:build !unix

package local

import "os/exec"

func setProcessGroup(*exec.Cmd) {}

func terminateGroup(c *exec.Cmd) { _ = c.Process.Kill() }

func killGroup(c *exec.Cmd) { _ = c.Process.Kill() }

func supervised(line string) string { return line }
