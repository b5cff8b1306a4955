package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// passwordSource is where a route's stored password comes from: at most one
// of a file, an environment variable and a command.
type passwordSource struct {
	File string
	Env  string
	// Command is run through the shell for each login that needs the
	// password (or once per TTL); its first output line is the password.
	Command string
	// TTL caches the command's password this long; 0 runs it every time.
	TTL time.Duration
	// Timeout bounds one run of the command.
	Timeout time.Duration
}

// storedPassword returns the route's password source for the proxy's own
// logins, or nil when clients give their own password, and a function that
// forgets a cached password (called when the server refused a login made
// with it). A password file is read (and its mode checked) at each login,
// so rotating it needs no restart; an environment variable is read once, at
// start; a command runs as passwordCommand says.
func storedPassword(src passwordSource, log *slog.Logger) (get func() ([]byte, error), forget func() bool, err error) {
	switch {
	case src.File != "":
		if _, err := readPasswordFile(src.File); err != nil {
			return nil, nil, err
		}
		return func() ([]byte, error) { return readPasswordFile(src.File) }, nil, nil
	case src.Env != "":
		v := os.Getenv(src.Env)
		if v == "" {
			return nil, nil, fmt.Errorf("password_env names %s, which is not set or empty", src.Env)
		}
		return func() ([]byte, error) { return []byte(v), nil }, nil, nil
	case src.Command != "":
		pc := &passwordCommand{command: src.Command, ttl: src.TTL, timeout: src.Timeout, log: log, runs: passwordRuns}
		return pc.password, pc.forget, nil
	}
	return nil, nil, nil
}

// readPasswordFile reads the first line of a 0600 (or stricter) file.
func readPasswordFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("password file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("password file %s has permissions %04o: other users could read it; chmod 0600 %s", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	pw := bytes.Clone(line)
	for i := range b {
		b[i] = 0
	}
	if len(pw) == 0 {
		return nil, errors.New("password file " + path + " is empty")
	}
	return pw, nil
}

// defaultPasswordCommandTimeout bounds one run of password_command: cloud
// CLIs that mint tokens take a second or two.
const defaultPasswordCommandTimeout = 10 * time.Second

// defaultPasswordCommandTTL is how long a password_command's password is
// reused by default: 5 minutes, well inside the lifetime of the tokens the
// documented commands mint (RDS IAM: 15 minutes; Cloud SQL IAM and Azure
// Entra: an hour), and short enough that a rotated secret is picked up
// soon. A login the server refuses drops the cached password at once.
const defaultPasswordCommandTTL = 5 * time.Minute

// maxPasswordRuns bounds the password_command runs at a time in the whole
// process, over all routes: a flood of connections to several routes
// cannot start more processes than this.
const maxPasswordRuns = 2

// passwordRuns is the process-wide semaphore of password_command runs.
var passwordRuns = make(chan struct{}, maxPasswordRuns)

// passwordFailureHold is how long a failed password_command run answers
// the logins that follow with its error instead of running again: a
// broken command (no credentials, a quota hit) is not run once per
// connection.
const passwordFailureHold = 5 * time.Second

// passwordCommand runs a command for a password: a token minted by a cloud
// CLI (RDS IAM, Azure Entra, Cloud SQL IAM), or a secret manager's client.
// Concurrent logins share one run (even with a TTL of 0, where a run's
// password serves only the logins that waited for it); runs over all
// routes are bounded by runs; a failure is held for passwordFailureHold.
type passwordCommand struct {
	command string
	ttl     time.Duration
	timeout time.Duration
	log     *slog.Logger
	runs    chan struct{}

	mu          sync.Mutex
	cached      []byte
	expires     time.Time
	failed      error
	failedUntil time.Time
	flight      *passwordFlight
}

// passwordFlight is one run of the command and the logins waiting for it.
type passwordFlight struct {
	done    chan struct{}
	pw      []byte
	err     error
	waiters int // logins that still have to copy pw; the last zeroes it
}

