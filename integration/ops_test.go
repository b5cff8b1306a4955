//go:build linux

package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// httpGet returns the status and body of an admin endpoint.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads /metrics into a map keyed by the series as printed, e.g.
// `pgverifyproxy_sessions_total{result="completed",route="main"}`.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// metric returns one series, failing when it is absent.
func metric(t *testing.T, m map[string]float64, series string) float64 {
	t.Helper()
	v, ok := m[series]
	if !ok {
		var names []string
		for k := range m {
			if strings.HasPrefix(k, "pgverifyproxy_") {
				names = append(names, k)
			}
		}
		t.Fatalf("no series %s; pgverifyproxy series: %s", series, strings.Join(names, "\n"))
	}
	return v
}

// waitFor polls cond until it holds (what is asserted is the outcome, not
// how long it took).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOpsMetricsHealthAndLimit runs the binary with two routes, a good one
// with max_connections 2 and one whose upstream fails verification, and
// watches /metrics, /healthz and /readyz while clients use it.
func TestOpsMetricsHealthAndLimit(t *testing.T) {
	ports := freePorts(t, 3)
	mainPort, badPort, adminPort := ports[0], ports[1], ports[2]
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, cfg, fmt.Sprintf(`ca_file: %s
pin_dir: %s
admin: %s
ready_window: 3s
routes:
  - name: main
    listen: [127.0.0.1:%d]
    upstream: localhost:%d
    max_connections: 2
  - name: wrong-name
    listen: [127.0.0.1:%d]
    upstream: localhost:%d
    server_name: db.wrong.example
`, rootFile, t.TempDir(), admin, mainPort, cluster.Port, badPort, cluster.Port))
	p := startCLIArgs(t, nil, "run", "--config", cfg)
	waitForLog(t, p, "admin endpoint")

	if code, body := httpGet(t, "http://"+admin+"/healthz"); code != 200 {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	// The bad route makes the proxy not ready, and the body says why.
	var body string
	waitFor(t, "/readyz has verified main and names why wrong-name fails", func() bool {
		_, body = httpGet(t, "http://"+admin+"/readyz")
		return strings.Contains(body, "ok   main: upstream verified") && strings.Contains(body, "db.wrong.example")
	})
	if code, body := httpGet(t, "http://"+admin+"/readyz"); code != 503 {
		t.Errorf("/readyz with an unverifiable route: %d, want 503:\n%s", code, body)
	}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		switch {
		case strings.Contains(line, "wrong-name") && !strings.HasPrefix(line, "FAIL"):
			t.Errorf("/readyz line for the bad route: %q", line)
		case strings.Contains(line, " main:") && !strings.HasPrefix(line, "ok"):
			t.Errorf("/readyz line for the good route: %q", line)
		}
	}

	// One session: counted as completed, its bytes in both directions.
	if r := runPsql(t, mainPort, "user="+harness.MD5User, harness.MD5Password, "select 1"); r.code != 0 || r.out != "1" {
		t.Fatalf("psql via main: %+v", r)
	}
	waitFor(t, "the session is counted", func() bool {
		return scrape(t, admin)[`pgverifyproxy_sessions_total{result="completed",route="main"}`] == 1
	})
	m := scrape(t, admin)
	down := metric(t, m, `pgverifyproxy_bytes_total{direction="to_client",route="main"}`)
	up := metric(t, m, `pgverifyproxy_bytes_total{direction="to_upstream",route="main"}`)
	if down <= 0 || up <= 0 {
		t.Errorf("bytes to client %v, to upstream %v after a query", down, up)
	}
	const big = 300000
	if r := runPsql(t, mainPort, "user="+harness.MD5User, harness.MD5Password, fmt.Sprintf("select length(repeat('x', %d) || '')", big)); r.code != 0 {
		t.Fatalf("psql: %+v", r)
	}
	if r := runPsql(t, mainPort, "user="+harness.MD5User, harness.MD5Password, fmt.Sprintf("select repeat('x', %d)", big)); r.code != 0 || len(r.out) != big {
		t.Fatalf("psql big result: code %d, %d bytes", r.code, len(r.out))
	}
	waitFor(t, "three completed sessions", func() bool {
		return scrape(t, admin)[`pgverifyproxy_sessions_total{result="completed",route="main"}`] == 3
	})
	m = scrape(t, admin)
	if d := metric(t, m, `pgverifyproxy_bytes_total{direction="to_client",route="main"}`) - down; d < big {
		t.Errorf("bytes to client grew by %v after a %d-byte result", d, big)
	}

	// The limit: two sessions held, the third refused with 53300.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", mainPort, harness.MD5User, harness.MD5Password)
	for i := 0; i < 2; i++ {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
	}
	// sslmode=disable: with prefer, libpq tries again without TLS after an
	// error, and each attempt is a refusal of its own.
	r := runPsql(t, mainPort, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 1")
	if r.code == 0 || !strings.Contains(r.err, "too many clients already") || !strings.Contains(r.err, "max_connections") {
		t.Errorf("third session beyond max_connections 2: %+v", r)
	}
	// And the bad route refuses with the verification error.
	r = runPsql(t, badPort, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 1")
	if r.code == 0 || !strings.Contains(r.err, "db.wrong.example") {
		t.Errorf("psql via the bad route: %+v", r)
	}
	waitFor(t, "the refusals are counted", func() bool {
		m := scrape(t, admin)
		// A refused session is counted as ended just after its refusal,
		// and leaves sessions_active just after that.
		ok := m[`pgverifyproxy_refused_total{cause="limit",route="main"}`] == 1 &&
			m[`pgverifyproxy_refused_total{cause="verification",route="wrong-name"}`] == 1 &&
			m[`pgverifyproxy_sessions_total{result="refused",route="main"}`] == 1 &&
			m[`pgverifyproxy_sessions_active{route="main"}`] == 2
		return ok
	})
	m = scrape(t, admin)
	if v := metric(t, m, `pgverifyproxy_upstream_handshake_seconds_count{result="ok",route="main"}`); v < 5 {
		t.Errorf("verified handshakes on main = %v, want at least the 5 sessions", v)
	}
	if v := metric(t, m, `pgverifyproxy_upstream_handshake_seconds_count{result="error",route="wrong-name"}`); v < 1 {
		t.Errorf("failed handshakes on wrong-name = %v", v)
	}
	// The expiry gauges match the test certificates.
	for series, notAfter := range map[string]time.Time{
		`pgverifyproxy_upstream_leaf_expiry_seconds{route="main"}`:   pki.Leaf.Cert.NotAfter,
		`pgverifyproxy_upstream_anchor_expiry_seconds{route="main"}`: pki.Root.Cert.NotAfter,
	} {
		want := time.Until(notAfter).Seconds()
		if got := metric(t, m, series); math.Abs(got-want) > 120 {
			t.Errorf("%s = %.0f, want %.0f (the certificate's NotAfter)", series, got, want)
		}
	}
	found := false
	for k, v := range m {
		found = found || (strings.HasPrefix(k, "pgverifyproxy_build_info{") && v == 1)
	}
	if !found {
		t.Error("no pgverifyproxy_build_info series")
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("no go_goroutines series")
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitExit waits for the proxy process to exit and returns its exit code.
func waitExit(t *testing.T, p *cliProxy) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("waiting for the proxy: %v", err)
		}
		return 0
	case <-time.After(60 * time.Second):
		t.Fatalf("the proxy did not exit; log:\n%s", p.log())
	}
	return -1
}

