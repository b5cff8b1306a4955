//go:build linux

package integration

// Fault injection: what a user sees when the server, the network or the
// machine misbehaves under the proxy. Each test names the fault it injects
// and asserts the outcome a client (or an operator reading /metrics) sees,
// within a bounded time.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// startFaultCluster starts a cluster of the test's own, with the shared PKI's
// server certificate (leaf and intermediate), removed when the test ends.
func startFaultCluster(t *testing.T) *harness.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := harness.StartCluster(ctx, harness.ClusterOptions{
		ServerCertPEM: pki.Leaf.ChainPEM(pki.Intermediate),
		ServerKeyPEM:  pki.Leaf.KeyPEM,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Logf("stopping the test's cluster: %v", err)
		}
	})
	return c
}

// pgCtl runs pg_ctl on c's data directory as the server's user (the harness
// runs the server as "postgres" when the tests run as root).
func pgCtl(t *testing.T, c *harness.Cluster, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "pg_ctl"), append([]string{"-D", c.DataDir}, args...)...)
	cmd.Dir = c.Dir
	cmd.Env = []string{"PATH=" + c.BinDir + ":/usr/bin:/bin", "LC_ALL=C", "HOME=" + c.Dir}
	cmd.WaitDelay = 5 * time.Second
	if os.Geteuid() == 0 {
		uid, gid := serverUser(t)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl %v: %v\n%s\n---- server log ----\n%s", args, err, out, c.LogTail(20))
	}
}

// serverUser is the uid and gid of the unprivileged "postgres" account.
func serverUser(t *testing.T) (uint32, uint32) {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("looking up user postgres: %v", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		t.Fatalf("user postgres: uid %q gid %q", u.Uid, u.Gid)
	}
	return uint32(uid), uint32(gid)
}

// faultProxy runs the binary in front of localhost:upstreamPort with
// --ca-file and the admin endpoint; it returns the proxy and the admin
// address.
func faultProxy(t *testing.T, upstreamPort int, extra ...string) (*cliProxy, string) {
	t.Helper()
	admin := fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])
	args := append([]string{"--upstream", fmt.Sprintf("localhost:%d", upstreamPort), "--ca-file", rootFile,
		"--pin-dir", t.TempDir(), "--admin", admin}, extra...)
	p := startCLI(t, nil, args...)
	waitForLog(t, p, "admin endpoint")
	return p, admin
}

// proxyDSN is a pgx connection string for md5_user through the proxy.
func proxyDSN(port int, sslmode string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=%s connect_timeout=10",
		port, harness.MD5User, harness.MD5Password, sslmode)
}

// activeSessions reads pgverifyproxy_sessions_active of the default route
// (0 when the series is not there yet).
func activeSessions(t *testing.T, admin string) float64 {
	t.Helper()
	return scrape(t, admin)[`pgverifyproxy_sessions_active{route="default"}`]
}

