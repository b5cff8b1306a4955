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
// logins, or nil when clients give their own password. A password file is
// read (and its mode checked) at each login, so rotating it needs no
// restart; an environment variable is read once, at start; a command runs
// at each login (see passwordCommand).
func storedPassword(src passwordSource, log *slog.Logger) (func() ([]byte, error), error) {
	switch {
	case src.File != "":
		if _, err := readPasswordFile(src.File); err != nil {
			return nil, err
		}
		return func() ([]byte, error) { return readPasswordFile(src.File) }, nil
	case src.Env != "":
		v := os.Getenv(src.Env)
		if v == "" {
			return nil, fmt.Errorf("password_env names %s, which is not set or empty", src.Env)
		}
		return func() ([]byte, error) { return []byte(v), nil }, nil
	case src.Command != "":
		pc := &passwordCommand{command: src.Command, ttl: src.TTL, timeout: src.Timeout, log: log}
		return pc.password, nil
	}
	return nil, nil
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

// passwordCommand runs a command for a password: a token minted by a cloud
// CLI (RDS IAM, Azure Entra, Cloud SQL IAM), or a secret manager's client.
type passwordCommand struct {
	command string
	ttl     time.Duration
	timeout time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	cached  []byte
	expires time.Time
}

// password returns the cached password while it is fresh, else runs the
// command.
func (pc *passwordCommand) password() ([]byte, error) {
	if pc.ttl > 0 {
		pc.mu.Lock()
		defer pc.mu.Unlock()
		if pc.cached != nil && time.Now().Before(pc.expires) {
			return bytes.Clone(pc.cached), nil
		}
	}
	pw, err := pc.run()
	if err != nil {
		return nil, err
	}
	if pc.ttl > 0 {
		zeroBytes(pc.cached)
		pc.cached, pc.expires = bytes.Clone(pw), time.Now().Add(pc.ttl)
	}
	return pw, nil
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
