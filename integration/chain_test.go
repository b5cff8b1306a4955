//go:build linux

package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// aiaServer serves certificates (DER) on a loopback HTTP server, like a CA's
// caIssuers endpoint.
type aiaServer struct {
	base  string
	files map[string][]byte
	srv   *http.Server
	hits  atomic.Int32 // requests received
}

func startAIAServer(t *testing.T) *aiaServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &aiaServer{base: "http://" + l.Addr().String(), files: map[string][]byte{}}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		b, ok := a.files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-cert")
		w.Write(b)
	})}
	go a.srv.Serve(l)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

// url registers a certificate and returns its caIssuers URL.
func (a *aiaServer) url(name string) string { return a.base + "/" + name + ".der" }
func (a *aiaServer) serve(name string, c *testpki.Cert) {
	a.files["/"+name+".der"] = c.Cert.Raw
}

// runCLI runs the binary to completion.
func runCLI(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %v: %v", args, err)
	}
	return string(out), 0
}

func mustLeaf(t *testing.T, parent *testpki.Cert, aia ...string) *testpki.Cert {
	t.Helper()
	c, err := testpki.IssueLeaf(parent, testpki.LeafOptions{CommonName: "localhost", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, AIA: aia})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustCA(t *testing.T, parent *testpki.Cert, cn string, aia ...string) *testpki.Cert {
	t.Helper()
	var c *testpki.Cert
	var err error
	if parent == nil {
		c, err = testpki.NewRootCA(cn)
	} else {
		c, err = testpki.NewIntermediateCAWithAIA(parent, cn, aia)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serveCert reconfigures the shared cluster; the original certificate is
// restored when the test ends.
func serveCert(t *testing.T, chainPEM, keyPEM []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.SetServerCert(ctx, chainPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
}

func restoreClusterCert(t *testing.T) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cluster.SetServerCert(ctx, pki.Leaf.ChainPEM(pki.Intermediate), pki.Leaf.KeyPEM); err != nil {
			t.Errorf("restoring the cluster certificate: %v", err)
		}
	})
}

func writeBundle(t *testing.T, name string, certs ...*testpki.Cert) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	var blocks [][]byte
	for _, c := range certs {
		blocks = append(blocks, c.CertPEM)
	}
	if err := testpki.WritePEMFile(path, blocks...); err != nil {
		t.Fatal(err)
	}
	return path
}

// psqlDirect connects psql straight to the cluster with verify-full.
func psqlDirect(t *testing.T, rootcert string) psqlResult {
	t.Helper()
	dsn := fmt.Sprintf("host=localhost port=%d dbname=postgres user=%s sslmode=verify-full sslrootcert=%s", cluster.Port, harness.MD5User, rootcert)
	return psqlDSN(t, dsn, harness.MD5Password, "select 'verified'")
}