// waitForValue polls get until it returns want, for up to limit.
func waitForValue(t *testing.T, what string, limit time.Duration, want float64, get func() float64) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var got float64
	for {
		if got = get(); got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v after %v, want %v", what, got, limit, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFaultUpstreamBackendKilled: the server backend of a session running a
// long query dies, by pg_terminate_backend or by SIGKILL. The client of that
// session gets an error at once (not a hang), the proxy frees the session,
// and new connections through the proxy work. Under pg_terminate_backend a
// second session is unharmed; under SIGKILL the postmaster ends every
// backend and reinitialises, so the second session gets the server's error
// too, and new connections work once the server has recovered.
func TestFaultUpstreamBackendKilled(t *testing.T) {
	for _, tc := range []struct {
		name string
		// dedicated: SIGKILL restarts every backend of the cluster, so it
		// is done on a cluster of the test's own.
		dedicated bool
		kill      func(t *testing.T, adm *pgx.Conn, pid int)
		// wantA is the SQLSTATE session A gets ("" = the connection just
		// ends: the backend had no chance to say anything).
		wantA      string
		bSurvives  bool
		wantBState string // SQLSTATE B gets when it does not survive
	}{
		{
			name: "pg_terminate_backend",
			kill: func(t *testing.T, adm *pgx.Conn, pid int) {
				var ok bool
				if err := adm.QueryRow(context.Background(), "select pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
					t.Fatalf("pg_terminate_backend(%d): %v %v", pid, ok, err)
				}
			},
			wantA: "57P01", bSurvives: true,
		},
		{
			name: "SIGKILL of the backend process", dedicated: true,
			kill: func(t *testing.T, _ *pgx.Conn, pid int) {
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill -9 %d: %v", pid, err)
				}
			},
			wantBState: "57P02", // crash of another server process
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cluster
			if tc.dedicated {
				c = startFaultCluster(t)
			}
			p, admin := faultProxy(t, c.Port)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			adm := protoConnect(t, ctx, c.AdminConnString())
			a := protoConnect(t, ctx, proxyDSN(p.port, "disable"))
			bcfg, err := pgx.ParseConfig(proxyDSN(p.port, "require"))
			if err != nil {
				t.Fatal(err)
			}
			notices := make(chan *pgconn.Notice, 10)
			bcfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices <- n }
			b, err := pgx.ConnectConfig(ctx, bcfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close(context.Background())
			var pidA int
			if err := a.QueryRow(ctx, "select pg_backend_pid()").Scan(&pidA); err != nil {
				t.Fatal(err)
			}
			waitForValue(t, "active sessions with A and B open", 10*time.Second, 2, func() float64 { return activeSessions(t, admin) })

			done := make(chan error, 1)
			go func() {
				_, err := a.Exec(ctx, "select pg_sleep(30)")
				done <- err
			}()
			waitFor(t, "A's pg_sleep is running on the server", func() bool {
				var n int
				_ = adm.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = $1 and state = 'active' and query like '%pg_sleep%'", pidA).Scan(&n)
				return n == 1
			})
			killed := time.Now()
			tc.kill(t, adm, pidA)

			select {
			case err := <-done:
				elapsed := time.Since(killed)
				t.Logf("session A's error after %v: %v", elapsed.Round(time.Millisecond), err)
				if err == nil {
					t.Fatal("session A's query succeeded although its backend was killed")
				}
				var pe *pgconn.PgError
				if tc.wantA != "" && (!errors.As(err, &pe) || pe.Code != tc.wantA) {
					t.Errorf("session A: %v; want the server's SQLSTATE %s relayed", err, tc.wantA)
				}
				if tc.wantA == "" && !a.IsClosed() {
					t.Error("session A's connection is not closed after its backend died")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("session A still waits 10s after its backend was killed: the proxy did not pass the end on")
			}
			if !a.IsClosed() {
				t.Error("session A's connection is still open")
			}

			if !tc.bSurvives {
				// The postmaster reaps the killed backend, then ends the
				// others: wait for that before B's next query.
				waitFor(t, "the postmaster restarts after the crash", func() bool {
					return strings.Contains(c.LogTail(200), "all server processes terminated; reinitializing")
				})
			}
			var n int
			errB := b.QueryRow(ctx, "select 7").Scan(&n)
			switch {
			case tc.bSurvives && (errB != nil || n != 7):
				t.Errorf("session B after A's backend was killed: %d %v", n, errB)
			case !tc.bSurvives:
				// PostgreSQL 14+ tells the other sessions why as a
				// WARNING (client only) before it closes them.
				if errB == nil {
					t.Error("session B works although the postmaster restarted every backend")
				}
				select {
				case n := <-notices:
					t.Logf("session B: %v, after the server's %s %s: %s", errB, n.Severity, n.Code, n.Message)
					if n.Code != tc.wantBState {
						t.Errorf("session B got the notice %s %q, want SQLSTATE %s", n.Code, n.Message, tc.wantBState)
					}
				default:
					t.Errorf("session B: %v, without the server's %s warning", errB, tc.wantBState)
				}
			}
			want := 1.0
			if !tc.bSurvives {
				want = 0
			}
			waitForValue(t, "active sessions after A's backend died", 10*time.Second, want, func() float64 { return activeSessions(t, admin) })

			// New connections through the same proxy (after crash recovery
			// under SIGKILL: the server refuses them meanwhile with 57P03).
			var lastErr error
			deadline := time.Now().Add(30 * time.Second)
			for {
				cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
				nc, err := pgx.Connect(cctx, proxyDSN(p.port, "disable"))
				if err == nil {
					err = nc.QueryRow(cctx, "select 8").Scan(&n)
					nc.Close(context.Background())
				}
				ccancel()
				if err == nil && n == 8 {
					break
				}
				lastErr = err
				if time.Now().After(deadline) {
					t.Fatalf("no new session through the proxy 30s after the kill: %v\nproxy log:\n%s", lastErr, p.log())
				}
				time.Sleep(200 * time.Millisecond)
			}
			if strings.Contains(p.log(), "panic") {
				t.Errorf("proxy log:\n%s", p.log())
			}
		})
	}
}

