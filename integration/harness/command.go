package harness

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// This file holds what the commands built on the harness (go run ./bench,
// go run ./integration/soak) share besides the cluster.

// Sleep sleeps for d or until ctx is done, and returns ctx's error then.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// EnvWithoutPG is the process environment without PG* variables (so that
// neither libpq nor pgconn in a child picks up the caller's settings),
// followed by extra.
func EnvWithoutPG(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// CancelOnSignal makes SIGINT and SIGTERM cancel a command's run so that it
// unwinds and cleans up. If the run has not ended 30s later, or on a second
// signal, it calls cleanup itself and exits with status 130. logf reports
// what it does.
func CancelOnSignal(cancel context.CancelFunc, cleanup func(), logf func(format string, args ...any)) {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		logf("received %v: stopping and cleaning up (again to force)", s)
		cancel()
		select {
		case <-sig:
		case <-time.After(30 * time.Second):
		}
		logf("forcing cleanup")
		cleanup()
		os.Exit(130)
	}()
}
