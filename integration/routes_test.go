//go:build linux

package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// socketDir returns a directory short enough for socket paths (sockaddr_un
// holds 107 bytes).
func socketDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "pgvps")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// clientCertFiles writes the cert_user client certificate and its key
// (0600) and returns their paths.
func clientCertFiles(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := testpki.WritePEMFile(certFile, pki.Client.CertPEM); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pki.Client.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// freePorts returns n free loopback ports.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for len(ports) < n {
		p, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		dup := false
		for _, q := range ports {
			dup = dup || q == p
		}
		if !dup {
			ports = append(ports, p)
		}
	}
	return ports
}

// TestRoutesFromConfigFile runs the binary with one config file of six
// routes: a real PG15 over TCP and a unix socket, the same server by IP with
// a server name and a client certificate, a PostgreSQL 17-style server with
// direct TLS and 256-byte cancel keys, PG15 asked for direct TLS, and an
// untrusted server. Each route behaves as configured, and the bad ones do
// not disturb the good ones.
func TestRoutesFromConfigFile(t *testing.T) {
	sock := socketDir(t)
	ports := freePorts(t, 6)
	certFile, keyFile := clientCertFiles(t)

	pg17, err := testpki.StartScriptedServer(testpki.ScriptedOptions{
		Cert: pki.Leaf.TLSCertificate(pki.Intermediate), Direct: true, ALPN: []string{"postgresql"}, KeyLength: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer pg17.Close()
	untrusted, err := testpki.StartFakeUpstream(testpki.AnswerTLS(pki.OtherLeaf.TLSCertificate(), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close()

	// A socket file left behind by a proxy that was killed.
	stale := filepath.Join(sock, fmt.Sprintf(".s.PGSQL.%d", ports[0]))
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	cfg := fmt.Sprintf(`pin_dir: %[1]s
ca_file: %[2]s
routes:
  - name: pg
    upstream: localhost:%[3]d
    listen: ["127.0.0.1:%[4]d", "unix:%[5]s:%[4]d"]
  - name: pg-by-ip
    upstream: 127.0.0.1:%[3]d
    server_name: localhost
    listen: ["127.0.0.1:%[6]d"]
    client_tls: require
    upstream_cert: %[7]s
    upstream_key: %[8]s
  - name: pg17
    upstream: localhost:%[9]d
    negotiation: direct
    listen: ["127.0.0.1:%[10]d"]
  - name: pg15-direct
    upstream: localhost:%[3]d
    negotiation: direct
    listen: ["127.0.0.1:%[11]d"]
  - name: untrusted
    upstream: localhost:%[12]d
    listen: ["127.0.0.1:%[13]d"]
  - name: pg-unix-only
    upstream: localhost:%[3]d
    listen: ["unix:%[5]s/.s.PGSQL.%[14]d"]
`, t.TempDir(), rootFile, cluster.Port, ports[0], sock, ports[1], certFile, keyFile,
		pg17.Port, ports[2], ports[3], untrusted.Port, ports[4], ports[5])
	file := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startCLIArgs(t, nil, "--config", file)
	waitForLog(t, p, "removed a stale socket file")

	t.Run("pg over TCP", func(t *testing.T) {
		r := runPsql(t, ports[0], "user="+harness.MD5User+" sslmode=require", harness.MD5Password, whoAmI)
		if r.code != 0 || r.out != harness.MD5User+"|true" {
			t.Fatalf("exit %d out %q err %q", r.code, r.out, r.err)
		}
	})
	t.Run("pg over the unix socket, psql -h DIR -p PORT", func(t *testing.T) {
		for _, u := range []struct{ user, password string }{{harness.ScramUser, harness.ScramPassword}, {harness.MD5User, harness.MD5Password}} {
			r := psqlDSN(t, fmt.Sprintf("host=%s port=%d dbname=postgres user=%s", sock, ports[0], u.user), u.password, whoAmI)
			if r.code != 0 || r.out != u.user+"|true" {
				t.Fatalf("%s: exit %d out %q err %q\n%s", u.user, r.code, r.out, r.err, p.log())
			}
		}
	})
	t.Run("unix-only route", func(t *testing.T) {
		r := psqlDSN(t, fmt.Sprintf("host=%s port=%d dbname=postgres user=%s", sock, ports[5], harness.MD5User), harness.MD5Password, whoAmI)
		if r.code != 0 || r.out != harness.MD5User+"|true" {
			t.Fatalf("exit %d out %q err %q", r.code, r.out, r.err)
		}
	})
	t.Run("client certificate: cert_user logs in with no password", func(t *testing.T) {
		r := runPsql(t, ports[1], "user="+testpki.CertUser+" sslmode=require", "", whoAmI)
		if r.code != 0 || r.out != testpki.CertUser+"|true" {
			t.Fatalf("exit %d out %q err %q\n%s", r.code, r.out, r.err, p.log())
		}
		// The route without a client certificate: the server's own refusal.
		r = runPsql(t, ports[0], "user="+testpki.CertUser+" sslmode=disable", "", whoAmI)
		if r.code == 0 || !strings.Contains(r.err, "connection requires a valid client certificate") {
			t.Fatalf("cert_user without a certificate: exit %d err %q", r.code, r.err)
		}
		// client_tls: require on this route.
		r = runPsql(t, ports[1], "user="+testpki.CertUser+" sslmode=disable", "", whoAmI)
		if r.code == 0 || !strings.Contains(r.err, "requires TLS") {
			t.Fatalf("plaintext on a client_tls=require route: exit %d err %q", r.code, r.err)
		}
	})
	t.Run("direct TLS to a PG17-style server, 256-byte cancel key", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=app sslmode=disable application_name=routes-test", ports[2]))
		if err != nil {
			t.Fatalf("connect: %v\n%s", err, p.log())
		}
		defer conn.Close(context.Background())
		res, err := conn.Exec(ctx, "select 'through direct TLS'").ReadAll()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "select 'through direct TLS'" {
			t.Fatalf("query: %v %+v", err, res)
		}
		if n := len(conn.SecretKey()); n != 256 {
			t.Fatalf("client got a %d-byte cancel key, want 256", n)
		}
		done := make(chan error, 1)
		go func() { _, err := conn.Exec(ctx, "wait").ReadAll(); done <- err }()
		// Cancel until the server has the query waiting (the first request
		// may arrive before it).
		var qerr error
		deadline := time.After(15 * time.Second)
	loop:
		for {
			if err := conn.CancelRequest(ctx); err != nil {
				t.Fatalf("cancel request: %v", err)
			}
			select {
			case qerr = <-done:
				break loop
			case <-time.After(200 * time.Millisecond):
			case <-deadline:
				t.Fatal("the waiting query was never cancelled")
			}
		}
		var pgErr *pgconn.PgError
		if !errors.As(qerr, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("waiting query ended with %v; want 57014", qerr)
		}
		matched := 0
		for _, c := range pg17.Cancels() {
			if c.Matched && c.TLS && len(c.SecretKey) == 256 && c.ProcessID == conn.PID() {
				matched++
			}
		}
		if matched != 1 {
			t.Fatalf("server cancels %+v; want one over TLS with the 256-byte key of pid %d", pg17.Cancels(), conn.PID())
		}
		for i, a := range pg17.NegotiatedALPN() {
			if a != "postgresql" {
				t.Fatalf("connection %d to the direct server negotiated ALPN %q", i, a)
			}
		}
		if st := pg17.Startups(); len(st) == 0 || st[len(st)-1]["application_name"] != "routes-test" {
			t.Fatalf("startup parameters at the server: %v", st)
		}
	})
	t.Run("direct TLS to PG15 fails with the reason", func(t *testing.T) {
		r := runPsql(t, ports[3], "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
		if r.code == 0 || !strings.Contains(r.err, "does not accept direct TLS (PostgreSQL 17 or later is needed)") {
			t.Fatalf("exit %d err %q", r.code, r.err)
		}
	})
	t.Run("untrusted route refuses; the others keep serving", func(t *testing.T) {
		r := runPsql(t, ports[4], "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
		if r.code == 0 || !strings.Contains(r.err, "certificate signed by unknown authority") {
			t.Fatalf("exit %d err %q", r.code, r.err)
		}
		if testpki.HasStartupMessage(untrusted.Received()) {
			t.Fatal("a startup message reached the untrusted upstream")
		}
		r = runPsql(t, ports[0], "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, whoAmI)
		if r.code != 0 || r.out != harness.MD5User+"|true" {
			t.Fatalf("pg route after the refusal: exit %d out %q err %q", r.code, r.out, r.err)
		}
	})
	waitForLog(t, p, "route=pg17")
	for _, want := range []string{`route=pg-by-ip`, `client_cert="CN=cert_user`, `negotiation=direct alpn=postgresql`} {
		waitForLog(t, p, want)
	}

	// SIGTERM removes the socket files.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
	for _, f := range []string{stale, filepath.Join(sock, fmt.Sprintf(".s.PGSQL.%d", ports[5]))} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("socket %s still there after shutdown: %v", f, err)
		}
	}
}

func TestCLIUpstreamClientCertFlags(t *testing.T) {
	certFile, keyFile := clientCertFiles(t)
	p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile,
		"--upstream-cert", certFile, "--upstream-key", keyFile)
	r := runPsql(t, p.port, "user="+testpki.CertUser+" sslmode=disable", "", whoAmI)
	if r.code != 0 || r.out != testpki.CertUser+"|true" {
		t.Fatalf("exit %d out %q err %q\n%s", r.code, r.out, r.err, p.log())
	}

	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, "--upstream", "localhost:1", "--ca-file", rootFile,
		"--upstream-cert", certFile, "--upstream-key", keyFile, "--listen", "127.0.0.1:0")
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "chmod 0600 "+keyFile) {
		t.Fatalf("a world-readable key: err %v output %q; want exit 2 and the chmod fix", err, out)
	}
}

// TestDirectTLSClientThroughProxyToPG15: a client using PostgreSQL 17's
// direct TLS (pgx sslnegotiation=direct) reaches PG15 through the proxy,
// which speaks SSLRequest upstream.
func TestDirectTLSClientThroughProxyToPG15(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s password=%s sslmode=require sslnegotiation=direct",
		p.port, harness.MD5User, harness.MD5Password))
	if err != nil {
		t.Fatalf("connect with sslnegotiation=direct: %v", err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, whoAmI).ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != harness.MD5User+"|true" {
		t.Fatalf("query: %v %+v", err, res)
	}
	if _, ok := conn.Conn().(interface{ ConnectionState() tls.ConnectionState }); !ok {
		t.Fatalf("the client leg is %T, not TLS", conn.Conn())
	}
}

// TestUpstreamRefusesMissingClientCertificate: under TLS 1.3 a server that
// requires a client certificate refuses only after the handshake, with an
// alert. The client gets a FATAL naming the alert and the fix, not an EOF.
func TestUpstreamRefusesMissingClientCertificate(t *testing.T) {
	s, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate), ClientCAs: []*testpki.Cert{pki.ClientCA}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := startProxy(t, proxyOpts{port: s.Port})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app sslmode=disable", p.port))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" ||
		!strings.Contains(pgErr.Message, `ended the TLS session during authentication with the alert "certificate required"`) ||
		!strings.Contains(pgErr.Hint, "set upstream_cert and upstream_key") {
		t.Fatalf("got %v (%+v); want 08006 naming the alert and the fix", err, pgErr)
	}
	if len(s.Startups()) != 0 {
		t.Fatalf("the server took a session without a certificate: %v", s.Startups())
	}
}