// TestFaultUpstreamRestart: the server stops (pg_ctl stop -m fast) under a
// running proxy and starts again on the same port (same data directory and
// postgresql.conf). While it is down a new client gets a FATAL naming the
// upstream and the refused connection, with a hint, in well under the
// connect timeout; an open session gets the server's shutdown error. Once
// it is up again, new clients are served by the same proxy process.
func TestFaultUpstreamRestart(t *testing.T) {
	c := startFaultCluster(t)
	p, admin := faultProxy(t, c.Port)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if r := runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 'before'"); r.code != 0 || r.out != "before" {
		t.Fatalf("psql before the restart: %+v\n%s", r, p.log())
	}
	open, err := pgx.Connect(ctx, proxyDSN(p.port, "disable"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(context.Background())

	pgCtl(t, c, "-m", "fast", "-w", "-t", "60", "stop")
	if !refusesConnections(c.Port) {
		t.Fatal("the server still accepts connections after pg_ctl stop")
	}

	// The open session: the server's "terminating connection due to
	// administrator command" (57P01), or a closed connection.
	var n int
	if err := open.QueryRow(ctx, "select 1").Scan(&n); err == nil {
		t.Error("a session open across the server's shutdown still works")
	} else {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code != "57P01" {
			t.Errorf("open session: %v; want 57P01 or a closed connection", err)
		}
		t.Logf("open session after the stop: %v", err)
	}

	start := time.Now()
	r := runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 'down'")
	elapsed := time.Since(start)
	t.Logf("psql while the server is down (%v): exit %d\n%s", elapsed.Round(time.Millisecond), r.code, r.err)
	upstream := fmt.Sprintf("localhost:%d", c.Port)
	if r.code == 0 {
		t.Fatalf("psql succeeded while the server is down: %+v", r)
	}
	for _, want := range []string{"FATAL", upstream, "connection refused", "HINT", "that the server"} {
		if !strings.Contains(r.err, want) {
			t.Errorf("psql's error while the server is down lacks %q:\n%s", want, r.err)
		}
	}
	if elapsed > 5*time.Second {
		t.Errorf("psql took %v to get the refusal; a refused TCP connect should be reported at once", elapsed)
	}
	waitFor(t, "the refusal is counted as upstream_unreachable", func() bool {
		return scrape(t, admin)[`pgverifyproxy_refused_total{cause="upstream_unreachable",route="default"}`] >= 1
	})

	// Same data directory, same postgresql.conf: the same port.
	pgCtl(t, c, "-l", filepath.Join(c.Dir, "restart.log"), "-w", "-t", "60", "start")
	if refusesConnections(c.Port) {
		t.Fatalf("the server did not come back on port %d", c.Port)
	}
	for i, sslmode := range []string{"disable", "require"} {
		conn, err := pgx.Connect(ctx, proxyDSN(p.port, sslmode))
		if err != nil {
			t.Fatalf("new session (sslmode=%s) after the server restarted: %v\nproxy log:\n%s", sslmode, err, p.log())
		}
		if err := conn.QueryRow(ctx, "select $1::int", i+10).Scan(&n); err != nil || n != i+10 {
			t.Errorf("query after the restart (sslmode=%s): %d %v", sslmode, n, err)
		}
		conn.Close(context.Background())
	}
	if p.cmd.ProcessState != nil {
		t.Fatal("the proxy exited")
	}
}

// aiaLeafOnlyCluster makes the shared cluster present only a leaf whose
// intermediate is reachable only at aiaURL (restored when the test ends),
// and returns an SSL_CERT_FILE setting that makes its root "public".
func aiaLeafOnlyCluster(t *testing.T, aiaURL string) string {
	t.Helper()
	restoreClusterCert(t)
	root := mustCA(t, nil, "fault AIA root")
	inter := mustCA(t, root, "fault AIA intermediate")
	leaf := mustLeaf(t, inter, aiaURL)
	serveCert(t, leaf.CertPEM, leaf.KeyPEM)
	return "SSL_CERT_FILE=" + writeBundle(t, "system.pem", root)
}

// silentHTTPServer accepts connections and never answers: an AIA server
// that hangs.
func silentHTTPServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(done)
				return
			}
			conns = append(conns, c) // held open, never read or written
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + l.Addr().String() + "/intermediate.der"
}

