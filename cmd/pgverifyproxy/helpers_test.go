// Helpers shared by the tests of package main.

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// tempDir is t.TempDir, except on Windows, where it is removed file by
// file: t.TempDir's removal uses a call that Wine (where the Windows tests
// run) does not have, and fails the test.
func tempDir(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "windows" {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("", "pgvp-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var paths []string
		_ = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
			paths = append(paths, p)
			return nil
		})
		for i := len(paths) - 1; i >= 0; i-- {
			if err := os.Remove(paths[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Logf("removing %s: %v", paths[i], err)
			}
		}
	})
	return dir
}

// discardLogger logs nothing.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// waitListening waits until 127.0.0.1:port accepts connections (want) or
// refuses them (!want).
func waitListening(t *testing.T, port int, want bool, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		if (err == nil) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("127.0.0.1:%d listening %v after %v, want %v (%v)", port, err == nil, within, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func mustIssue(t *testing.T, parent *testpki.Cert, o testpki.LeafOptions) *testpki.Cert {
	t.Helper()
	c, err := testpki.IssueLeaf(parent, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pinFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// runCLI runs the root command with args as main would and returns what
// it wrote to standard output and standard error (main's error line
// included) and the exit status main would give: 2 for a usage error, 1 for
// any other.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.Execute()
	var ue usageError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ue):
		return out.String(), errb.String() + "pgverifyproxy: error: " + err.Error() + "\n", 2
	}
	return out.String(), errb.String() + "pgverifyproxy: error: " + err.Error() + "\n", 1
}

// runReadyCmd runs `pgverifyproxy ready args...` (see runCLI).
func runReadyCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCLI(t, append([]string{"ready"}, args...)...)
}

// runWaitCmd runs `pgverifyproxy wait args...` (see runCLI).
func runWaitCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCLI(t, append([]string{"wait"}, args...)...)
}

// runCheckCmd runs `pgverifyproxy check args...` and returns standard
// output and error together, and the exit status.
func runCheckCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, errs, code := runCLI(t, append([]string{"check"}, args...)...)
	return out + errs, code
}

// runRootCmd runs the root command with args and returns standard output
// and error together, and 0 or 1 (a usage error included).
func runRootCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, errs, code := runCLI(t, args...)
	return out + errs, min(code, 1)
}

// cliCase is one row of a command's table test: its arguments, the admin
// address in the environment, and what main prints and returns.
type cliCase struct {
	name string
	args []string
	env  string // PGVERIFYPROXY_ADMIN
	code int
	// out is the standard output, exactly; errs must all be in what main
	// prints on standard error.
	out  string
	errs []string
}

// runCLICases runs each case through run as a subtest.
func runCLICases(t *testing.T, cases []cliCase, run func(t *testing.T, args ...string) (stdout, stderr string, code int)) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PGVERIFYPROXY_ADMIN", tc.env)
			if tc.env == "" {
				os.Unsetenv("PGVERIFYPROXY_ADMIN")
			}
			stdout, stderr, code := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit status %d, want %d\nstdout: %q\nstderr: %q", code, tc.code, stdout, stderr)
			}
			if tc.out != "" && stdout != tc.out {
				t.Errorf("stdout %q, want %q", stdout, tc.out)
			}
			for _, want := range tc.errs {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
			if code == 0 && stderr != "" {
				t.Errorf("stderr on success: %q", stderr)
			}
		})
	}
}
