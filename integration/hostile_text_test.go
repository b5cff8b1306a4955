//go:build linux

package integration

import (
	"crypto/tls"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// Certificate text an unverified upstream chooses: newlines that start fake
// report lines (a fake fingerprint, a fake verdict), ESC[8m that hides
// what follows, an OSC that sets the terminal's title, a carriage return,
// DEL and a bidi override. A DNS SAN must be ASCII, so U+202E is in the
// subject only.
const (
	hostileCN = "db\n  SPKI SHA-256: FAKE\nOK: verified\x1b[8m"
	hostileOU = "\r\u202e\x7fFAILED: nothing\x1b[2J"
)

var hostileDNS = []string{"\x1b]0;title\x07", "x\nOK: verified\x1b[8m", "\r\x1b[2Kerased"}

// hostileLineStarts are the fake lines: none may start a line of anything
// a user or a program reads (leading blanks ignored).
var hostileLineStarts = []string{"SPKI SHA-256: FAKE", "OK: verified", "FAILED: nothing", "erased"}

// assertNoHostileEffect fails the test when text holds a raw control byte
// (other than newline and tab), DEL, a bidi override, or a line that starts
// like one of the fake lines. It reports whether text passed.
func assertNoHostileEffect(t *testing.T, what, text string) bool {
	t.Helper()
	ok := true
	errorf := func(format string, a ...any) {
		t.Helper()
		ok = false
		t.Errorf(format, a...)
	}
	bad := 0
	for i := 0; i < len(text); i++ {
		if b := text[i]; (b < 0x20 && b != '\n' && b != '\t') || b == 0x7f {
			if bad++; bad <= 5 {
				errorf("%s: raw control byte %#02x at offset %d: %q", what, b, i, text[max(0, i-30):min(len(text), i+30)])
			}
		}
	}
	if bad > 5 {
		errorf("%s: %d raw control bytes in all", what, bad)
	}
	if i := strings.IndexAny(text, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"); i >= 0 {
		errorf("%s: a raw bidi control at offset %d: %q", what, i, text[max(0, i-30):min(len(text), i+30)])
	}
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimLeft(line, " \t")
		for _, fake := range hostileLineStarts {
			if strings.HasPrefix(trimmed, fake) {
				errorf("%s: a line made by the certificate's text: %q", what, line)
			}
		}
	}
	return ok
}