// TestFaultAIAUnavailable: the server sends only its leaf and the AIA server
// holding its intermediate is down (closed port) or hangs. `chain fetch` and
// the proxy's first pin both refuse within the AIA timeout (10s per fetch)
// plus a margin, with an error that names the AIA fetch and what to do,
// and write no pin.
func TestFaultAIAUnavailable(t *testing.T) {
	closedPort := freePorts(t, 1)[0]
	for _, tc := range []struct {
		name   string
		url    func(t *testing.T) string
		detail string // what the AIA part of the error says
		atMost time.Duration
	}{
		{"closed port", func(*testing.T) string { return fmt.Sprintf("http://127.0.0.1:%d/intermediate.der", closedPort) }, "connection refused", chain.AIATimeout - 2*time.Second}, // no waiting for the timeout
		{"never answers", silentHTTPServer, "deadline exceeded", chain.AIATimeout + 8*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url(t)
			// The AIA server is on loopback: allowed explicitly, so that
			// what fails is the fetch, not the destination guard.
			sysTrust := aiaLeafOnlyCluster(t, url)
			env := []string{sysTrust, "PGVERIFYPROXY_AIA_ALLOW_PRIVATE=true"}
			upstream := fmt.Sprintf("localhost:%d", cluster.Port)
			checkError := func(t *testing.T, what, msg string, elapsed time.Duration) {
				t.Helper()
				t.Logf("%s (%v):\n%s", what, elapsed.Round(time.Millisecond), msg)
				for _, want := range []string{"which is not a root, and fetching its issuer through AIA failed", url, tc.detail, "--ca-file", "over HTTP"} {
					if !strings.Contains(msg, want) {
						t.Errorf("%s lacks %q:\n%s", what, want, msg)
					}
				}
				// Pinning what was reached would pin a certificate that
				// changes at renewal: the advice must warn, not suggest it.
				if !strings.Contains(msg, "Do not pin this with --trust tofu") {
					t.Errorf("%s does not warn against --trust tofu:\n%s", what, msg)
				}
				if elapsed > tc.atMost {
					t.Errorf("%s took %v, want at most %v", what, elapsed, tc.atMost)
				}
			}
			noPin := func(t *testing.T, dir string) {
				t.Helper()
				entries, err := os.ReadDir(dir)
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Fatal(err)
				}
				for _, e := range entries {
					t.Errorf("pin directory holds %s after a refused fetch", e.Name())
				}
			}

			t.Run("chain fetch", func(t *testing.T) {
				pinDir := filepath.Join(t.TempDir(), "pins")
				start := time.Now()
				out, code := runCLI(t, env, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir)
				elapsed := time.Since(start)
				if code != 1 {
					t.Errorf("chain fetch exit %d, want 1", code)
				}
				checkError(t, "chain fetch output", out, elapsed)
				noPin(t, pinDir)
			})

			t.Run("proxy first pin", func(t *testing.T) {
				pinDir := filepath.Join(t.TempDir(), "pins")
				start := time.Now()
				p := startCLI(t, env, "--upstream", upstream, "--pin-dir", pinDir)
				// The start-up fetch runs while the proxy listens; a client
				// arriving meanwhile waits for it, then gets its reason.
				r := runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 1")
				elapsed := time.Since(start)
				if r.code == 0 {
					t.Fatalf("a session was served without a pin: %+v", r)
				}
				if !strings.Contains(r.err, "FATAL") || !strings.Contains(r.err, "HINT") {
					t.Errorf("the client's error is not a FATAL with a hint:\n%s", r.err)
				}
				checkError(t, "psql's error", r.err, elapsed)
				waitForLog(t, p, "refusing to relay to this upstream until it can be trusted")
				noPin(t, pinDir)
			})
		})
	}
}

