package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// This file holds what the long runs built on the harness (go run ./bench,
// the soak of integration/soakrun) share besides the cluster.

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

// Process is a started child process whose exit is watched.
type Process struct {
	// Cmd is the command, started.
	Cmd  *exec.Cmd
	done chan struct{}
	err  error // what Wait returned; set before done is closed
	once sync.Once
}

// StartProcess starts cmd and watches for its exit.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is what waiting for the process returned (nil for exit status 0);
// call it once Exited reports true.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Stop sends sig (SIGTERM to stop it, SIGQUIT for a Go program's goroutine
// dump), waits up to grace for the exit, then kills the process. Only the
// first call acts, and only on a running process; it reports whether it
// had to kill.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) (killed bool) {
	p.once.Do(func() {
		if p.Exited() {
			return
		}
		_ = p.Cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(grace):
			killed = true
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
	})
	return killed
}

// Cleanups is a stack of functions, each run at most once, last in first
// out: what a command undoes at its end or when it is interrupted. Its
// methods may be called from several goroutines.
type Cleanups struct {
	mu  sync.Mutex
	fns []func()
}

// Add pushes fn.
func (c *Cleanups) Add(fn func()) {
	var once sync.Once
	c.mu.Lock()
	c.fns = append(c.fns, func() { once.Do(fn) })
	c.mu.Unlock()
}

// Run pops and runs every function, the last added first.
func (c *Cleanups) Run() {
	for {
		c.mu.Lock()
		if len(c.fns) == 0 {
			c.mu.Unlock()
			return
		}
		fn := c.fns[len(c.fns)-1]
		c.fns = c.fns[:len(c.fns)-1]
		c.mu.Unlock()
		fn()
	}
}

// errOutsideModule is ModuleRoot's error outside a Go module.
var errOutsideModule = errors.New("not inside the pgverifyproxy module")

// ModuleRoot is the directory of the go.mod the command runs in.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errOutsideModule
	}
	return filepath.Dir(gomod), nil
}

// BuildProxy builds ./cmd/pgverifyproxy of the module in root into out,
// with flags before the go build arguments it sets (e.g. -trimpath).
func BuildProxy(ctx context.Context, root, out string, flags ...string) error {
	args := append(append([]string{"build"}, flags...), "-o", out, "./cmd/pgverifyproxy")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/pgverifyproxy: %w\n%s", err, b)
	}
	return nil
}
