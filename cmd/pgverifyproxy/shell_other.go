//go:build !unix && !windows

package main

import (
	"context"
	"errors"
	"os/exec"
	"runtime"
)

// shellCommand has no shell to run command with on this system: the
// command it returns fails to start, saying so.
func shellCommand(context.Context, string) *exec.Cmd {
	return &exec.Cmd{Err: errors.New("no shell to run it with on " + runtime.GOOS)}
}