// TestFaultPinDirUnwritable: the pin cannot be written (its directory's
// parent is a regular file; or, as an unprivileged user, a directory that
// user may not write). `chain fetch` fails naming the pin directory; the
// proxy refuses every client with a FATAL naming it and serves nothing
// without a pin.
func TestFaultPinDirUnwritable(t *testing.T) {
	// A world-readable directory for what the unprivileged user runs and
	// reads: the package's workDir and t.TempDir() are mode 0700.
	shared, err := os.MkdirTemp("", "pgvp-fault-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(shared, "pgverifyproxy")
	data, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	roots := filepath.Join(shared, "system.pem")
	if err := testpki.WritePEMFile(roots, pki.Root.CertPEM); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(roots, 0o644); err != nil {
		t.Fatal(err)
	}
	notADir := filepath.Join(shared, "regular-file")
	if err := os.WriteFile(notADir, []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rootOwned := filepath.Join(shared, "root-owned") // 0755, owned by root
	if err := os.Mkdir(rootOwned, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(rootOwned, 0o755); err != nil {
		t.Fatal(err)
	}

	type tcase struct {
		name   string
		pinDir string
		asUser bool   // run as the unprivileged "postgres" user (needs root)
		reason string // the system error
	}
	cases := []tcase{{"parent is a regular file", filepath.Join(notADir, "pins"), false, "not a directory"}}
	if os.Geteuid() == 0 {
		cases = append(cases, tcase{"unprivileged user, directory not writable", rootOwned, true, "permission denied"})
	} else {
		// Not root: this very process is unprivileged.
		if err := os.Chmod(rootOwned, 0o555); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, tcase{"directory not writable", rootOwned, false, "permission denied"})
	}
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := append(cleanEnv(), "SSL_CERT_FILE="+roots, "HOME="+shared)
			prefix := []string{bin}
			if tc.asUser {
				uid, gid := serverUser(t)
				prefix = []string{"/usr/bin/setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups", "--", bin}
			}
			// chain fetch: exit 1, the pin directory and the reason named.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, prefix[0], append(prefix[1:], "chain", "fetch", "--upstream", upstream, "--pin-dir", tc.pinDir)...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			t.Logf("chain fetch: %v\n%s", err, out)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("chain fetch: %v, want exit 1", err)
			}
			for _, want := range []string{tc.pinDir, tc.reason} {
				if !strings.Contains(string(out), want) {
					t.Errorf("chain fetch output lacks %q", want)
				}
			}

			// The proxy: it starts (other routes may be fine), refuses
			// every client with the reason, and relays nothing.
			port := freePorts(t, 1)[0]
			p := startBinary(t, prefix[0], env, append(prefix[1:], "--upstream", upstream, "--pin-dir", tc.pinDir,
				"--listen", fmt.Sprintf("127.0.0.1:%d", port))...)
			waitForLog(t, p, "refusing to relay to this upstream")
			for i := 0; i < 2; i++ { // the second within the refetch interval
				r := runPsql(t, port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 'served'")
				t.Logf("psql: exit %d\n%s", r.code, r.err)
				if r.code == 0 || strings.Contains(r.out, "served") {
					t.Fatalf("a session was served although the pin could not be written: %+v", r)
				}
				for _, want := range []string{"FATAL", tc.pinDir, tc.reason, "HINT"} {
					if !strings.Contains(r.err, want) {
						t.Errorf("psql's error lacks %q:\n%s", want, r.err)
					}
				}
			}
			if strings.Contains(p.log(), "upstream pinned") {
				t.Errorf("proxy log:\n%s", p.log())
			}
			if entries, _ := os.ReadDir(rootOwned); len(entries) != 0 {
				t.Errorf("something was written to the unwritable directory: %v", entries)
			}
		})
	}
}