// refusesConnections reports whether nothing accepts on the port any more.
func refusesConnections(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return true
}

// TestOpsSIGTERMDrain: a transaction running at SIGTERM commits and the
// process exits 0 once the session ends; with a short drain timeout the
// session is closed (its transaction rolled back) and the exit is clean.
func TestOpsSIGTERMDrain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adm := scratchTable(t, ctx, "drain_test")
	count := func(note string) int {
		var n int
		if err := adm.QueryRow(ctx, "select count(*) from drain_test where note = $1", note).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	for _, tc := range []struct {
		name, drain string
		commits     bool
	}{
		{"long drain: the transaction commits", "60s", true},
		{"short drain: the session is closed", "1s", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile,
				"--pin-dir", t.TempDir(), "--drain-timeout", tc.drain)
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
			note := tc.drain
			if _, err := tx.Exec(ctx, "insert into drain_test values (1, $1)", note); err != nil {
				t.Fatal(err)
			}
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitForLog(t, p, "shutting down")
			waitFor(t, "the listener is closed", func() bool { return refusesConnections(p.port) })
			if !tc.commits {
				if code := waitExit(t, p); code != 0 {
					t.Fatalf("exit code %d after the drain timeout; log:\n%s", code, p.log())
				}
				if _, err := tx.Exec(ctx, "insert into drain_test values (2, $1)", note); err == nil {
					t.Error("the session still works after the drain timeout")
				}
				if n := count(note); n != 0 {
					t.Errorf("%d rows of the closed session's transaction were committed", n)
				}
				if !strings.Contains(p.log(), "remaining sessions were closed") {
					t.Errorf("log does not say sessions were closed:\n%s", p.log())
				}
				return
			}
			// The session runs on while the proxy drains.
			if _, err := tx.Exec(ctx, "insert into drain_test values (2, $1)", note); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatalf("commit during the drain: %v", err)
			}
			if n := count(note); n != 2 {
				t.Errorf("%d rows committed, want 2", n)
			}
			conn.Close(ctx)
			if code := waitExit(t, p); code != 0 {
				t.Fatalf("exit code %d after a clean drain; log:\n%s", code, p.log())
			}
			if !strings.Contains(p.log(), "drained: every session ended") {
				t.Errorf("log does not report the clean drain:\n%s", p.log())
			}
		})
	}
}