// TestChainFetchPinAndRotation is the manual procedure as one command, then
// the proxy living through leaf, intermediate and root changes.
func TestChainFetchPinAndRotation(t *testing.T) {
	restoreClusterCert(t)
	aia := startAIAServer(t)
	rootA := mustCA(t, nil, "rotation root A")
	interA1 := mustCA(t, rootA, "rotation intermediate A1", aia.url("rootA"))
	aia.serve("rootA", rootA)
	aia.serve("interA1", interA1)
	leaf1 := mustLeaf(t, interA1, aia.url("interA1"))
	// The server sends only its leaf: the intermediate is reachable only
	// through AIA on the loopback HTTP server.
	serveCert(t, leaf1.CertPEM, leaf1.KeyPEM)

	rootB := mustCA(t, nil, "rotation root B")
	// "System trust" for these processes: both roots are public CAs.
	sysTrust := "SSL_CERT_FILE=" + writeBundle(t, "system.pem", rootA, rootB)
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)

	// 0. The AIA server is on this machine: a URL from a certificate not
	// verified yet is not fetched from a loopback address (it could be the
	// proxy's own admin port, or a metadata service) without the opt-in.
	pinDir := t.TempDir()
	out, code := runCLI(t, []string{sysTrust}, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir)
	if code == 0 || !strings.Contains(out, "refusing to fetch from 127.0.0.1") || !strings.Contains(out, "aia_allow_private") {
		t.Fatalf("chain fetch without --aia-allow-private: exit %d\n%s", code, out)
	}
	if n := aia.hits.Load(); n != 0 {
		t.Fatalf("%d requests reached the loopback AIA server without the opt-in", n)
	}
	// From here on, this test's CA has its AIA server on the internal
	// network, as a corporate PKI may.
	env := []string{sysTrust, "PGVERIFYPROXY_AIA_ALLOW_PRIVATE=true"}

	// 1. chain fetch --out: the manual procedure's root.crt.
	rootCrt := filepath.Join(t.TempDir(), "root.crt")
	out, code = runCLI(t, env, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir, "--out", rootCrt)
	if code != 0 {
		t.Fatalf("chain fetch: exit %d\n%s", code, out)
	}
	for _, want := range []string{"presented by the server", "fetched through AIA", "rotation intermediate A1", `Pinned: "CN=rotation root A`, chain.SPKIHash(rootA.Cert)} {
		if !strings.Contains(out, want) {
			t.Errorf("chain fetch output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("chain fetch output:\n%s", out)
	if r := psqlDirect(t, rootCrt); r.code != 0 || r.out != "verified" {
		t.Fatalf("psql verify-full with the fetched root.crt: exit %d %q %q", r.code, r.out, r.err)
	}
	pinFile := (&chain.PinStore{Dir: pinDir}).Path("localhost", cluster.Port, "")
	st, err := os.Stat(pinFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("pin file mode %v, want 0600", st.Mode().Perm())
	}
	if r := psqlDirect(t, pinFile); r.code != 0 || r.out != "verified" {
		t.Fatalf("psql verify-full with the pin file as sslrootcert: exit %d %q %q", r.code, r.out, r.err)
	}
	// chain show, on the live upstream and on the pin file.
	out, code = runCLI(t, env, "chain", "show", "--upstream", upstream, "--pin-dir", pinDir)
	if code != 0 || !strings.Contains(out, `"CN=rotation root A,O=pgverifyproxy tests"   <== pinned anchor`) || !strings.Contains(out, "days left") ||
		!strings.Contains(out, "SPKI SHA-256: "+chain.SPKIHash(leaf1.Cert)) {
		t.Fatalf("chain show --upstream: exit %d\n%s", code, out)
	}
	out, code = runCLI(t, nil, "chain", "show", pinFile)
	if code != 0 || !strings.Contains(out, "policy system") || !strings.Contains(out, "intermediates kept as path hints") {
		t.Fatalf("chain show FILE: exit %d\n%s", code, out)
	}
	// A second fetch checks against the pin and leaves it alone.
	out, code = runCLI(t, env, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir)
	if code != 0 || !strings.Contains(out, "still matches its pin") {
		t.Fatalf("second fetch: exit %d\n%s", code, out)
	}

	// 2. The proxy with only --pin-dir (a fresh one): it pins on first start.
	proxyPins := t.TempDir()
	p := startCLI(t, env, "--upstream", upstream, "--pin-dir", proxyPins)
	query := func(what string) psqlResult {
		t.Helper()
		return runPsql(t, p.port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select '"+what+"'")
	}
	if r := query("first"); r.code != 0 || r.out != "first" {
		t.Fatalf("psql through the pinned proxy: exit %d %q %q\n%s", r.code, r.out, r.err, p.log())
	}
	// Logged before the pin is used; the test reads the log through a pipe.
	waitForLog(t, p, "upstream pinned")
	// A session that stays open through the rotations below.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	long, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", p.port, harness.MD5User, harness.MD5Password))
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close(ctx)

	// 3. Leaf renewal under the same intermediate.
	leaf2 := mustLeaf(t, interA1, aia.url("interA1"))
	serveCert(t, leaf2.CertPEM, leaf2.KeyPEM)
	if r := query("new leaf"); r.code != 0 || r.out != "new leaf" {
		t.Fatalf("after leaf renewal: exit %d %q %q\n%s", r.code, r.out, r.err, p.log())
	}

	// 4. A new intermediate under the same root, server still leaf-only.
	interA2 := mustCA(t, rootA, "rotation intermediate A2", aia.url("rootA"))
	aia.serve("interA2", interA2)
	leaf3 := mustLeaf(t, interA2, aia.url("interA2"))
	serveCert(t, leaf3.CertPEM, leaf3.KeyPEM)
	if r := query("new intermediate"); r.code != 0 || r.out != "new intermediate" {
		t.Fatalf("after a new intermediate: exit %d %q %q\n%s", r.code, r.out, r.err, p.log())
	}

	// 5. A new root (trusted by the system store, but not the pin).
	interB := mustCA(t, rootB, "rotation intermediate B")
	leafB := mustLeaf(t, interB)
	serveCert(t, leafB.ChainPEM(interB), leafB.KeyPEM)
	r := query("new root")
	if r.code == 0 || !strings.Contains(r.err, "IDENTITY CHANGED") || !strings.Contains(r.err, chain.SPKIHash(rootA.Cert)) ||
		!strings.Contains(r.err, "rotation root B") || !strings.Contains(r.err, "--repin") {
		t.Fatalf("after a new root: exit %d out %q err %q; want the identity-changed refusal", r.code, r.out, r.err)
	}
	// The proxy writes the client's error before its own log line.
	waitForLog(t, p, "IDENTITY CHANGED")
	var n int
	if err := long.QueryRow(ctx, "select 42").Scan(&n); err != nil || n != 42 {
		t.Fatalf("the session opened before the rotations was harmed: %v", err)
	}
	// chain fetch (without --repin) also refuses, and keeps the pin.
	out, code = runCLI(t, env, "chain", "fetch", "--upstream", upstream, "--pin-dir", proxyPins)
	if code == 0 || !strings.Contains(out, "IDENTITY CHANGED") {
		t.Fatalf("fetch after a new root: exit %d\n%s", code, out)
	}

	// 6. --repin fixes it; the running proxy picks the new pin up.
	out, code = runCLI(t, env, "chain", "fetch", "--upstream", upstream, "--pin-dir", proxyPins, "--repin")
	if code != 0 || !strings.Contains(out, "Re-pinned") || !strings.Contains(out, chain.SPKIHash(rootB.Cert)) {
		t.Fatalf("repin: exit %d\n%s", code, out)
	}
	if r := query("repinned"); r.code != 0 || r.out != "repinned" {
		t.Fatalf("after repin: exit %d %q %q\n%s", r.code, r.out, r.err, p.log())
	}
}

func TestChainFetchSelfSignedUpstream(t *testing.T) {
	restoreClusterCert(t)
	serveCert(t, pki.SelfSigned.CertPEM, pki.SelfSigned.KeyPEM)
	sysTrust := "SSL_CERT_FILE=" + rootFile // the test root is "public"
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)

	out, code := runCLI(t, []string{sysTrust}, "chain", "fetch", "--upstream", upstream, "--pin-dir", t.TempDir())
	if code == 0 || !strings.Contains(out, "self-signed certificate") || !strings.Contains(out, "--wait") || !strings.Contains(out, "--trust tofu") {
		t.Fatalf("self-signed fetch: exit %d\n%s", code, out)
	}

	out, code = runCLI(t, []string{sysTrust}, "chain", "fetch", "--upstream", upstream, "--pin-dir", t.TempDir(), "--trust", "tofu")
	if code != 0 || !strings.Contains(out, "check this fingerprint with the provider: "+chain.SPKIHash(pki.SelfSigned.Cert)) {
		t.Fatalf("tofu fetch: exit %d\n%s", code, out)
	}

	// --wait: the provider swaps in a CA-signed certificate while we wait.
	pinDir := t.TempDir()
	cmd := exec.Command(binPath, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir, "--wait", "60s", "--retry-interval", "500ms")
	cmd.Env = append(cleanEnv(), sysTrust)
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(buf.String(), "Attempt 1: not trusted yet") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no progress output while waiting:\n%s", buf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	serveCert(t, pki.Leaf.ChainPEM(pki.Intermediate), pki.Leaf.KeyPEM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("fetch --wait: %v\n%s", err, buf.String())
	}
	if !strings.Contains(buf.String(), "Pinned: "+chain.Quote(pki.Root.Cert.Subject.String())) {
		t.Fatalf("fetch --wait did not pin the CA-signed chain:\n%s", buf.String())
	}
}

func TestDamagedPinIsAnErrorNotARefetch(t *testing.T) {
	pinDir := t.TempDir()
	store := &chain.PinStore{Dir: pinDir}
	path := store.Path("localhost", cluster.Port, "")
	damaged := []byte("# pgverifyproxy-meta: {\"version\":1,\n-----BEGIN CERTIFICATE-----\nAAAA\n")
	if err := os.WriteFile(path, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	env := []string{"SSL_CERT_FILE=" + rootFile}
	out, code := runCLI(t, env, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir)
	if code == 0 || !strings.Contains(out, "is damaged") || !strings.Contains(out, path) {
		t.Fatalf("fetch with a damaged pin: exit %d\n%s", code, out)
	}
	p := startCLI(t, env, "--upstream", upstream, "--pin-dir", pinDir)
	r := runPsql(t, p.port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
	if r.code == 0 || !strings.Contains(r.err, "is damaged") {
		t.Fatalf("proxy with a damaged pin: exit %d %q %q", r.code, r.out, r.err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(damaged) {
		t.Fatal("the damaged pin file was changed")
	}
}
