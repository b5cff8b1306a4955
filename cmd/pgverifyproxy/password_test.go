package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuf is a log destination safe for concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rotatingCommand writes a script that prints token-1, token-2, ... on
// successive runs (a counter in dir), and a line on its standard error that
// holds the token.
func rotatingCommand(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "token.sh")
	body := fmt.Sprintf(`#!/bin/sh
n=$(cat %[1]s/n 2>/dev/null || echo 0)
n=$((n+1))
echo $n > %[1]s/n
echo "minted token-$n" >&2
printf 'token-%%s\nsecond line ignored\n' $n
`, dir)
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	return script
}

func TestPasswordCommand(t *testing.T) {
	tests := []struct {
		name    string
		command func(t *testing.T) string
		ttl     time.Duration
		timeout time.Duration
		// want are the passwords of three logins in a row; wantErr the
		// error of the first (then want is empty).
		want    []string
		wantErr string
		// wantLog is in the log; the log never holds a password.
		wantLog string
	}{
		{name: "a rotating token, run for each login", command: rotatingCommand,
			want: []string{"token-1", "token-2", "token-3"}, wantLog: `line="minted [password]"`},
		{name: "cached for the TTL", command: rotatingCommand, ttl: time.Hour,
			want: []string{"token-1", "token-1", "token-1"}},
		{name: "a failing command", command: func(*testing.T) string { return `p=not-a; echo "$p-password"; echo 'no credentials' >&2; exit 3` },
			wantErr: "password_command failed (exit status 3", wantLog: "no credentials"},
		{name: "a command that prints nothing", command: func(*testing.T) string { return "true" },
			wantErr: "printed no password"},
		{name: "a command that hangs", command: func(*testing.T) string { return "sleep 30" }, timeout: 300 * time.Millisecond,
			wantErr: "did not finish within 300ms"},
		{name: "a hanging command that keeps its output open", command: func(*testing.T) string { return "sleep 30 & echo pw; wait" }, timeout: 300 * time.Millisecond,
			wantErr: "did not finish within 300ms"},
		{name: "control bytes on standard error are escaped", command: func(*testing.T) string { return `printf 'a\033[8mb\n' >&2; echo pw` },
			want: []string{"pw"}, wantLog: `a\x1b[8mb`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuf
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			get, _, err := storedPassword(passwordSource{Command: tc.command(t), TTL: tc.ttl, Timeout: tc.timeout}, log)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			pw, err := get()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want error %q", pw, err, tc.wantErr)
				}
				if took := time.Since(start); took > 10*time.Second {
					t.Fatalf("the error took %s", took)
				}
				if strings.Contains(err.Error(), "not-a-password") {
					t.Fatalf("the error shows the command's output: %v", err)
				}
			} else {
				got := []string{}
				for i := range tc.want {
					if i > 0 {
						if pw, err = get(); err != nil {
							t.Fatal(err)
						}
					}
					got = append(got, string(pw))
				}
				if strings.Join(got, ",") != strings.Join(tc.want, ",") {
					t.Fatalf("passwords %v, want %v", got, tc.want)
				}
				for _, p := range got {
					if strings.Contains(logs.String(), p) {
						t.Fatalf("the log holds the password %q:\n%s", p, logs.String())
					}
				}
			}
			if !strings.Contains(logs.String(), tc.wantLog) {
				t.Fatalf("log lacks %q:\n%s", tc.wantLog, logs.String())
			}
		})
	}
}

// overlapCommand writes a script that takes half a second, counts its runs
// in dir/runs and records in dir/overlap any run that started while another
// was still going (a mkdir lock), then prints token-N.
func overlapCommand(t *testing.T) (command, dir string) {
	t.Helper()
	dir = t.TempDir()
	script := filepath.Join(dir, "token.sh")
	body := fmt.Sprintf(`#!/bin/sh
mkdir %[1]s/lock 2>/dev/null || echo overlap >> %[1]s/overlap
echo run >> %[1]s/runs
sleep 0.5
n=$(wc -l < %[1]s/runs)
rmdir %[1]s/lock 2>/dev/null
echo "token-$n"
`, dir)
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	return script, dir
}

