package main

import (
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// checkEnv is a test PKI with the files the check tests pass by name.
type checkEnv struct {
	pki                          *testpki.PKI
	rootFile, otherFile          string
	clientCertFile, clientKeyPEM string
}

func newCheckEnv(t *testing.T) *checkEnv {
	t.Helper()
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e := &checkEnv{pki: pki, rootFile: filepath.Join(dir, "root.crt"), otherFile: filepath.Join(dir, "other.crt"),
		clientCertFile: filepath.Join(dir, "client.crt"), clientKeyPEM: filepath.Join(dir, "client.key")}
	for path, pem := range map[string][]byte{e.rootFile: pki.Root.CertPEM, e.otherFile: pki.OtherRoot.CertPEM, e.clientCertFile: pki.Client.CertPEM} {
		if err := testpki.WritePEMFile(path, pem); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(e.clientKeyPEM, pki.Client.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// serveRefusingTLS answers every SSLRequest with 'N' and returns the port.
func serveRefusingTLS(t *testing.T) int {
	t.Helper()
	addr := testpki.Serve(t, func(c net.Conn) {
		_, _ = io.ReadFull(c, make([]byte, 8))
		_, _ = c.Write([]byte("N"))
	})
	return testpki.PortOf(addr)
}

// TestCheck runs the check against scripted upstreams and asserts what the
// user reads, the exit status, that no startup message reaches the server
// and that no pin is ever written.
func TestCheck(t *testing.T) {
	e := newCheckEnv(t)
	p := e.pki
	cnOnly := mustIssue(t, p.Intermediate, testpki.LeafOptions{CommonName: "localhost"})
	good := p.Leaf.TLSCertificate(p.Intermediate)

	// {port} in args and wants is the upstream's port, {pins} the pin
	// directory, {pinfile} the pin file the route uses.
	tests := []struct {
		name   string
		server *testpki.ScriptedOptions // nil: see raw
		raw    func(t *testing.T) int   // a port without a scripted server
		pin    *testpki.Cert            // saved as the upstream's pin first
		args   []string
		code   int
		want   []string
		absent []string
	}{
		{name: "good upstream with ca_file", server: &testpki.ScriptedOptions{Cert: good},
			args: []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile},
			want: []string{"Upstream:         localhost:{port}", "Certificate name: localhost (the upstream host)",
				"Negotiation:      postgres: SSLRequest first", "Trust:            the roots in --ca-file " + e.rootFile,
				"Connect + TLS:    TLS 1.3, cipher TLS_", "Certificates presented by the server:", `[2] "CN=pgverifyproxy test intermediate CA`,
				`Anchor:           "CN=pgverifyproxy test root CA,O=pgverifyproxy tests" (SPKI SHA-256 ` + chain.SPKIHash(p.Root.Cert) + "), from --ca-file " + e.rootFile,
				`Host name:        the certificate carries "localhost" (its names: "localhost", 127.0.0.1, ::1, CN="localhost")`,
				"Expiry:           server certificate: 0 days left", "anchor: 1 days left",
				"WARNING: the server certificate \"CN=localhost,O=pgverifyproxy tests\" expires within the expiry warning (30 days)",
				"Client cert:      none configured", "OK: upstream localhost:{port}: verify-full passes (3 warnings above)"},
			absent: []string{"FAILED", "what to do"}},
		{name: "provider URI: only host and port are used, the password is not shown", server: &testpki.ScriptedOptions{Cert: good},
			args:   []string{"--upstream", "postgres://app:console-secret@localhost:{port}/db?sslmode=require", "--ca-file", e.rootFile},
			want:   []string{"== upstream localhost:{port} ==", "OK: upstream localhost:{port}: verify-full passes"},
			absent: []string{"console-secret", "app@"}},
		{name: "expiry warning below the certificates' lifetime", server: &testpki.ScriptedOptions{Cert: good},
			args:   []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile, "--expiry-warning", "1h"},
			want:   []string{"days left", "OK: upstream localhost:{port}: verify-full passes\n"},
			absent: []string{"WARNING"}},
		{name: "certificate for another name", server: &testpki.ScriptedOptions{Cert: p.WrongName.TLSCertificate(p.Intermediate)},
			args: []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile}, code: 1,
			want: []string{`[1] "CN=wrong.example.invalid`, `Host name:        MISMATCH: certificate is not valid for host name "localhost": it is valid for "wrong.example.invalid"`,
				`FAILED: upstream localhost:{port}: verifying the server certificate: certificate is not valid for host name "localhost"`,
				"what to do: connect with a name the certificate carries"}},
		{name: "server_name the certificate does not carry", server: &testpki.ScriptedOptions{Cert: good},
			args: []string{"--upstream", "localhost:{port}", "--server-name", "db.example.com", "--ca-file", e.rootFile}, code: 1,
			want: []string{"Certificate name: db.example.com (server_name)", `certificate is not valid for host name "db.example.com"`,
				"what to do: connect with a name the certificate carries"}},
		{name: "ca_file of another CA", server: &testpki.ScriptedOptions{Cert: good},
			args: []string{"--upstream", "localhost:{port}", "--ca-file", e.otherFile}, code: 1,
			want: []string{`Host name:        the certificate carries "localhost"`,
				`FAILED: upstream localhost:{port}: verifying the server certificate: certificate signed by unknown authority (leaf "CN=localhost,O=pgverifyproxy tests" issued by "CN=pgverifyproxy test intermediate CA,O=pgverifyproxy tests")`,
				"what to do: the server's chain does not lead to the roots in --ca-file " + e.otherFile}},
		{name: "expired server certificate", server: &testpki.ScriptedOptions{Cert: p.Expired.TLSCertificate(p.Intermediate)},
			args: []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile}, code: 1,
			want: []string{"(EXPIRED)", "FAILED: upstream localhost:{port}: verifying the server certificate: certificate \"CN=localhost,O=pgverifyproxy tests\" expired at",
				"what to do: the server's certificate (or a CA in its chain) has expired"}},
		{name: "matched by the common name only", server: &testpki.ScriptedOptions{Cert: cnOnly.TLSCertificate(p.Intermediate)},
			args: []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile, "--expiry-warning", "1h"},
			want: []string{`Host name:        the certificate carries "localhost" only as its common name (CN)`,
				"WARNING: the certificate has no subjectAltName of the host's type", "OK: upstream localhost:{port}: verify-full passes (1 warning above)"}},
		{name: "no pin yet, trust on first use, chain without its root", server: &testpki.ScriptedOptions{Cert: good},
			args: []string{"--upstream", "localhost:{port}", "--pin-dir", "{pins}", "--trust", "tofu"}, code: 1,
			want: []string{`the server's chain ends at the CA "CN=pgverifyproxy test intermediate CA,O=pgverifyproxy tests"`, "never an intermediate",
				`what to do: get the root CA certificate "CN=pgverifyproxy test root CA,O=pgverifyproxy tests" from the server's operator and pass it with --ca-file`}},
		{name: "no pin yet, trust on first use", server: &testpki.ScriptedOptions{Cert: p.Leaf.TLSCertificate(p.Intermediate, p.Root)},
			args: []string{"--upstream", "localhost:{port}", "--pin-dir", "{pins}", "--trust", "tofu"},
			want: []string{"Trust:            no pin yet: run would fetch the chain and pin it in {pinfile} on first start, under trust policy tofu (check writes nothing)",
				`First start:      run would pin "CN=pgverifyproxy test root CA,O=pgverifyproxy tests" (SPKI SHA-256 ` + chain.SPKIHash(p.Root.Cert) + ", policy tofu): trusted on first use",
				"WARNING: trust on first use: check this fingerprint with the provider", "the anchor run would pin on first start (policy tofu)",
				"OK: upstream localhost:{port}: verify-full passes against the anchor run would pin on first start"}},
		{name: "no pin yet, private CA under policy system", server: &testpki.ScriptedOptions{Cert: good},
			args: []string{"--upstream", "localhost:{port}", "--pin-dir", "{pins}"}, code: 1,
			want: []string{"no pin yet", "Certificates presented by the server:",
				`FAILED: upstream localhost:{port}: no pin yet, and run would refuse to pin on first start: the server's chain ends at "CN=pgverifyproxy test intermediate CA,O=pgverifyproxy tests"`,
				"which is not in the system trust store", "what to do: if the provider documents this CA", "--ca-file"}},
		{name: "existing pin", server: &testpki.ScriptedOptions{Cert: good}, pin: p.Root,
			args: []string{"--upstream", "localhost:{port}", "--pin-dir", "{pins}"},
			want: []string{"Trust:            the pin file {pinfile}", "policy system, first seen ", "anchor SPKI SHA-256 " + chain.SPKIHash(p.Root.Cert),
				`Anchor:           "CN=pgverifyproxy test root CA,O=pgverifyproxy tests" (SPKI SHA-256 ` + chain.SPKIHash(p.Root.Cert) + "), pinned in {pinfile} (policy system, first seen ",
				"OK: upstream localhost:{port}: verify-full passes"},
			absent: []string{"would pin"}},
		{name: "pin of another CA: identity changed", server: &testpki.ScriptedOptions{Cert: good}, pin: p.OtherRoot,
			args: []string{"--upstream", "localhost:{port}", "--pin-dir", "{pins}"}, code: 1,
			want: []string{"Trust:            the pin file {pinfile}", "THE UPSTREAM'S IDENTITY CHANGED",
				"what to do: if the provider has confirmed a change of CA, re-pin with: pgverifyproxy chain fetch --upstream localhost:{port} --pin-dir {pins} --repin"}},
		{name: "server requires a client certificate, none configured",
			server: &testpki.ScriptedOptions{Cert: good, ClientCAs: []*testpki.Cert{p.ClientCA}},
			args:   []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile}, code: 1,
			want: []string{"Client cert:      none configured", `FAILED: upstream localhost:{port}: after the TLS handshake: the server ended the TLS session with the alert "certificate required"`,
				"what to do: " + chain.ClientCertHint}},
		{name: "client certificate presented and accepted",
			server: &testpki.ScriptedOptions{Cert: good, ClientCAs: []*testpki.Cert{p.ClientCA}},
			args:   []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile, "--upstream-cert", e.clientCertFile, "--upstream-key", e.clientKeyPEM},
			want: []string{`Client cert:      presented "CN=cert_user,O=pgverifyproxy tests" (issuer "CN=pgverifyproxy test client CA,O=pgverifyproxy tests", 0 days left`,
				"the server did not reject it", "OK: upstream localhost:{port}: verify-full passes"}},
		{name: "direct TLS", server: &testpki.ScriptedOptions{Cert: good, Direct: true, ALPN: []string{"postgresql"}},
			args: []string{"--upstream", "localhost:{port}", "--ca-file", e.rootFile, "--negotiation", "direct"},
			want: []string{"Negotiation:      direct: TLS at once", ", ALPN postgresql, ", "OK: upstream localhost:{port}: verify-full passes"}},
		{name: "nothing listening", raw: closedPort,
			args: []string{"--upstream", "127.0.0.1:{port}", "--ca-file", e.rootFile, "--connect-timeout", "2s"}, code: 1,
			want: []string{"FAILED: upstream 127.0.0.1:{port}: connecting: dial tcp 127.0.0.1:{port}: connect: connection refused",
				"what to do: check the upstream host and port"}},
		{name: "server refuses TLS", raw: serveRefusingTLS,
			args: []string{"--upstream", "127.0.0.1:{port}", "--ca-file", e.rootFile}, code: 1,
			want: []string{"FAILED: upstream 127.0.0.1:{port}: requesting TLS: server refused TLS (answered 'N' to SSLRequest)",
				"what to do: pgverifyproxy only talks to the upstream over verified TLS: enable ssl on the server"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s *testpki.ScriptedServer
			var port int
			if tc.server != nil {
				var err error
				if s, err = testpki.StartScriptedServer(*tc.server); err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				port = s.Port
			} else {
				port = tc.raw(t)
			}
			pins := filepath.Join(t.TempDir(), "pins")
			if err := os.Mkdir(pins, 0o700); err != nil {
				t.Fatal(err)
			}
			store := &chain.PinStore{Dir: pins}
			if tc.pin != nil {
				now := time.Now()
				if _, err := store.Save(&chain.Pin{Host: "localhost", Port: port, Policy: "system",
					Anchors: []*x509.Certificate{tc.pin.Cert}, FirstSeen: now.Add(-72 * time.Hour), Updated: now}); err != nil {
					t.Fatal(err)
				}
			}
			before := pinFiles(t, pins)
			r := strings.NewReplacer("{port}", fmt.Sprint(port), "{pins}", pins, "{pinfile}", store.Path("localhost", port, ""))
			var args []string
			for _, a := range tc.args {
				args = append(args, r.Replace(a))
			}
			out, code := runCheckCmd(t, args...)
			if code != tc.code {
				t.Errorf("exit status %d, want %d", code, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, r.Replace(w)) {
					t.Errorf("output lacks %q", r.Replace(w))
				}
			}
			for _, w := range tc.absent {
				if strings.Contains(out, w) {
					t.Errorf("output has %q", w)
				}
			}
			if tc.code != 0 && !strings.Contains(out, "\nwhat to do: ") {
				t.Errorf("a failure without what to do")
			}
			if after := pinFiles(t, pins); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("check changed the pin directory: %v, was %v", after, before)
			}
			if s != nil {
				s.Close()
				if got := s.Startups(); len(got) != 0 {
					t.Errorf("the upstream received startup message(s) %v: check must send nothing but the SSLRequest and the handshake", got)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// TestCheckConfigRoutes checks every route of a config file, one route with
// --route, and a route whose settings cannot be used.
func TestCheckConfigRoutes(t *testing.T) {
	e := newCheckEnv(t)
	s, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: e.pki.Leaf.TLSCertificate(e.pki.Intermediate)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	twoRoutes := write("two.yaml", fmt.Sprintf(`pin_dir: %s
routes:
  - name: good
    listen: ["127.0.0.1:6001"]
    upstream: localhost:%[2]d
    ca_file: %[3]s
  - name: bad
    listen: ["127.0.0.1:6002"]
    upstream: localhost:%[2]d
    ca_file: %[4]s
`, filepath.Join(dir, "pins"), s.Port, e.rootFile, e.otherFile))

	out, code := runCheckCmd(t, "--config", twoRoutes)
	for _, w := range []string{"== route good ==", "OK: route good: verify-full passes", "== route bad ==",
		"FAILED: route bad: verifying the server certificate: certificate signed by unknown authority",
		"what to do: the server's chain does not lead to the roots in --ca-file " + e.otherFile,
		"Checked 2 routes: 1 passed, 1 failed.", "pgverifyproxy: error: check: route bad failed"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if strings.Index(out, "route good") > strings.Index(out, "route bad") {
		t.Errorf("routes not reported in the file's order")
	}
	if t.Failed() {
		t.Fatalf("output:\n%s", out)
	}

	out, code = runCheckCmd(t, "--config", twoRoutes, "--route", "good")
	if code != 0 || !strings.Contains(out, "OK: route good") || strings.Contains(out, "route bad") || strings.Contains(out, "Checked") {
		t.Fatalf("--route good: exit %d, output:\n%s", code, out)
	}

	// A route whose CA file is missing: reported with the others, exit 2.
	missing := write("missing.yaml", fmt.Sprintf(`routes:
  - name: good
    upstream: localhost:%d
    ca_file: %s
  - name: typo
    upstream: localhost:%[1]d
    ca_file: /nonexistent/root.crt
`, s.Port, e.rootFile))
	out, code = runCheckCmd(t, "--config", missing)
	if code != 2 || !strings.Contains(out, "OK: route good") || !strings.Contains(out, "FAILED: route typo: the route's settings: reading CA file") ||
		!strings.Contains(out, "what to do: fix this route's settings") {
		t.Fatalf("missing CA file in one route: exit %d, output:\n%s", code, out)
	}
	s.Close()
	if got := s.Startups(); len(got) != 0 {
		t.Errorf("the upstream received startup message(s) %v", got)
	}
}

// TestCheckUsageErrors are mistakes on the command line: exit 2, nothing
// dialled.
func TestCheckUsageErrors(t *testing.T) {
	e := newCheckEnv(t)
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("routes:\n  - name: main\n    upstream: localhost:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--ca-file", e.rootFile}, "no upstream: pass --upstream"},
		{[]string{"--upstream", "localhost:1", "--route", "main"}, "--route needs --config"},
		{[]string{"--config", cfg, "--route", "other"}, `no route named "other" in ` + cfg + " (routes: main)"},
		{[]string{"--config", cfg, "--upstream", "localhost:2"}, "upstream is set at the top level (--upstream) and the config file has routes"},
		{[]string{"--upstream", "localhost:1", "--trust", "always"}, "--trust must be system, tofu or live"},
		{[]string{"--upstream", "localhost:1", "--ca-file", "/nonexistent/root.crt"}, "reading CA file"},
		{[]string{"--upstream", "localhost:1", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"extra"}, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, code := runCheckCmd(t, tc.args...)
			if code != 2 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, output %q; want exit 2 with %q", code, out, tc.want)
			}
			if strings.Contains(out, "==") {
				t.Fatalf("a usage error still checked something:\n%s", out)
			}
		})
	}
}
