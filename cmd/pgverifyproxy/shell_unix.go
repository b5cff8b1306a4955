//go:build unix

package main

import (
	"context"
	"os/exec"
	"syscall"
	"time"
)

// shellCommand runs command with /bin/sh in a process group of its own,
// so that a timeout stops what the shell started too.
func shellCommand(ctx context.Context, command string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}