// lines counts the lines of a file (0 when it does not exist).
func lines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// TestPasswordCommandStorm: 30 logins at once share one run of the
// command, with a TTL of 0 as with the default; the logins after it start
// one new run; a failing command is not run again for passwordFailureHold;
// forget makes the next login run it again.
func TestPasswordCommandStorm(t *testing.T) {
	for _, ttl := range []time.Duration{0, defaultPasswordCommandTTL} {
		t.Run(fmt.Sprintf("ttl %s", ttl), func(t *testing.T) {
			command, dir := overlapCommand(t)
			get, forget, err := storedPassword(passwordSource{Command: command, TTL: ttl}, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			storm := func() []string {
				var wg sync.WaitGroup
				got := make([]string, 30)
				for i := range got {
					wg.Add(1)
					go func() {
						defer wg.Done()
						pw, err := get()
						if err != nil {
							got[i] = "error: " + err.Error()
							return
						}
						got[i] = string(pw)
					}()
				}
				wg.Wait()
				return got
			}
			for i, pw := range storm() {
				if pw != "token-1" {
					t.Fatalf("login %d got %q, want token-1 (one shared run)", i, pw)
				}
			}
			if n := lines(t, filepath.Join(dir, "runs")); n != 1 {
				t.Fatalf("30 concurrent logins ran the command %d times, want 1", n)
			}
			want := "token-2"
			if ttl > 0 {
				want = "token-1"
			}
			for i, pw := range storm() {
				if pw != want {
					t.Fatalf("second storm, login %d got %q, want %s", i, pw, want)
				}
			}
			forget()
			if pw, err := get(); err != nil || string(pw) == want {
				t.Fatalf("after forget: %q, %v; want a new run", pw, err)
			}
			if n := lines(t, filepath.Join(dir, "overlap")); n != 0 {
				t.Fatalf("%d runs overlapped another", n)
			}
		})
	}
	t.Run("a failure is held", func(t *testing.T) {
		dir := t.TempDir()
		command := fmt.Sprintf("echo run >> %s/runs; exit 1", dir)
		get, _, err := storedPassword(passwordSource{Command: command}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			if _, err := get(); err == nil || !strings.Contains(err.Error(), "password_command failed") {
				t.Fatalf("login %d: %v, want the command's failure", i, err)
			}
		}
		if n := lines(t, filepath.Join(dir, "runs")); n != 1 {
			t.Fatalf("5 logins after a failure ran the command %d times, want 1", n)
		}
	})
}

// TestPasswordCommandRunsAreBoundedOverRoutes: routes each with their own
// command, all asked at once, never run more than maxPasswordRuns commands
// at a time.
func TestPasswordCommandRunsAreBoundedOverRoutes(t *testing.T) {
	dir := t.TempDir()
	// Each run holds a file in running while it runs, and records how
	// many it saw.
	if err := os.Mkdir(filepath.Join(dir, "running"), 0o700); err != nil {
		t.Fatal(err)
	}
	command := fmt.Sprintf(`f=$(mktemp -p %[1]s/running); n=$(ls %[1]s/running | wc -l); echo $n >> %[1]s/seen; sleep 0.3; rm "$f"; echo pw`, dir)
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		get, _, err := storedPassword(passwordSource{Command: command}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := get(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(filepath.Join(dir, "seen"))
	if err != nil {
		t.Fatal(err)
	}
	seen := strings.Fields(string(b))
	if len(seen) != 6 {
		t.Fatalf("%d runs, want 6", len(seen))
	}
	for _, s := range seen {
		if n, err := strconv.Atoi(s); err != nil || n > maxPasswordRuns {
			t.Fatalf("a run saw %s runs at once, want at most %d (runs: %v)", s, maxPasswordRuns, seen)
		}
	}
}

func TestStoredPasswordIsOneSourceAndNeedsALoginMode(t *testing.T) {
	tests := []struct {
		r    routeConfig
		want string
	}{
		{routeConfig{Upstream: "h:1", CAFile: "x", Listen: []string{"127.0.0.1:1"}, PasswordFile: "f", PasswordCommand: "c"}, "give one of them"},
		{routeConfig{Upstream: "h:1", CAFile: "x", Listen: []string{"127.0.0.1:1"}, PasswordCommand: "c", Auth: "passthrough"}, "needs --auth auto or relay"},
	}
	for _, tc := range tests {
		if err := tc.r.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.r, err, tc.want)
		}
	}
	ok := routeConfig{Upstream: "h:1", CAFile: "x", Listen: []string{"127.0.0.1:1"}, PasswordCommand: "c"}
	if err := ok.validate(); err != nil {
		t.Errorf("password_command with the default auth: %v", err)
	}
}
