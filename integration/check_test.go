//go:build linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// assertOutput fails the test for each wanted text the output lacks.
func assertOutput(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// TestCheckGoodUpstream runs `check` against the real PostgreSQL server
// with its root CA: exit 0 and a report a user can read.
func TestCheckGoodUpstream(t *testing.T) {
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	out, code := runCLI(t, nil, "check", "--upstream", upstream, "--ca-file", rootFile)
	if code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	assertOutput(t, out,
		"== upstream "+upstream+" ==",
		"Certificate name: localhost (the upstream host)",
		"Negotiation:      postgres: SSLRequest first",
		"Trust:            the roots in --ca-file "+rootFile,
		"Certificates presented by the server:",
		`[1] "CN=localhost,O=pgverifyproxy tests"`,
		`Anchor:           "CN=pgverifyproxy test root CA,O=pgverifyproxy tests" (SPKI SHA-256 `+chain.SPKIHash(pki.Root.Cert)+"), from --ca-file "+rootFile,
		`Host name:        the certificate carries "localhost"`,
		"Expiry:           server certificate: 0 days left (until ",
		"anchor: 1 days left (until ",
		// The test certificates live 24 and 48 hours: under the default
		// 30 days the check warns.
		`WARNING: the server certificate "CN=localhost,O=pgverifyproxy tests" expires within the expiry warning (30 days)`,
		"Client cert:      none configured",
		"OK: upstream "+upstream+": verify-full passes")
	if !regexp.MustCompile(`Connect \+ TLS:    TLS 1\.[23], cipher TLS_[A-Z0-9_]+, \d+ms \(TCP connect, SSLRequest, TLS handshake and verification\)`).MatchString(out) {
		t.Errorf("no TLS version, cipher suite and handshake time in:\n%s", out)
	}
	if strings.Contains(out, "FAILED") || strings.Contains(out, "what to do") {
		t.Errorf("a failure reported for a good upstream:\n%s", out)
	}

	// With the client certificate the server's ssl_ca_file accepts.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := testpki.WritePEMFile(certFile, pki.Client.CertPEM); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pki.Client.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = runCLI(t, nil, "check", "--upstream", upstream, "--ca-file", rootFile, "--upstream-cert", certFile,
		"--upstream-key", keyFile, "--expiry-warning", "1h")
	if code != 0 {
		t.Errorf("with a client certificate: exit status %d, want 0", code)
	}
	assertOutput(t, out, `Client cert:      presented "CN=`+testpki.CertUser, "the server did not reject it",
		"OK: upstream "+upstream+": verify-full passes\n")
}

// TestCheckBadUpstream: what a user sees when verify-full fails, and exit
// status 1.
func TestCheckBadUpstream(t *testing.T) {
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	otherCA := filepath.Join(t.TempDir(), "other.crt")
	if err := testpki.WritePEMFile(otherCA, pki.OtherRoot.CertPEM); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "ca_file of another CA", args: []string{"--upstream", upstream, "--ca-file", otherCA},
			want: []string{
				`Host name:        the certificate carries "localhost"`,
				"FAILED: upstream " + upstream + `: verifying the server certificate: certificate signed by unknown authority (leaf "CN=localhost,O=pgverifyproxy tests" issued by "CN=pgverifyproxy test intermediate CA,O=pgverifyproxy tests")`,
				"what to do: the server's chain does not lead to the roots in --ca-file " + otherCA,
			}},
		{name: "server_name the certificate does not carry", args: []string{"--upstream", upstream, "--ca-file", rootFile, "--server-name", "db.example.com"},
			want: []string{
				"Certificate name: db.example.com (server_name)",
				`Host name:        MISMATCH: certificate is not valid for host name "db.example.com": it is valid for "localhost", 127.0.0.1, ::1, CN="localhost"`,
				"FAILED: upstream " + upstream + `: verifying the server certificate: certificate is not valid for host name "db.example.com"`,
				"what to do: connect with a name the certificate carries",
			}},
		{name: "nothing listening", args: []string{"--upstream", fmt.Sprintf("127.0.0.1:%d", closedPort(t)), "--ca-file", rootFile},
			want: []string{": connecting: dial tcp", "connection refused", "what to do: check the upstream host and port"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCLI(t, nil, append([]string{"check"}, tc.args...)...)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			assertOutput(t, out, append(tc.want, "pgverifyproxy: error: check: upstream ")...)
			if strings.Contains(out, "OK:") {
				t.Errorf("OK reported for a failing upstream:\n%s", out)
			}
		})
	}
}