// TestOpsSIGHUPReload: SIGHUP with a changed file adds a route while a
// session runs; a broken file is rejected, logged, and changes nothing.
func TestOpsSIGHUPReload(t *testing.T) {
	ports := freePorts(t, 2)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	pins := t.TempDir()
	routeYAML := func(name string, port int) string {
		return fmt.Sprintf("  - name: %s\n    listen: [127.0.0.1:%d]\n    upstream: localhost:%d\n", name, port, cluster.Port)
	}
	head := fmt.Sprintf("ca_file: %s\npin_dir: %s\nroutes:\n", rootFile, pins)
	writeFile(t, cfg, head+routeYAML("one", ports[0]))
	p := startCLIArgs(t, nil, "run", "--config", cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dsn := func(port int) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", port, harness.MD5User, harness.MD5Password)
	}
	conn, err := pgx.Connect(ctx, dsn(ports[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	samePID := func(when string) {
		t.Helper()
		var now int
		if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&now); err != nil || now != pid {
			t.Fatalf("%s: the running session broke: pid %d (was %d), %v", when, now, pid, err)
		}
	}
	if !refusesConnections(ports[1]) {
		t.Fatal("port of route two in use before the reload")
	}

	writeFile(t, cfg, head+routeYAML("one", ports[0])+routeYAML("two", ports[1]))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, p, "configuration reloaded")
	samePID("after adding a route")
	if r := runPsql(t, ports[1], "user="+harness.MD5User, harness.MD5Password, "select 'two'"); r.code != 0 || r.out != "two" {
		t.Fatalf("psql via the added route: %+v\nlog:\n%s", r, p.log())
	}

	// Broken files: each is rejected with its reason and changes nothing.
	for _, bad := range []struct{ content, reason string }{
		{head + routeYAML("one", ports[0]) + "  - name: three\n    upstream: [not, a, string\n", "reading config file"},
		{head + routeYAML("one", ports[0]) + routeYAML("two", ports[1]) + "    cafile: typo.pem\n", "routes[1].cafile"},
		{head + routeYAML("one", ports[0]) + "  - name: two\n    listen: [127.0.0.1:" + strconv.Itoa(ports[1]) + "]\n    upstream: localhost:1\n    client_tls_cert: /nonexistent.crt\n    client_tls_key: /nonexistent.key\n", "/nonexistent.crt"},
	} {
		before := strings.Count(p.log(), "reload rejected")
		writeFile(t, cfg, bad.content)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the broken config is rejected", func() bool { return strings.Count(p.log(), "reload rejected") > before })
		lines := strings.Split(p.log(), "\n")
		var last string
		for _, l := range lines {
			if strings.Contains(l, "reload rejected") {
				last = l
			}
		}
		if !strings.Contains(last, bad.reason) {
			t.Errorf("rejection line %q does not give the reason %q", last, bad.reason)
		}
		samePID("after a rejected reload")
		for _, port := range ports {
			if r := runPsql(t, port, "user="+harness.MD5User, harness.MD5Password, "select 'still'"); r.code != 0 || r.out != "still" {
				t.Errorf("route on port %d after a rejected reload: %+v", port, r)
			}
		}
	}

	// Removing a route closes its listener; the running session stays.
	writeFile(t, cfg, head+routeYAML("one", ports[0]))
	before := strings.Count(p.log(), "configuration reloaded")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second reload", func() bool { return strings.Count(p.log(), "configuration reloaded") > before })
	waitFor(t, "route two stops listening", func() bool { return refusesConnections(ports[1]) })
	samePID("after removing a route")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestOpsTCPKeepalive reads the kernel's socket timers (ss -o) of the
// proxy's two legs: keepalive is on with the configured idle time, and
// off with tcp_keepalive 0.
func TestOpsTCPKeepalive(t *testing.T) {
	if _, err := exec.LookPath("ss"); err != nil {
		t.Fatal("ss (iproute2) not found: install iproute2 (scripts/setup does)")
	}
	for _, tc := range []struct {
		setting string
		want    bool
	}{{"7s", true}, {"0", false}} {
		t.Run("tcp_keepalive="+tc.setting, func(t *testing.T) {
			p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile,
				"--pin-dir", t.TempDir(), "--tcp-keepalive", tc.setting)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", p.port, harness.MD5User, harness.MD5Password))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			// While a segment waits for its ACK the kernel shows the
			// retransmit timer ("timer:(on,") instead: look again then.
			var out []byte
			var legs map[string]string
			for try := 0; try < 50; try++ {
				var err error
				out, err = exec.Command("ss", "-tnopH", "state", "established").Output()
				if err != nil {
					t.Fatalf("ss: %v", err)
				}
				pid := fmt.Sprintf("pid=%d,", p.cmd.Process.Pid)
				legs = map[string]string{}
				for _, line := range strings.Split(string(out), "\n") {
					f := strings.Fields(line)
					if !strings.Contains(line, pid) || len(f) < 4 {
						continue
					}
					switch {
					case strings.HasSuffix(f[2], fmt.Sprintf(":%d", p.port)):
						legs["client"] = line
					case strings.HasSuffix(f[3], fmt.Sprintf(":%d", cluster.Port)):
						legs["upstream"] = line
					}
				}
				if !strings.Contains(legs["client"], "timer:(on,") && !strings.Contains(legs["upstream"], "timer:(on,") {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, leg := range []string{"client", "upstream"} {
				line, ok := legs[leg]
				if !ok {
					t.Fatalf("no %s-leg socket of the proxy in ss output:\n%s", leg, out)
				}
				has := strings.Contains(line, "timer:(keepalive,")
				if has != tc.want {
					t.Errorf("%s leg keepalive %v, want %v: %s", leg, has, tc.want, line)
				}
				if tc.want {
					// Go's default would show 15 s; iproute2 6.1 prints the
					// seconds left as "6.980ms".
					m := regexpKeepalive.FindStringSubmatch(line)
					if m == nil {
						t.Fatalf("%s leg: no keepalive timer value in %q", leg, line)
					}
					if left, _ := strconv.ParseFloat(m[1], 64); m[2] == "min" || left > 7 {
						t.Errorf("%s leg keepalive timer is not the configured 7s: %s", leg, line)
					}
				}
			}
		})
	}
}

// regexpKeepalive captures the time left on a keepalive timer and its unit.
var regexpKeepalive = regexp.MustCompile(`timer:\(keepalive,([0-9.]+)([a-z]*),`)

// clientLegCertificate opens a TLS client leg to the proxy (SSLRequest,
// then a handshake that trusts the test root) and returns the certificate
// the proxy presented.
func clientLegCertificate(t *testing.T, port int) *x509.Certificate {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q %v", b, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "localhost", RootCAs: testpki.Pool(pki.Root), NextProtos: []string{"postgresql"}})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("client-leg handshake: %v", err)
	}
	return tc.ConnectionState().PeerCertificates[0]
}

// TestOpsSIGHUPReloadsClientTLSCertificate: a renewed client_tls_cert is
// served to new clients after SIGHUP; the session that was open keeps going.
func TestOpsSIGHUPReloadsClientTLSCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "local.crt"), filepath.Join(dir, "local.key")
	issue := func(cn string) *testpki.Cert {
		c, err := testpki.IssueLeaf(pki.Intermediate, testpki.LeafOptions{CommonName: cn, DNSNames: []string{"localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := testpki.WritePEMFile(certFile, c.ChainPEM(pki.Intermediate)); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, c.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := issue("local first")
	p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile, "--pin-dir", t.TempDir(),
		"--client-tls", "require", "--client-tls-cert", certFile, "--client-tls-key", keyFile)
	if got := clientLegCertificate(t, p.port); got.Subject.CommonName != "local first" {
		t.Fatalf("client leg certificate %q, want the first one", got.Subject.CommonName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=require", p.port, harness.MD5User, harness.MD5Password))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	second := issue("local renewed")
	if first.Cert.SerialNumber.Cmp(second.Cert.SerialNumber) == 0 {
		t.Fatal("the renewed certificate has the old serial")
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, p, "configuration reloaded")
	if got := clientLegCertificate(t, p.port); got.Subject.CommonName != "local renewed" {
		t.Errorf("after SIGHUP the client leg presents %q, want the renewed certificate", got.Subject.CommonName)
	}
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Errorf("the session open across the reload: %d %v", one, err)
	}
}

// TestOpsPrewarm: with prewarm, verified upstream connections are made
// before any client, replaced when they reach prewarm_max_age, and a
// client's session runs over one of them.
func TestOpsPrewarm(t *testing.T) {
	ports := freePorts(t, 1)
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile, "--pin-dir", t.TempDir(),
		"--prewarm", "2", "--prewarm-max-age", "2s", "--admin", admin)
	dials := func() float64 {
		return scrape(t, admin)[`pgverifyproxy_upstream_handshake_seconds_count{result="ok",route="default"}`]
	}
	// Two pre-dials and the readiness probe, then replacements as the
	// connections reach 2 s, all before any client.
	waitFor(t, "pre-dialled connections are replaced when old", func() bool { return dials() >= 7 })
	if v := scrape(t, admin)[`pgverifyproxy_sessions_total{result="completed",route="default"}`]; v != 0 {
		t.Fatalf("%v sessions before any client", v)
	}
	before := dials()
	if r := runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 'warm'"); r.code != 0 || r.out != "warm" {
		t.Fatalf("psql through a pre-dialled connection: %+v", r)
	}
	waitFor(t, "the session is counted", func() bool {
		return scrape(t, admin)[`pgverifyproxy_sessions_total{result="completed",route="default"}`] == 1
	})
	// The session ran over a ready connection, and nothing failed.
	waitForLog(t, p, "prewarmed=true")
	if strings.Contains(p.log(), "level=ERROR") {
		t.Errorf("errors in the log:\n%s", p.log())
	}
	if dials() < before {
		t.Error("handshake counter went backwards")
	}
}

// TestIdentityChangedIsItsOwnCause: a pinned route whose server moves to a
// chain under another root is refused with the cause identity_changed,
// counted apart from a wrong-name refusal (verification) on another route.
func TestIdentityChangedIsItsOwnCause(t *testing.T) {
	restoreClusterCert(t)
	serveCert(t, pki.Leaf.ChainPEM(pki.Intermediate, pki.Root), pki.Leaf.KeyPEM)
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	pinDir := t.TempDir()
	if out, code := runCLI(t, nil, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir, "--trust", "tofu"); code != 0 {
		t.Fatalf("pinning: exit %d\n%s", code, out)
	}
	ports := freePorts(t, 3)
	admin := fmt.Sprintf("127.0.0.1:%d", ports[2])
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, cfg, fmt.Sprintf(`pin_dir: %s
admin: %s
routes:
  - name: pinned
    listen: [127.0.0.1:%d]
    upstream: %s
  - name: wrong-name
    listen: [127.0.0.1:%d]
    upstream: %s
    server_name: db.wrong.example
    ca_file: %s
`, pinDir, admin, ports[0], upstream, ports[1], upstream, rootFile))
	p := startCLIArgs(t, nil, "run", "--config", cfg)
	waitForLog(t, p, "admin endpoint")
	if r := runPsql(t, ports[1], "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 1"); r.code == 0 || !strings.Contains(r.err, "db.wrong.example") {
		t.Fatalf("the wrong-name route: %+v", r)
	}
	serveCert(t, pki.OtherLeaf.ChainPEM(pki.OtherRoot), pki.OtherLeaf.KeyPEM)
	if r := runPsql(t, ports[0], "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 1"); r.code == 0 || !strings.Contains(r.err, "IDENTITY CHANGED") {
		t.Fatalf("the pinned route after a change of root: %+v\n%s", r, p.log())
	}
	waitFor(t, "both refusals are counted, each under its cause", func() bool {
		m := scrape(t, admin)
		return m[`pgverifyproxy_refused_total{cause="identity_changed",route="pinned"}`] == 1 &&
			m[`pgverifyproxy_refused_total{cause="verification",route="wrong-name"}`] == 1 &&
			m[`pgverifyproxy_refused_total{cause="verification",route="pinned"}`] == 0
	})
	waitForLog(t, p, "reason=identity_changed")
}
