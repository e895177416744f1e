package local

import "syscall"

// setParentDeathSignal makes the kernel send SIGTERM to the pod's leader if
// the runtime dies abruptly (SIGKILL), so no pod outlives it.
func setParentDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGTERM }
