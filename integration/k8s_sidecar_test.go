//go:build linux

package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// The proxy as a Kubernetes sidecar (examples/kubernetes): `wait` holds a
// Job's work until the proxy is ready, POST /quitquitquit (admin_quit) ends
// the proxy when the work is done, and the pins live in a subdirectory of a
// volume that Kubernetes makes world- or group-writable.

// httpPost posts an empty body to url, straight (no HTTP proxy), and
// returns the status and body.
func httpPost(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Post(url, "", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sidecarPorts are a listen port and an admin address, distinct.
func sidecarPorts(t *testing.T) (listen int, adminAddr string) {
	t.Helper()
	ports := freePorts(t, 2)
	return ports[0], fmt.Sprintf("127.0.0.1:%d", ports[1])
}

// startWithAdmin runs the binary with env and args on the given listen
// port and admin address, and waits until it listens.
func startWithAdmin(t *testing.T, env []string, listen int, adminAddr string, args ...string) *cliProxy {
	t.Helper()
	p := startCLIArgs(t, env, append(args, "--listen", fmt.Sprintf("127.0.0.1:%d", listen), "--admin", adminAddr)...)
	p.port = listen
	return p
}

// startSidecar runs the binary on free ports with an admin endpoint,
// trusting the test root (--ca-file), plus args.
func startSidecar(t *testing.T, args ...string) (p *cliProxy, adminAddr string) {
	t.Helper()
	listen, adminAddr := sidecarPorts(t)
	base := []string{"--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile, "--pin-dir", t.TempDir()}
	return startWithAdmin(t, nil, listen, adminAddr, append(base, args...)...), adminAddr
}

// TestWaitBinaryBlocksUntilReady starts `wait` before the proxy, as a
// Job's container may start before its sidecar is up: connection refused
// is waited out, and wait exits 0 once /readyz passes.
func TestWaitBinaryBlocksUntilReady(t *testing.T) {
	listen, adminAddr := sidecarPorts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wait := exec.CommandContext(ctx, binPath, "wait", "--admin", adminAddr, "--timeout", "45s")
	wait.Env = cleanEnv()
	var out syncBuffer
	wait.Stdout, wait.Stderr = &out, &out
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- wait.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("wait ended before the proxy started: %v\n%s", err, out.String())
	case <-time.After(time.Second):
	}
	p := startWithAdmin(t, nil, listen, adminAddr, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile,
		"--pin-dir", t.TempDir())
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("wait: %v\n%s\nproxy log:\n%s", err, out.String(), p.log())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("wait did not return once the proxy was up\n%s\nproxy log:\n%s", out.String(), p.log())
	}
	if got := out.String(); !strings.HasPrefix(got, "ok   default: upstream verified ") {
		t.Errorf("wait printed %q, want the ready route's line", got)
	}
	// The proxy is in fact ready: the work can start.
	r := runPsql(t, p.port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
	if r.code != 0 || r.out != "1" {
		t.Fatalf("psql after wait: exit %d out %q err %q", r.code, r.out, r.err)
	}
}

// TestWaitBinaryReportsTheRouteReason: a route that cannot be verified
// (a name the server's certificate does not carry) never gets ready; wait
// gives up at its timeout, exits 1 and shows the route's reason.
func TestWaitBinaryReportsTheRouteReason(t *testing.T) {
	_, adminAddr := startSidecar(t, "--server-name", "wrong.db.example")
	start := time.Now()
	out, code := runCLI(t, nil, "wait", "--admin", adminAddr, "--timeout", "3s")
	took := time.Since(start)
	if code != 1 {
		t.Fatalf("wait exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{
		"FAIL default: upstream localhost:",
		`certificate is not valid for host name "wrong.db.example"`,
		"pgverifyproxy: error: wait: not ready within 3s: http://" + adminAddr + "/readyz answered 503 Service Unavailable",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("wait output lacks %q:\n%s", want, out)
		}
	}
	if took < 3*time.Second || took > 10*time.Second {
		t.Errorf("wait took %s with --timeout 3s", took)
	}
}

func TestWaitBinaryNothingListens(t *testing.T) {
	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])
	start := time.Now()
	out, code := runCLI(t, nil, "wait", "--admin", adminAddr, "--timeout", "2s")
	if code != 1 {
		t.Fatalf("wait exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"wait: not ready within 2s: cannot reach the admin endpoint at " + adminAddr, "connection refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("wait output lacks %q:\n%s", want, out)
		}
	}
	if took := time.Since(start); took < 2*time.Second || took > 10*time.Second {
		t.Errorf("wait took %s with --timeout 2s", took)
	}
}

// TestQuitDrainsAndExits: POST /quitquitquit starts the SIGTERM drain: the
// listener closes, /readyz turns 503, a transaction running meanwhile
// commits, a second POST does not cut the drain short, and the process
// exits 0 once the session ends.
func TestQuitDrainsAndExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adm := scratchTable(t, ctx, "quit_drain_test")
	p, adminAddr := startSidecar(t, "--admin-quit", "--drain-timeout", "60s")
	if out, code := runCLI(t, nil, "wait", "--admin", adminAddr, "--timeout", "30s"); code != 0 {
		t.Fatalf("wait: exit %d\n%s\nproxy log:\n%s", code, out, p.log())
	}
	if !strings.Contains(p.log(), `paths="/metrics /healthz /readyz /quitquitquit"`) {
		t.Errorf("the log does not list /quitquitquit:\n%s", p.log())
	}
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", p.port, harness.MD5User, harness.MD5Password)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "insert into quit_drain_test values (1, 'quit')"); err != nil {
		t.Fatal(err)
	}

	if code, body := httpPost(t, "http://"+adminAddr+"/quitquitquit"); code != http.StatusOK || body != "draining\n" {
		t.Fatalf("POST /quitquitquit = %d %q, want 200 draining", code, body)
	}
	waitForLog(t, p, "shutting down")
	if !strings.Contains(p.log(), `signal="POST /quitquitquit from 127.0.0.1:`) {
		t.Errorf("the drain's log line does not name the quit request:\n%s", p.log())
	}
	waitFor(t, "the listener is closed", func() bool { return refusesConnections(p.port) })
	if code, body := httpGet(t, "http://"+adminAddr+"/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "draining") {
		t.Errorf("/readyz while draining = %d %q, want 503 draining", code, body)
	}
	// A retried quit is answered the same and changes nothing.
	if code, _ := httpPost(t, "http://"+adminAddr+"/quitquitquit"); code != http.StatusOK {
		t.Errorf("second POST /quitquitquit = %d, want 200", code)
	}
	time.Sleep(300 * time.Millisecond)

	// The session runs on while the proxy drains.
	if _, err := tx.Exec(ctx, "insert into quit_drain_test values (2, 'quit')"); err != nil {
		t.Fatalf("the session was cut during the drain: %v\n%s", err, p.log())
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during the drain: %v", err)
	}
	var n int
	if err := adm.QueryRow(ctx, "select count(*) from quit_drain_test where note = 'quit'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("%d rows committed, want 2", n)
	}
	conn.Close(ctx)
	if code := waitExit(t, p); code != 0 {
		t.Fatalf("exit code %d after the quit's drain; log:\n%s", code, p.log())
	}
	log := p.log()
	if !strings.Contains(log, "drained: every session ended") || strings.Contains(log, "second signal") {
		t.Errorf("log does not report one clean drain:\n%s", log)
	}
}

// TestQuitOffByDefaultAndPOSTOnly: without --admin-quit the path is 404 and
// the proxy runs on; with it, GET is 405 and changes nothing.
func TestQuitOffByDefaultAndPOSTOnly(t *testing.T) {
	p, adminAddr := startSidecar(t)
	if out, code := runCLI(t, nil, "wait", "--admin", adminAddr, "--timeout", "30s"); code != 0 {
		t.Fatalf("wait: exit %d\n%s", code, out)
	}
	if code, body := httpPost(t, "http://"+adminAddr+"/quitquitquit"); code != http.StatusNotFound {
		t.Errorf("POST /quitquitquit without --admin-quit = %d %q, want 404", code, body)
	}
	if strings.Contains(p.log(), "/quitquitquit") {
		t.Errorf("the log lists /quitquitquit without --admin-quit:\n%s", p.log())
	}

	q, qAdmin := startSidecar(t, "--admin-quit")
	if out, code := runCLI(t, nil, "wait", "--admin", qAdmin, "--timeout", "30s"); code != 0 {
		t.Fatalf("wait: exit %d\n%s", code, out)
	}
	if code, body := httpGet(t, "http://"+qAdmin+"/quitquitquit"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /quitquitquit = %d %q, want 405", code, body)
	}
	time.Sleep(300 * time.Millisecond)
	for name, c := range map[string]struct {
		p     *cliProxy
		admin string
	}{"without --admin-quit": {p, adminAddr}, "after a GET": {q, qAdmin}} {
		if strings.Contains(c.p.log(), "shutting down") {
			t.Errorf("%s: the proxy is shutting down:\n%s", name, c.p.log())
		}
		if code, body := httpGet(t, "http://"+c.admin+"/readyz"); code != http.StatusOK {
			t.Errorf("%s: /readyz = %d %q, want 200", name, code, body)
		}
		r := runPsql(t, c.p.port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
		if r.code != 0 || r.out != "1" {
			t.Errorf("%s: psql: exit %d out %q err %q", name, r.code, r.out, r.err)
		}
	}
	// admin_quit alone is a usage error.
	out, code := runCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile, "--admin-quit")
	if code != 2 || !strings.Contains(out, "admin_quit needs the admin endpoint") {
		t.Errorf("--admin-quit without --admin: exit %d\n%s", code, out)
	}
}