// closedPort returns a free loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// TestCheckConfigTwoRoutes checks every route of a config file: one good,
// one bad, both reported, exit 1.
func TestCheckConfigTwoRoutes(t *testing.T) {
	dir := t.TempDir()
	otherCA := filepath.Join(dir, "other.crt")
	if err := testpki.WritePEMFile(otherCA, pki.OtherRoot.CertPEM); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "pgverifyproxy.yaml")
	yaml := fmt.Sprintf(`routes:
  - name: main
    listen: ["127.0.0.1:0"]
    upstream: localhost:%[1]d
    ca_file: %[2]s
  - name: reporting
    listen: ["127.0.0.1:0"]
    upstream: localhost:%[1]d
    server_name: reporting.example.com
    ca_file: %[3]s
`, cluster.Port, rootFile, otherCA)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runCLI(t, nil, "check", "--config", cfg)
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	assertOutput(t, out,
		"== route main ==", "OK: route main: verify-full passes",
		"== route reporting ==", "Certificate name: reporting.example.com (server_name)",
		"FAILED: route reporting: verifying the server certificate: certificate signed by unknown authority",
		"what to do: the server's chain does not lead to the roots in --ca-file "+otherCA,
		"Checked 2 routes: 1 passed, 1 failed.",
		"pgverifyproxy: error: check: route reporting failed")
	if strings.Index(out, "== route main ==") > strings.Index(out, "== route reporting ==") {
		t.Errorf("routes not reported in the file's order:\n%s", out)
	}

	out, code = runCLI(t, nil, "check", "--config", cfg, "--route", "main")
	if code != 0 || strings.Contains(out, "reporting") {
		t.Errorf("--route main: exit %d, output:\n%s", code, out)
	}
	out, code = runCLI(t, nil, "check", "--config", cfg, "--route", "nope")
	if code != 2 || !strings.Contains(out, `no route named "nope"`) {
		t.Errorf("--route nope: exit %d (want 2), output:\n%s", code, out)
	}
}

// TestCheckNoPinYet: a pinned route without its pin is reported with what
// run would pin, and nothing is written; once pinned, check names the pin.
func TestCheckNoPinYet(t *testing.T) {
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	sysTrust := "SSL_CERT_FILE=" + rootFile // the test root is "public"
	pinDir := filepath.Join(t.TempDir(), "pins")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	pinFile := (&chain.PinStore{Dir: pinDir}).Path("localhost", cluster.Port, "")
	out, code := runCLI(t, []string{sysTrust}, "check", "--upstream", upstream, "--pin-dir", pinDir)
	if code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	assertOutput(t, out,
		"Trust:            no pin yet: run would fetch the chain and pin it in "+pinFile+" on first start, under trust policy system (check writes nothing)",
		`First start:      run would pin "CN=pgverifyproxy test root CA,O=pgverifyproxy tests" (SPKI SHA-256 `+chain.SPKIHash(pki.Root.Cert)+", policy system): the chain leads to",
		"OK: upstream "+upstream+": verify-full passes against the anchor run would pin on first start")
	if entries, err := os.ReadDir(pinDir); err != nil || len(entries) != 0 {
		t.Fatalf("check wrote into the pin directory: %v %v", entries, err)
	}

	// Without the test root in the system store, run would refuse.
	out, code = runCLI(t, nil, "check", "--upstream", upstream, "--pin-dir", pinDir)
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	assertOutput(t, out, "no pin yet, and run would refuse to pin on first start", "which is not in the system trust store",
		"what to do: if the provider documents this CA")

	if out, code := runCLI(t, []string{sysTrust}, "chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir); code != 0 {
		t.Fatalf("chain fetch: exit %d\n%s", code, out)
	}
	out, code = runCLI(t, []string{sysTrust}, "check", "--upstream", upstream, "--pin-dir", pinDir, "--expiry-warning", "1h")
	if code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	assertOutput(t, out, "Trust:            the pin file "+pinFile, "policy system, first seen ",
		"pinned in "+pinFile, "OK: upstream "+upstream+": verify-full passes\n")
	if entries, err := os.ReadDir(pinDir); err != nil || len(entries) != 1 {
		t.Fatalf("pin directory after chain fetch and check: %v %v", entries, err)
	}
}