// password returns the cached password while it is fresh, the error of a
// run that failed within passwordFailureHold, or the password of the run in
// flight, starting one when none is.
func (pc *passwordCommand) password() ([]byte, error) {
	pc.mu.Lock()
	now := time.Now()
	if pc.cached != nil && now.Before(pc.expires) {
		defer pc.mu.Unlock()
		return bytes.Clone(pc.cached), nil
	}
	if pc.failed != nil && now.Before(pc.failedUntil) {
		defer pc.mu.Unlock()
		return nil, pc.failed
	}
	f := pc.flight
	leader := f == nil
	if leader {
		f = &passwordFlight{done: make(chan struct{})}
		pc.flight = f
	}
	f.waiters++
	pc.mu.Unlock()

	if leader {
		pc.fly(f)
	} else {
		<-f.done
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	f.waiters--
	if f.err != nil {
		return nil, f.err
	}
	pw := bytes.Clone(f.pw)
	if f.waiters == 0 {
		zeroBytes(f.pw)
	}
	return pw, nil
}

// fly runs the command for a flight (within the process-wide bound) and
// publishes its result.
func (pc *passwordCommand) fly(f *passwordFlight) {
	pc.runs <- struct{}{}
	pw, err := pc.run()
	<-pc.runs
	pc.mu.Lock()
	defer pc.mu.Unlock()
	f.pw, f.err = pw, err
	pc.flight = nil
	if err != nil {
		pc.failed, pc.failedUntil = err, time.Now().Add(passwordFailureHold)
		pc.log.Warn("password_command failed; logins in the next "+passwordFailureHold.String()+" get this error without a new run", "error", err)
	} else {
		pc.failed = nil
		if pc.ttl > 0 {
			zeroBytes(pc.cached)
			pc.cached, pc.expires = bytes.Clone(pw), time.Now().Add(pc.ttl)
		}
	}
	close(f.done)
}

// forget drops the cached password, so that the next login runs the
// command again: the server refused a login made with it (a revoked or
// rotated secret, an expired token).
func (pc *passwordCommand) forget() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.cached == nil {
		return false
	}
	zeroBytes(pc.cached)
	pc.cached = nil
	pc.log.Info("the server refused a login with password_command's cached password: running it again")
	return true
}

// run runs the command once: its first line of standard output is the
// password. Its standard error is logged, with the password masked; a
// non-zero exit, an empty first line or the timeout is an error that names
// the command, never the password.
func (pc *passwordCommand) run() ([]byte, error) {
	timeout := pc.timeout
	if timeout <= 0 {
		timeout = defaultPasswordCommandTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := shellCommand(ctx, pc.command)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	out := stdout.Bytes()
	line, _, _ := bytes.Cut(out, []byte("\n"))
	pw := bytes.Clone(bytes.TrimSuffix(line, []byte("\r")))
	zeroBytes(out)
	pc.logStderr(stderr.Bytes(), pw)
	switch {
	case ctx.Err() != nil:
		zeroBytes(pw)
		return nil, fmt.Errorf("password_command did not finish within %s (it was stopped): check that it runs without a prompt; the command is %s", timeout, strconv.Quote(pc.command))
	case err != nil:
		zeroBytes(pw)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("password_command failed (%s; its standard error is in the log): %s", ee.ProcessState, strconv.Quote(pc.command))
		}
		return nil, fmt.Errorf("password_command could not be run: %v", err)
	case len(pw) == 0:
		return nil, fmt.Errorf("password_command printed no password on the first line of its output: %s", strconv.Quote(pc.command))
	}
	pc.log.Debug("password_command ran", "took", time.Since(start).Round(time.Millisecond).String())
	return pw, nil
}

// logStderr logs the command's standard error, one line a record, with any
// appearance of the password masked and control bytes escaped.
func (pc *passwordCommand) logStderr(b, pw []byte) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 0; sc.Scan() && n < 20; n++ {
		line := sc.Text()
		if len(pw) > 0 {
			line = strings.ReplaceAll(line, string(pw), "[password]")
		}
		if line = strings.TrimSpace(line); line != "" {
			pc.log.Warn("password_command wrote to its standard error", "line", escapeControl(line))
		}
	}
	zeroBytes(b)
}

// escapeControl quotes control bytes so that a line cannot forge log records
// or drive a terminal.
func escapeControl(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

func zeroBytes(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
