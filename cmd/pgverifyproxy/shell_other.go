//go:build !unix

package main

import (
	"context"
	"os/exec"
	"time"
)

// shellCommand runs command with cmd.exe.
func shellCommand(ctx context.Context, command string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "cmd.exe", "/C", command)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}