// TestK8sPinDirOnSharedVolume mirrors examples/kubernetes: a Kubernetes
// emptyDir is created mode 0777 (with fsGroup, group-owned and setgid as
// well), which the proxy's pin store refuses as a pin directory: another
// local user could plant a pin there. A subdirectory of it, which the
// proxy creates 0700 on first start, passes; the pin made there (trust
// system, as in the example) is used again by the next start.
func TestK8sPinDirOnSharedVolume(t *testing.T) {
	sysTrust := "SSL_CERT_FILE=" + rootFile // the test root is "public"
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	for _, tc := range []struct {
		name string
		mode os.FileMode
	}{
		{"emptyDir", 0o777},
		{"emptyDir with fsGroup", 0o777 | os.ModeSetgid},
		{"fsGroup volume", 0o770 | os.ModeSetgid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			volume := filepath.Join(t.TempDir(), "volume")
			if err := os.Mkdir(volume, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(volume, tc.mode); err != nil {
				t.Fatal(err)
			}
			start := func(pinDir string) (*cliProxy, string) {
				listen, adminAddr := sidecarPorts(t)
				return startWithAdmin(t, []string{sysTrust}, listen, adminAddr, "--upstream", upstream, "--pin-dir", pinDir), adminAddr
			}

			// The volume's root itself is refused, with the fix in the reason.
			p, adminAddr := start(volume)
			out, code := runCLI(t, nil, "wait", "--admin", adminAddr, "--timeout", "2s")
			if code != 1 || !strings.Contains(out, "is writable by group or others") {
				t.Fatalf("pin_dir on the volume's root: wait exit %d, want 1 naming the mode\n%s\nproxy log:\n%s", code, out, p.log())
			}
			stopSidecar(t, p)

			// A subdirectory: created 0700 by the proxy, pinned, ready.
			pinDir := filepath.Join(volume, "pins")
			p, adminAddr = start(pinDir)
			if out, code := runCLI(t, nil, "wait", "--admin", adminAddr, "--timeout", "30s"); code != 0 {
				t.Fatalf("pin_dir in a subdirectory: wait exit %d\n%s\nproxy log:\n%s", code, out, p.log())
			}
			st, err := os.Stat(pinDir)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o700 {
				t.Errorf("pin directory mode %v, want 0700", st.Mode())
			}
			t.Logf("volume %v, pin directory %v", tc.mode, st.Mode())
			files, err := filepath.Glob(filepath.Join(pinDir, "*"))
			if err != nil || len(files) == 0 {
				t.Fatalf("no pin file in %s: %v\nproxy log:\n%s", pinDir, err, p.log())
			}
			for _, f := range files {
				if fst, err := os.Lstat(f); err != nil || fst.Mode().Perm()&0o077 != 0 {
					t.Errorf("pin file %s: mode %v, %v; want private", f, fst.Mode(), err)
				}
			}
			r := runPsql(t, p.port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
			if r.code != 0 || r.out != "1" {
				t.Fatalf("psql: exit %d out %q err %q\n%s", r.code, r.out, r.err, p.log())
			}
			stopSidecar(t, p)

			// The container restarts (the emptyDir stays): the pin is used.
			p, adminAddr = start(pinDir)
			if out, code := runCLI(t, nil, "wait", "--admin", adminAddr, "--timeout", "30s"); code != 0 {
				t.Fatalf("restart: wait exit %d\n%s\nproxy log:\n%s", code, out, p.log())
			}
			waitForLog(t, p, "using pin")
		})
	}
}

// stopSidecar ends a proxy with SIGTERM and waits for it.
func stopSidecar(t *testing.T, p *cliProxy) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, p); code != 0 {
		t.Fatalf("exit code %d after SIGTERM; log:\n%s", code, p.log())
	}
}
