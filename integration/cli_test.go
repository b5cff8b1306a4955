//go:build linux

package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// cliProxy is the real binary running with some arguments.
type cliProxy struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	logs  strings.Builder
	ready chan struct{} // closed once the log says it is listening
	port  int
}

func (c *cliProxy) log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logs.String()
}

// Write collects the binary's stderr. It is the command's Stderr, so
// cmd.Wait returns only after everything the process wrote is here (with
// StderrPipe, Wait closes the pipe and lines logged just before exit were
// lost).
func (c *cliProxy) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	from := max(0, c.logs.Len()-len(listeningMark))
	c.logs.Write(p)
	if c.ready != nil && strings.Contains(c.logs.String()[from:], listeningMark) {
		close(c.ready)
		c.ready = nil
	}
	return len(p), nil
}

// listeningMark is in the line the proxy logs once it accepts clients.
const listeningMark = "msg=listening"

// startCLI runs the binary on a free loopback port and waits until it logs
// that it is listening.
func startCLI(t *testing.T, env []string, args ...string) *cliProxy {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	c := startCLIArgs(t, env, append(args, "--listen", fmt.Sprintf("127.0.0.1:%d", port))...)
	c.port = port
	return c
}

// startCLIArgs runs the binary with exactly args (listeners included) and
// waits until it logs that it is listening.
func startCLIArgs(t *testing.T, env []string, args ...string) *cliProxy {
	t.Helper()
	return startBinary(t, binPath, append(cleanEnv(), env...), args...)
}

// startBinary runs bin with exactly env and args, and waits until it logs
// that it is listening.
func startBinary(t *testing.T, bin string, env []string, args ...string) *cliProxy {
	t.Helper()
	ready := make(chan struct{})
	c := &cliProxy{cmd: exec.Command(bin, args...), ready: ready}
	c.cmd.Env = env
	c.cmd.Stderr = c
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		_ = c.cmd.Wait()
	})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("proxy did not start; log:\n%s", c.log())
	}
	return c
}

func TestCLIOneLinerWithProviderURI(t *testing.T) {
	uri := fmt.Sprintf("postgres://someone:console-secret@localhost:%d/somedb?sslmode=require", cluster.Port)
	p := startCLI(t, nil, "--upstream", uri, "--ca-file", rootFile)
	r := runPsql(t, p.port, "user="+harness.MD5User+" sslmode=require", harness.MD5Password, whoAmI)
	if r.code != 0 || r.out != harness.MD5User+"|true" {
		t.Fatalf("psql through the CLI proxy: exit %d out %q err %q\nproxy log:\n%s", r.code, r.out, r.err, p.log())
	}
	// The test certificates expire within 48 hours: under the default
	// 30-day threshold the proxy must warn (in a line after the check's).
	waitForLog(t, p, "expires soon")
	log := p.log()
	for _, want := range []string{"using only its host and port", `ignored="user,password,database,sslmode=require"`, "upstream verified (verify-full)", `msg="server certificate expires soon"`} {
		if !strings.Contains(log, want) {
			t.Errorf("proxy log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "console-secret") {
		t.Errorf("proxy log leaks the URI's password:\n%s", log)
	}
}

func TestCLIEnvironmentConfig(t *testing.T) {
	p := startCLI(t, []string{
		"PGVERIFYPROXY_EXPIRY_WARNING=1h",
		fmt.Sprintf("PGVERIFYPROXY_UPSTREAM=localhost:%d", cluster.Port),
		"PGVERIFYPROXY_CA_FILE=" + rootFile,
		"PGVERIFYPROXY_CLIENT_TLS=disable",
	})
	r := runPsql(t, p.port, "user="+harness.ScramUser+" sslmode=require", harness.ScramPassword, "select 1")
	if r.code == 0 || !strings.Contains(r.err, "server does not support SSL") {
		t.Fatalf("client_tls=disable from the environment not applied: exit %d err %q", r.code, r.err)
	}
	r = runPsql(t, p.port, "user="+harness.ScramUser+" sslmode=disable", harness.ScramPassword, "select 1")
	if r.code != 0 || r.out != "1" {
		t.Fatalf("exit %d out %q err %q\n%s", r.code, r.out, r.err, p.log())
	}
	waitForLog(t, p, "upstream verified")
	// The expiry warning would follow the check's line: stop the proxy so
	// that its whole log is in.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, p); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, p.log())
	}
	if strings.Contains(p.log(), "expires soon") {
		t.Errorf("expiry warning despite PGVERIFYPROXY_EXPIRY_WARNING=1h:\n%s", p.log())
	}
}

func TestCLIRefusesToStartWithoutTrust(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--upstream", "localhost:5432", "--trust", "always"}, "--trust must be system, tofu or live"},
		{[]string{"--ca-file", "/nonexistent/root.crt", "--upstream", "localhost:5432"}, "reading CA file"},
		{[]string{"--ca-file", rootFile}, "no upstream: pass --upstream"},
		{[]string{"--upstream", "localhost:5432", "--ca-file", rootFile, "--client-tls", "sometimes"}, "client_tls must be allow, disable or require"},
		{[]string{"--upstream", "localhost:5432", "--ca-file", rootFile, "--bogus"}, "unknown flag: --bogus"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binPath, tc.args...)
			cmd.Env = cleanEnv()
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
				t.Fatalf("err %v, output %q; want exit 2 with %q", err, out, tc.want)
			}
		})
	}
}

func TestCLIVersion(t *testing.T) {
	out, err := exec.Command(binPath, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "pgverifyproxy ") {
		t.Fatalf("version: %v %q", err, out)
	}
}

// waitForLog waits until the proxy's log holds s.
func waitForLog(t *testing.T, p *cliProxy, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.log(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("proxy log never showed %q:\n%s", s, p.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