// TestFaultSilentClients: 50 clients connect and send nothing. The proxy
// closes each at --startup-timeout, counts them as startup_timeout refusals,
// serves a real client meanwhile, and afterwards holds no session and no
// more file descriptors than before.
func TestFaultSilentClients(t *testing.T) {
	const silent = 50
	// Long enough that 50 dials and a whole psql session fit before it on
	// a loaded 2-core machine.
	const timeout = 5 * time.Second
	p, admin := faultProxy(t, cluster.Port, "--startup-timeout", timeout.String())
	// A first session, so that what a served session leaves (pooled
	// connections, the admin scrape's connection) is in the baseline.
	if r := runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 'warm'"); r.code != 0 {
		t.Fatalf("psql: %+v", r)
	}
	waitForValue(t, "no active session", 10*time.Second, 0, func() float64 { return activeSessions(t, admin) })
	fds := func() float64 { return metric(t, scrape(t, admin), "process_open_fds") }
	baseline := fds()

	type result struct {
		after time.Duration
		err   error
		n     int
	}
	results := make(chan result, silent)
	opened := time.Now()
	for i := 0; i < silent; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), 5*time.Second)
		if err != nil {
			t.Fatalf("silent client %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		start := time.Now()
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(timeout + 10*time.Second))
			n, err := io.Copy(io.Discard, c) // until the proxy closes
			results <- result{time.Since(start), err, int(n)}
		}()
	}
	waitForValue(t, "the silent clients are counted as active", 5*time.Second, silent, func() float64 { return activeSessions(t, admin) })
	// A real client is served while they wait.
	if r := runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 'served'"); r.code != 0 || r.out != "served" {
		t.Fatalf("psql while %d silent clients hold connections: %+v", silent, r)
	}
	if time.Since(opened) >= timeout {
		t.Fatalf("the real client was served only after the startup timeout (%v): the test proves nothing", time.Since(opened))
	}
	var min, max time.Duration
	for i := 0; i < silent; i++ {
		r := <-results
		if r.err != nil {
			t.Errorf("silent client: not closed by the proxy: %v after %v", r.err, r.after)
			continue
		}
		if min == 0 || r.after < min {
			min = r.after
		}
		if r.after > max {
			max = r.after
		}
	}
	t.Logf("silent clients closed after %v..%v (startup timeout %v)", min.Round(time.Millisecond), max.Round(time.Millisecond), timeout)
	// A client's clock starts after its dial returns, the proxy's at
	// accept: a stall in between makes the client see a little less.
	if min < timeout-time.Second || max > timeout+3*time.Second {
		t.Errorf("silent clients closed after %v..%v, want around the %v startup timeout", min, max, timeout)
	}
	waitForValue(t, "active sessions after the silent clients were closed", 10*time.Second, 0, func() float64 { return activeSessions(t, admin) })
	waitForValue(t, "startup_timeout refusals", 10*time.Second, silent, func() float64 {
		return scrape(t, admin)[`pgverifyproxy_refused_total{cause="startup_timeout",route="default"}`]
	})
	// File descriptors: back to the baseline (a readiness probe in flight
	// may hold one or two for a moment).
	deadline := time.Now().Add(15 * time.Second)
	for {
		now := fds()
		if now <= baseline+2 {
			t.Logf("open fds: baseline %v, now %v", baseline, now)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("open fds %v, baseline %v: the silent clients' sockets leaked", now, baseline)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestFaultClientVanishesMidCOPY: a client sends part of a COPY FROM STDIN
// and its connection is reset (SO_LINGER 0, close). The proxy must close the
// upstream session: its backend leaves pg_stat_activity within 15s (the
// relay re-reads a quiet plaintext client leg every 10s), nothing of the
// COPY is committed, and the proxy holds no session.
func TestFaultClientVanishesMidCOPY(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adm := scratchTable(t, ctx, "fault_copy")
	p, admin := faultProxy(t, cluster.Port)
	for _, tc := range []struct {
		sslmode string
		// behind: the reset follows a CopyData message at once, so that
		// data and reset reach the proxy together (the case its relay
		// re-checks every 10s); else the client leg is quiet before it.
		behind bool
	}{{"disable", false}, {"disable", true}, {"require", false}, {"require", true}} {
		sslmode := tc.sslmode
		name := "client leg sslmode=" + sslmode + ", reset on a quiet connection"
		if tc.behind {
			name = "client leg sslmode=" + sslmode + ", reset right behind data"
		}
		t.Run(name, func(t *testing.T) {
			conn, err := pgconn.Connect(ctx, proxyDSN(p.port, sslmode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			pid := int(conn.PID())
			pr, pw := io.Pipe()
			copyDone := make(chan error, 1)
			go func() {
				_, err := conn.CopyFrom(ctx, pr, "copy fault_copy from stdin")
				copyDone <- err
			}()
			// Some rows, and wait until the server is in the COPY.
			go func() {
				for i := 0; i < 1000; i++ {
					if _, err := fmt.Fprintf(pw, "%d\t%s row %d\n", i, sslmode, i); err != nil {
						return
					}
				}
			}()
			waitFor(t, "the backend is in the COPY", func() bool {
				var n int
				_ = adm.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = $1 and query like 'copy fault_copy%' and state = 'active'", pid).Scan(&n)
				return n == 1
			})
			time.Sleep(200 * time.Millisecond) // let the rows reach the server
			raw := conn.Conn()
			var tcp *net.TCPConn
			switch c := raw.(type) {
			case *net.TCPConn:
				tcp = c
			case interface{ NetConn() net.Conn }:
				tcp, _ = c.NetConn().(*net.TCPConn)
			}
			if tcp == nil {
				t.Fatalf("no TCP connection under %T", raw)
			}
			if err := tcp.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			if tc.behind {
				// pgx waits on the pipe: nothing else writes meanwhile.
				msg, err := (&pgproto3.CopyData{Data: []byte("1000\t" + sslmode + " row 1000\n")}).Encode(nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := raw.Write(msg); err != nil {
					t.Fatal(err)
				}
			}
			reset := time.Now()
			tcp.Close()
			pw.CloseWithError(errors.New("client vanished"))
			select {
			case <-copyDone:
			case <-time.After(10 * time.Second):
				t.Error("pgx's CopyFrom did not return after its connection was closed")
			}

			deadline := reset.Add(15 * time.Second)
			for {
				var n int
				if err := adm.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = $1", pid).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					t.Logf("backend %d gone %v after the client's reset", pid, time.Since(reset).Round(time.Millisecond))
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("backend %d of the vanished client still in pg_stat_activity 15s after the reset: the upstream session leaked\nproxy log:\n%s", pid, p.log())
				}
				time.Sleep(100 * time.Millisecond)
			}
			var rows int
			if err := adm.QueryRow(ctx, "select count(*) from fault_copy").Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if rows != 0 {
				t.Errorf("%d rows of the interrupted COPY were committed", rows)
			}
			waitForValue(t, "active sessions after the client vanished", 10*time.Second, 0, func() float64 { return activeSessions(t, admin) })
		})
	}
}
