//go:build linux

package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// haPair starts a primary on 127.0.0.1 and a streaming standby on
// 127.0.0.2, each with a certificate for its own address only, under the
// test CA.
func haPair(t *testing.T) (primary, standby *harness.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	leaf := func(ip string) *testpki.Cert {
		c, err := testpki.IssueLeaf(pki.Intermediate, testpki.LeafOptions{CommonName: ip, IPs: []net.IP{net.ParseIP(ip)}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pl, sl := leaf("127.0.0.1"), leaf("127.0.0.2")
	primary, err := harness.StartCluster(ctx, harness.ClusterOptions{ServerCertPEM: pl.ChainPEM(pki.Intermediate), ServerKeyPEM: pl.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = primary.Stop() })
	standby, err = primary.StartStandby(ctx, harness.StandbyOptions{Host: "127.0.0.2", ServerCertPEM: sl.ChainPEM(pki.Intermediate), ServerKeyPEM: sl.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standby.Stop() })
	return primary, standby
}

// whereAmI is what a session reports of its server: its address and
// whether it is in recovery.
const whereAmI = "select host(inet_server_addr()) || '|' || pg_is_in_recovery()"

// TestFailoverHostList: a route whose upstream lists the standby first and
// the primary second. With target_session_attrs=read-write the proxy's own
// logins (auth relay) skip the standby unseen; a relayed login (auth
// passthrough) that reached the standby is refused with 57P03 and the next
// connection reaches the primary. read-only and prefer-standby reach the
// standby. After the primary stops and the standby is promoted, new
// read-write sessions reach the new primary without restarting the proxy.
func TestFailoverHostList(t *testing.T) {
	primary, standby := haPair(t)
	hosts := fmt.Sprintf("127.0.0.2:%d,127.0.0.1:%d", standby.Port, primary.Port)
	uri := func(attrs string) string { return "postgres://" + hosts + "/?target_session_attrs=" + attrs }
	scram := "user=" + harness.ScramUser + " sslmode=disable"

	rw := startCLI(t, nil, "--upstream", uri("read-write"), "--ca-file", rootFile, "--auth", "relay")
	if r := runPsql(t, rw.port, scram, harness.ScramPassword, whereAmI); r.code != 0 || r.out != "127.0.0.1|false" {
		t.Fatalf("read-write through auth relay: exit %d out %q err %q\n%s", r.code, r.out, r.err, rw.log())
	}
	// A cancel reaches the host that serves the session (the second of
	// the list).
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
			rw.port, harness.ScramUser, harness.ScramPassword))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		go func() {
			time.Sleep(500 * time.Millisecond)
			_ = conn.PgConn().CancelRequest(ctx)
		}()
		start := time.Now()
		_, err = conn.Exec(ctx, "select pg_sleep(20)")
		var pe *pgconn.PgError
		if took := time.Since(start); !errors.As(err, &pe) || pe.Code != "57014" || took > 10*time.Second {
			t.Fatalf("pg_sleep cancelled through the host list: %v after %v, want 57014 at once\n%s", err, took, rw.log())
		}
	}()
	// prewarm: the pool pre-dials the host that served last.
	waitForLog(t, rw, fmt.Sprintf("host=127.0.0.1:%d upstream_addr=127.0.0.1:%d", primary.Port, primary.Port))
	warm := startCLI(t, nil, "--upstream", uri("read-write"), "--ca-file", rootFile, "--auth", "relay", "--prewarm", "2")
	for i := 0; i < 2; i++ {
		if r := runPsql(t, warm.port, scram, harness.ScramPassword, whereAmI); r.code != 0 || r.out != "127.0.0.1|false" {
			t.Fatalf("read-write with prewarm, session %d: exit %d out %q err %q\n%s", i, r.code, r.out, r.err, warm.log())
		}
		time.Sleep(300 * time.Millisecond) // the pool refills with the preferred host
	}
	waitForLog(t, warm, "prewarmed=true")
	ro := startCLI(t, nil, "--upstream", uri("read-only"), "--ca-file", rootFile, "--auth", "relay")
	if r := runPsql(t, ro.port, scram, harness.ScramPassword, whereAmI); r.code != 0 || r.out != "127.0.0.2|true" {
		t.Fatalf("read-only: exit %d out %q err %q\n%s", r.code, r.out, r.err, ro.log())
	}
	ps := startCLI(t, nil, "--upstream", uri("prefer-standby"), "--ca-file", rootFile, "--auth", "relay")
	if r := runPsql(t, ps.port, scram, harness.ScramPassword, whereAmI); r.code != 0 || r.out != "127.0.0.2|true" {
		t.Fatalf("prefer-standby: exit %d out %q err %q\n%s", r.code, r.out, r.err, ps.log())
	}

	// auth auto: a TLS client's SCRAM login is the proxy's own (it asks
	// the client for its password), so the standby is skipped unseen; a
	// plaintext client answers the server itself, as in passthrough.
	auto := startCLI(t, nil, "--upstream", uri("read-write"), "--ca-file", rootFile)
	if r := runPsql(t, auto.port, "user="+harness.ScramUser+" sslmode=require", harness.ScramPassword, whereAmI); r.code != 0 || r.out != "127.0.0.1|false" {
		t.Fatalf("auto, sslmode=require: exit %d out %q err %q\n%s", r.code, r.out, r.err, auto.log())
	}

	pt := startCLI(t, nil, "--upstream", uri("read-write"), "--ca-file", rootFile, "--auth", "passthrough")
	first := runPsql(t, pt.port, scram, harness.ScramPassword, whereAmI)
	if first.code == 0 || !strings.Contains(first.err, "is a hot standby, and this route wants target_session_attrs=read-write") {
		t.Fatalf("passthrough, first connection: exit %d out %q err %q, want a refusal naming the standby\n%s", first.code, first.out, first.err, pt.log())
	}
	if r := runPsql(t, pt.port, scram, harness.ScramPassword, whereAmI); r.code != 0 || r.out != "127.0.0.1|false" {
		t.Fatalf("passthrough, next connection: exit %d out %q err %q\n%s", r.code, r.out, r.err, pt.log())
	}

	// libpq parity: psql straight to the same host list with the same
	// target_session_attrs picks the same server as the proxy does.
	for _, attrs := range []string{"any", "read-write", "read-only", "primary", "standby", "prefer-standby"} {
		p := startCLI(t, nil, "--upstream", uri(attrs), "--ca-file", rootFile, "--auth", "relay")
		via := runPsql(t, p.port, scram, harness.ScramPassword, whereAmI)
		direct := psqlDSN(t, fmt.Sprintf("host=127.0.0.2,127.0.0.1 port=%d,%d dbname=postgres user=%s target_session_attrs=%s sslmode=verify-full sslrootcert=%s connect_timeout=20",
			standby.Port, primary.Port, harness.ScramUser, attrs, rootFile), harness.ScramPassword, whereAmI)
		if via.code != 0 || direct.code != 0 || via.out != direct.out {
			t.Errorf("target_session_attrs=%s: the proxy chose %q (exit %d, %q), libpq chose %q (exit %d, %q)", attrs, via.out, via.code, via.err, direct.out, direct.code, direct.err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// pgbench through the read-write route across the failover, a new
	// connection per transaction: it must end on its own (no session
	// hangs); only transactions in flight at the failover may fail.
	script := filepath.Join(t.TempDir(), "select.sql")
	if err := os.WriteFile(script, []byte("select 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bench := exec.CommandContext(ctx, "pgbench", "-n", "-C", "-c", "2", "-T", "6", "-f", script,
		"-h", "127.0.0.1", "-p", strconv.Itoa(rw.port), "-U", harness.ScramUser, "postgres")
	bench.Env = append(cleanEnv(), "PGPASSWORD="+harness.ScramPassword, "PGSSLMODE=disable")
	var benchOut syncBuffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := primary.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoteTook := time.Since(promoted)
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	select {
	case err := <-benchDone:
		t.Logf("pgbench across the failover ended (%v):\n%s", err, benchOut.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("pgbench across the failover still runs 30 s after a 6 s run: a session hangs\n%s\nproxy log:\n%s", benchOut.String(), rw.log())
	}
	r := runPsql(t, rw.port, scram, harness.ScramPassword, whereAmI)
	if r.code != 0 || r.out != "127.0.0.2|false" {
		t.Fatalf("read-write after the failover: exit %d out %q err %q\n%s", r.code, r.out, r.err, rw.log())
	}
	firstSession := time.Since(promoted)
	// Every auth mode, psql and pgx, reaches the new primary.
	for _, p := range []struct {
		name string
		px   *cliProxy
		ssl  string
	}{{"auto, sslmode=require", auto, "require"}, {"auto, sslmode=disable", auto, "disable"}, {"passthrough", pt, "disable"}} {
		var r psqlResult
		for try := 0; try < 2; try++ {
			// A relayed login may meet the old order once (57P03).
			if r = runPsql(t, p.px.port, "user="+harness.ScramUser+" sslmode="+p.ssl, harness.ScramPassword, whereAmI); r.code == 0 {
				break
			}
		}
		if r.code != 0 || r.out != "127.0.0.2|false" {
			t.Fatalf("%s after the failover: exit %d out %q err %q\n%s", p.name, r.code, r.out, r.err, p.px.log())
		}
	}
	func() {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
			rw.port, harness.ScramUser, harness.ScramPassword))
		if err != nil {
			t.Fatalf("pgx after the failover: %v", err)
		}
		defer conn.Close(context.Background())
		var where string
		if err := conn.QueryRow(ctx, whereAmI).Scan(&where); err != nil || where != "127.0.0.2|false" {
			t.Fatalf("pgx after the failover: %q, %v", where, err)
		}
	}()
	// The prewarm pool held connections to the old primary: the session
	// goes on to the new one.
	if r := runPsql(t, warm.port, scram, harness.ScramPassword, whereAmI); r.code != 0 || r.out != "127.0.0.2|false" {
		t.Fatalf("read-write with prewarm after the failover: exit %d out %q err %q\n%s", r.code, r.out, r.err, warm.log())
	}
	t.Logf("pg_ctl promote -w took %v; from its start to the first read-write session on the new primary through the proxy: %v",
		promoteTook.Round(time.Millisecond), firstSession.Round(time.Millisecond))
}

// TestHostListVerifiesEachHost: each host of a list is verified under its
// own name. A host presenting a certificate valid for another host of the
// list, and a host behind an interceptor (another CA), are refused, and
// the route goes on with the host that verifies; the refused hosts never
// get a startup message.
func TestHostListVerifiesEachHost(t *testing.T) {
	primary, _ := haPair(t)
	standbyCert, err := testpki.IssueLeaf(pki.Intermediate, testpki.LeafOptions{CommonName: "127.0.0.2", IPs: []net.IP{net.ParseIP("127.0.0.2")}})
	if err != nil {
		t.Fatal(err)
	}
	wrongName, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: standbyCert.TLSCertificate(pki.Intermediate)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wrongName.Close)
	mitm, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: pki.OtherLeaf.TLSCertificate(pki.OtherRoot)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mitm.Close)
	hosts := fmt.Sprintf("%s,%s,127.0.0.1:%d", wrongName.Addr, mitm.Addr, primary.Port)
	p := startCLI(t, nil, "--upstream", hosts, "--target-session-attrs", "read-write", "--ca-file", rootFile, "--auth", "relay")
	r := runPsql(t, p.port, "user="+harness.ScramUser+" sslmode=disable", harness.ScramPassword, whereAmI)
	if r.code != 0 || r.out != "127.0.0.1|false" {
		t.Fatalf("through the host list: exit %d out %q err %q\n%s", r.code, r.out, r.err, p.log())
	}
	log := p.log()
	for _, want := range []string{"host=" + wrongName.Addr, `is not valid for host name \"127.0.0.1\"`, "host=" + mitm.Addr, "unknown authority"} {
		if !strings.Contains(log, want) {
			t.Errorf("the proxy's log lacks %q:\n%s", want, log)
		}
	}
	// /readyz: the route is ready while one of its hosts verifies.
	adminPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	withAdmin := startCLI(t, nil, "--upstream", hosts, "--ca-file", rootFile, "--admin", fmt.Sprintf("127.0.0.1:%d", adminPort))
	ready := false
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && !ready; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", adminPort))
		if err == nil {
			ready = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}
	if !ready {
		t.Errorf("/readyz of a host list whose third host verifies is not 200 after 15 s\n%s", withAdmin.log())
	}

	// check reports each host on its own.
	out, code := runCLI(t, nil, "check", "--upstream", hosts, "--ca-file", rootFile)
	for _, want := range []string{
		"== upstream " + wrongName.Addr + " ==", "FAILED: upstream " + wrongName.Addr,
		"== upstream " + mitm.Addr + " ==", "FAILED: upstream " + mitm.Addr,
		fmt.Sprintf("OK: upstream 127.0.0.1:%d: verify-full passes", primary.Port),
	} {
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("check of the host list: exit %d, want 1 and %q in:\n%s", code, want, out)
		}
	}
	for _, s := range []*testpki.ScriptedServer{wrongName, mitm} {
		if n := len(s.Startups()); n != 0 {
			t.Errorf("host %s got %d startup messages, want none", s.Addr, n)
		}
	}
}