// hostileCert issues a certificate with the hostile subject and SANs (plus
// names, when the certificate must carry localhost) from parent, or
// self-signed when parent is nil.
func hostileCert(t *testing.T, parent *testpki.Cert, names bool) *testpki.Cert {
	t.Helper()
	o := testpki.LeafOptions{DNSNames: hostileDNS}
	if names {
		o.DNSNames = append([]string{"localhost"}, hostileDNS...)
		o.IPs = []net.IP{net.ParseIP("127.0.0.1")}
	}
	c, err := testpki.IssueLeafWithSubject(parent, pkix.Name{CommonName: hostileCN, OrganizationalUnit: []string{hostileOU}, Organization: []string{"pgverifyproxy tests"}}, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestHostileCertificateText serves certificates whose text is hostile from
// an upstream nobody verified, and runs the real binary against it: check,
// chain fetch (refused, then --trust tofu), chain show (upstream and pin
// file), the fetch that finds the pin changed, and run with psql
// connecting. Nothing it prints, logs, writes in the pin file or sends to
// the client may drive a terminal or start a line of the certificate's
// making; the real fingerprint stays readable.
func TestHostileCertificateText(t *testing.T) {
	self := hostileCert(t, nil, true)
	self2 := hostileCert(t, nil, true)                  // a second identity, for the change
	mismatch := hostileCert(t, pki.Intermediate, false) // from the trusted CA, for none of the names
	hostileRoot := mustCA(t, nil, "root\n  SPKI SHA-256: FAKE\x1b[8m")
	hostileInter := mustCA(t, hostileRoot, "inter\r\u202eOK: verified\x07")
	unknown := hostileCert(t, hostileInter, true) // a chain to a root nobody trusts

	var serving atomic.Pointer[tls.Certificate]
	use := func(c tls.Certificate) { serving.Store(&c) }
	use(self.TLSCertificate())
	fake, err := testpki.StartFakeUpstream(func(c net.Conn, f *testpki.FakeUpstream) net.Conn {
		return testpki.AnswerTLS(*serving.Load(), nil)(c, f)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	upstream := fmt.Sprintf("localhost:%d", fake.Port)
	env := []string{"SSL_CERT_FILE=" + rootFile} // the "system" store: the test root only
	pinDir := filepath.Join(t.TempDir(), "pins")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	pinFile := (&chain.PinStore{Dir: pinDir}).Path("localhost", fake.Port, "")
	selfHash := chain.SPKIHash(self.Cert)
	// The CN as every quoting command shows it.
	quotedCN := strings.Trim(chain.Quote(hostileCN), `"`)

	cli := func(name string, code int, want []string, args ...string) string {
		t.Helper()
		out, got := runCLI(t, env, args...)
		ok := assertNoHostileEffect(t, name, out)
		if got != code {
			ok = false
			t.Errorf("%s: exit status %d, want %d", name, got, code)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				ok = false
				t.Errorf("%s: output lacks %q", name, w)
			}
		}
		if !ok {
			t.Logf("%s output:\n%s", name, out)
		}
		return out
	}

	cli("check, no pin, policy system", 1, []string{quotedCN, "SPKI SHA-256: " + selfHash, "FAILED: upstream " + upstream + ": "},
		"check", "--upstream", upstream, "--pin-dir", pinDir)
	cli("check, no pin, trust on first use", 0, []string{quotedCN, "check this fingerprint with the provider before the proxy pins it: " + selfHash,
		"OK: upstream " + upstream + ": verify-full passes"},
		"check", "--upstream", upstream, "--pin-dir", pinDir, "--trust", "tofu")
	cli("chain fetch, self-signed refused", 1, []string{quotedCN, "pgverifyproxy: error: not pinned: the server presents a self-signed certificate"},
		"chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir)
	rootCrt := filepath.Join(t.TempDir(), "root.crt")
	cli("chain fetch --trust tofu", 0, []string{quotedCN, "Trust on first use: check this fingerprint with the provider: " + selfHash, "pin file: " + pinFile},
		"chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir, "--trust", "tofu", "--out", rootCrt)

	// The pin file: one comment line per anchor, whatever its subject.
	pin, err := os.ReadFile(pinFile)
	if err != nil {
		t.Fatalf("no pin written: %v", err)
	}
	ok := assertNoHostileEffect(t, "the pin file", string(pin))
	for _, line := range strings.Split(string(pin), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "-----") && strings.ContainsAny(line, " :") {
			ok = false
			t.Errorf("the pin file has a line that is neither a comment nor PEM: %q", line)
		}
	}
	if !strings.Contains(string(pin), selfHash) {
		ok = false
		t.Errorf("the pin file does not name the anchor's fingerprint %s", selfHash)
	}
	if !ok {
		t.Logf("pin file:\n%s", pin)
	}

	cli("chain show --upstream", 0, []string{quotedCN, "<== pinned anchor", "SPKI SHA-256: " + selfHash, "verify-full passes"},
		"chain", "show", "--upstream", upstream, "--pin-dir", pinDir)
	cli("chain show PINFILE", 0, []string{quotedCN, "<== pinned anchor", "SPKI SHA-256: " + selfHash},
		"chain", "show", pinFile)
	cli("chain show --out file", 0, []string{quotedCN, "SPKI SHA-256: " + selfHash}, "chain", "show", rootCrt)
	cli("chain fetch, pin unchanged", 0, []string{"still matches its pin"},
		"chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir)

	// The upstream now presents another hostile identity. The refusal
	// names the pinned anchor and the new one, quoted once (readable, not
	// escaped twice).
	use(self2.TLSCertificate())
	changed := "the pinned anchor " + chain.Quote(self.Cert.Subject.String()) + " (SPKI SHA-256 " + selfHash + ")"
	cli("chain fetch, identity changed", 1, []string{"IDENTITY CHANGED", changed, "the pin in " + pinFile + " was kept"},
		"chain", "fetch", "--upstream", upstream, "--pin-dir", pinDir)
	cli("check, identity changed", 1, []string{"IDENTITY CHANGED", changed, "FAILED: upstream " + upstream + ": "},
		"check", "--upstream", upstream, "--pin-dir", pinDir)

	// run, with psql connecting: the refusal the client reads and the log.
	for _, tc := range []struct {
		name  string
		cert  tls.Certificate
		args  []string
		cause string // in the client's error
		// quoted is certificate text the client's error shows, quoted once.
		quoted string
	}{
		{name: "identity changed", cert: self2.TLSCertificate(), args: []string{"--pin-dir", pinDir}, cause: "IDENTITY CHANGED", quoted: changed},
		{name: "host name mismatch", cert: mismatch.TLSCertificate(pki.Intermediate), args: []string{"--ca-file", rootFile}, cause: "not valid for host name",
			quoted: "it is valid for " + chain.QuoteAll(hostileDNS)},
		{name: "unknown authority", cert: unknown.TLSCertificate(hostileInter), args: []string{"--ca-file", rootFile}, cause: "unknown authority",
			quoted: "(leaf " + chain.Quote(unknown.Cert.Subject.String()) + " issued by " + chain.Quote(hostileInter.Cert.Subject.String()) + ")"},
	} {
		t.Run("run/"+tc.name, func(t *testing.T) {
			use(tc.cert)
			p := startCLI(t, env, append([]string{"--upstream", upstream}, tc.args...)...)
			r := runPsql(t, p.port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
			if r.code == 0 || !strings.Contains(r.err, tc.cause) {
				t.Errorf("psql: exit %d, error %q; want a refusal with %q", r.code, r.err, tc.cause)
			}
			if !strings.Contains(r.err, tc.quoted) {
				t.Errorf("the client's error lacks %q", tc.quoted)
			}
			assertNoHostileEffect(t, "the client's error", r.err)
			// The refusal is logged after the client has its error.
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(p.log(), tc.cause) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if !strings.Contains(p.log(), tc.cause) {
				t.Errorf("the proxy's log never showed %q", tc.cause)
			}
			assertNoHostileEffect(t, "the proxy's log", p.log())
			if t.Failed() {
				t.Logf("psql error:\n%s\nproxy log:\n%s", r.err, p.log())
			}
		})
	}

	use(mismatch.TLSCertificate(pki.Intermediate))
	cli("check, host name mismatch", 1, []string{"MISMATCH", "FAILED: upstream " + upstream + ": "},
		"check", "--upstream", upstream, "--ca-file", rootFile)
	use(unknown.TLSCertificate(hostileInter))
	cli("check, unknown authority", 1, []string{"unknown authority", "FAILED: upstream " + upstream + ": "},
		"check", "--upstream", upstream, "--ca-file", rootFile)
	cli("chain show, unknown authority", 0, []string{"FAILS: "},
		"chain", "show", "--upstream", upstream, "--ca-file", rootFile)
}

// TestHostileErrorTextFromMain: main prints its final error through the
// escaping writer (here an unknown flag that holds escape sequences, which
// cobra echoes).
func TestHostileErrorTextFromMain(t *testing.T) {
	out, code := runCLI(t, nil, "check", "--bogus\x1b[8m\r\u202eOK: verified")
	if code != 2 || !strings.Contains(out, `unknown flag: --bogus\x1b[8m\x0d\u202eOK: verified`) {
		t.Errorf("exit %d, output %q; want exit 2 and the flag escaped", code, out)
	}
	assertNoHostileEffect(t, "main's error", out)
}
