//go:build linux

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// TestWindowsBinaryUnderWine runs the Windows build of the proxy (GOOS
// windows, amd64) under Wine against the test PostgreSQL: with --ca-file,
// and with a pin it fetched itself, psql connects through it and reads
// ssl = t from the server; a man in the middle presenting another CA's
// certificate is refused with the proxy's FATAL; the pin file is where
// Windows keeps per-user data when no --pin-dir is given.
//
// What Wine does not stand for: the Windows service control manager (the
// service handler is tested by the cmd package's own tests, run under
// Wine in this same test), and the platform certificate verifier (Wine's crypt32
// is not Windows'): the routes here trust a CA file or a pin, which Go
// verifies itself on every platform.
func TestWindowsBinaryUnderWine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	wine, err := harness.PrepareWine(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wine.Close() })
	exe := filepath.Join(dir, "pgverifyproxy.exe")
	build := exec.CommandContext(ctx, "go", "build", "-o", exe, "../cmd/pgverifyproxy")
	build.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the Windows binary: %v\n%s", err, out)
	}
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	run := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "wine", append([]string{exe}, args...)...)
		cmd.Env = wine.Env
		cmd.WaitDelay = 5 * time.Second // a Wine helper process may hold the output open
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatalf("wine %v: %v", args, err)
		}
		return string(out), 0
	}
	// startExe runs the Windows binary's run command on a free port.
	startExe := func(t *testing.T, args ...string) *cliProxy {
		t.Helper()
		port := freePorts(t, 1)[0]
		p := startBinary(t, "wine", wine.Env, append(append([]string{exe, "run"}, args...), "--listen", fmt.Sprintf("127.0.0.1:%d", port))...)
		p.port = port
		return p
	}
	sslOf := func(port int) psqlResult {
		return runPsql(t, port, "sslmode=require user="+harness.MD5User, harness.MD5Password,
			"select ssl from pg_stat_ssl where pid = pg_backend_pid()")
	}

	out, code := run("version")
	if code != 0 || !strings.HasPrefix(out, "pgverifyproxy ") {
		t.Fatalf("pgverifyproxy.exe version: exit %d %q", code, out)
	}

	t.Run("ca-file", func(t *testing.T) {
		p := startExe(t, "--upstream", upstream, "--ca-file", wine.Path(rootFile), "--pin-dir", wine.Path(t.TempDir()))
		if r := sslOf(p.port); r.code != 0 || r.out != "t" {
			t.Fatalf("psql through the Windows binary: exit %d %q %q", r.code, r.out, r.err)
		}
	})

	t.Run("pinned by itself, in LOCALAPPDATA", func(t *testing.T) {
		// The test CA is private: trust on first use pins the root the
		// server presents (never its own certificate, never an
		// intermediate: libpq's verify-full needs the root), so the
		// server sends its whole chain here.
		restoreClusterCert(t)
		serveCert(t, pki.Leaf.ChainPEM(pki.Intermediate, pki.Root), pki.Leaf.KeyPEM)
		out, code := run("chain", "fetch", "--upstream", upstream, "--trust", "tofu")
		if code != 0 || !strings.Contains(out, "Pinned:") {
			t.Fatalf("chain fetch --trust tofu: exit %d\n%s", code, out)
		}
		pinFile := filepath.Join(wine.Prefix, "drive_c", "users", userName(t), "AppData", "Local", "pgverifyproxy",
			filepath.Base((&chain.PinStore{Dir: "/"}).Path("localhost", cluster.Port, "")))
		if _, err := os.Stat(pinFile); err != nil {
			t.Fatalf("the pin is not in %%LocalAppData%%\\pgverifyproxy: %v\n%s", err, out)
		}
		p := startExe(t, "--upstream", upstream)
		if r := sslOf(p.port); r.code != 0 || r.out != "t" {
			t.Fatalf("psql through the pinned Windows binary: exit %d %q %q", r.code, r.out, r.err)
		}
	})

	// The unit tests of the packages with Windows code of their own, built
	// for Windows and run in the same prefix: the portable relay engine
	// (internal/relay); the prewarm peek, unix-socket refusal (proxy); the
	// service handler, Ctrl-C and the config-file reload, the pin
	// directory, cmd.exe for password_command (cmd).
	for _, pkg := range []struct{ dir, run, skip string }{
		// Wine 8 reports a reset that has already arrived as a clean end
		// of stream, where Windows (and Linux) report WSAECONNRESET: the
		// two tests that check the reset's report are left to Linux.
		{dir: "internal/relay", skip: "^(TestErrorEndsBoth|TestResetRightAfterData)$"},
		{dir: "proxy"},
		{dir: "cmd/pgverifyproxy", run: "^(TestWindows|TestFileWatch|TestStartConfigWatch|TestRequests|TestServe|TestLogFile)"},
	} {
		t.Run("unit tests of "+pkg.dir+" under wine", func(t *testing.T) {
			testExe := filepath.Join(dir, strings.ReplaceAll(pkg.dir, "/", "_")+"_test.exe")
			build := exec.CommandContext(ctx, "go", "test", "-c", "-o", testExe, "../"+pkg.dir)
			build.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("building the Windows test binary: %v\n%s", err, out)
			}
			args := []string{testExe, "-test.timeout", "240s"}
			if pkg.run != "" {
				args = append(args, "-test.run", pkg.run)
			}
			if pkg.skip != "" {
				args = append(args, "-test.skip", pkg.skip)
			}
			cmd := exec.CommandContext(ctx, "wine", args...)
			cmd.Dir = filepath.Join("..", pkg.dir) // its testdata
			cmd.Env = wine.Env
			cmd.WaitDelay = 5 * time.Second
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "PASS") {
				t.Fatalf("%s tests under wine: %v\n%s", pkg.dir, err, out)
			}
		})
	}

	t.Run("man in the middle refused", func(t *testing.T) {
		fake, err := testpki.StartFakeUpstream(testpki.AnswerTLS(pki.OtherLeaf.TLSCertificate(pki.OtherRoot), nil))
		if err != nil {
			t.Fatal(err)
		}
		defer fake.Close()
		p := startExe(t, "--upstream", fmt.Sprintf("localhost:%d", fake.Port), "--ca-file", wine.Path(rootFile),
			"--pin-dir", wine.Path(t.TempDir()))
		r := sslOf(p.port)
		if r.code == 0 || !strings.Contains(r.err, "FATAL") || !strings.Contains(r.err, "unknown authority") {
			t.Fatalf("psql through the Windows binary to a man in the middle: exit %d %q", r.code, r.err)
		}
		fake.Close()
		if got := fake.Received(); testpki.HasStartupMessage(got) {
			t.Fatalf("the man in the middle received a startup message (%d bytes)", len(got))
		}
	})
}

// userName is the Windows user name Wine gives this process's user: the
// Unix login name.
func userName(t *testing.T) string {
	t.Helper()
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	out, err := exec.Command("id", "-un").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
