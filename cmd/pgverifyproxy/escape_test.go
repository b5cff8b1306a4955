package main

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// certText is the text a test PKI puts in its certificates: hostile text a
// man in the middle chooses, or clean text of the same shape. Both make
// reports of the same lines, so a fake line shows as a difference.
type certText struct {
	rootCN, interCN  string
	leafCN, leafOU   string
	dns, mismatchDNS []string
}

// hostileText holds newlines that start fake report lines, escape
// sequences that hide what follows (ESC[8m), set the window title or erase
// the line, carriage returns, DEL and a bidi override. (A DNS SAN must be
// ASCII: U+202E is in the subject only.)
var hostileText = certText{
	rootCN:      "root\x1b[8m\nOK: upstream verified",
	interCN:     "inter\r\u202e\x7fSPKI SHA-256: AAAA",
	leafCN:      "db\n  SPKI SHA-256: AAAA\nOK: upstream localhost: verify-full passes\x1b[8m\r\u202e",
	leafOU:      "\x1b]0;title\x07\nFAILED: nothing\x1b[2J",
	dns:         []string{"localhost", "\x1b]0;title\x07", "x\n      SPKI SHA-256: AAAA", "\r\x1b[2Kok", "del\x7f"},
	mismatchDNS: []string{"\x1b]0;title\x07", "evil\nOK: upstream verified"},
}

// cleanText is hostileText's twin without anything to escape.
var cleanText = certText{
	rootCN: "root", interCN: "inter", leafCN: "db", leafOU: "ou",
	dns:         []string{"localhost", "a", "b", "c", "d"},
	mismatchDNS: []string{"e", "f"},
}

// textPKI is a chain whose every name is from one certText.
type textPKI struct {
	root, inter *testpki.Cert
	// leaf is issued by inter for localhost (and 127.0.0.1); mismatch by
	// inter for none of the names checked; self is self-signed for
	// localhost.
	leaf, mismatch, self *testpki.Cert
	rootFile             string
}

func newTextPKI(t *testing.T, tx certText) *textPKI {
	t.Helper()
	var p textPKI
	var err error
	if p.root, err = testpki.NewRootCA(tx.rootCN); err != nil {
		t.Fatal(err)
	}
	if p.inter, err = testpki.NewIntermediateCA(p.root, tx.interCN); err != nil {
		t.Fatal(err)
	}
	subject := pkix.Name{CommonName: tx.leafCN, OrganizationalUnit: []string{tx.leafOU}}
	local := testpki.LeafOptions{DNSNames: tx.dns, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
	if p.leaf, err = testpki.IssueLeafWithSubject(p.inter, subject, local); err != nil {
		t.Fatal(err)
	}
	if p.mismatch, err = testpki.IssueLeafWithSubject(p.inter, subject, testpki.LeafOptions{DNSNames: tx.mismatchDNS}); err != nil {
		t.Fatal(err)
	}
	if p.self, err = testpki.IssueLeafWithSubject(nil, subject, local); err != nil {
		t.Fatal(err)
	}
	p.rootFile = filepath.Join(t.TempDir(), "root.crt")
	if err := testpki.WritePEMFile(p.rootFile, p.root.CertPEM); err != nil {
		t.Fatal(err)
	}
	return &p
}

// hashes are the SPKI fingerprints of the PKI's certificates: the only
// ones a report may show.
func (p *textPKI) hashes() map[string]bool {
	h := map[string]bool{}
	for _, c := range []*testpki.Cert{p.root, p.inter, p.leaf, p.mismatch, p.self} {
		h[chain.SPKIHash(c.Cert)] = true
	}
	return h
}

// assertTerminalSafe fails the test when out holds a byte or rune that
// drives a terminal or reorders a line, or a fingerprint line with a
// fingerprint that is not one of known.
func assertTerminalSafe(t *testing.T, what, out string, known map[string]bool) {
	t.Helper()
	for i := 0; i < len(out); i++ {
		if b := out[i]; (b < 0x20 && b != '\n' && b != '\t') || b == 0x7f {
			t.Errorf("%s: raw control byte %#x at offset %d", what, b, i)
		}
	}
	if !utf8.ValidString(out) {
		t.Errorf("%s: output is not UTF-8", what)
	}
	for _, r := range out {
		if bidiOrSeparator(r) || (r >= 0x80 && r <= 0x9f) {
			t.Errorf("%s: raw %U in the output", what, r)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimLeft(line, " \t"), "SPKI SHA-256:"); ok && !known[strings.TrimSpace(rest)] {
			t.Errorf("%s: a fake fingerprint line %q", what, line)
		}
	}
}

// lineKinds is the first word of each line: a report of hostile text must
// have the same lines, in the same order, as its clean twin.
func lineKinds(out string) []string {
	var kinds []string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			kinds = append(kinds, "")
			continue
		}
		kinds = append(kinds, f[0])
	}
	return kinds
}

// assertSameLines compares the line kinds of a hostile report with its
// clean twin's.
func assertSameLines(t *testing.T, what, hostile, clean string) {
	t.Helper()
	h, c := lineKinds(hostile), lineKinds(clean)
	if strings.Join(h, "|") != strings.Join(c, "|") {
		t.Errorf("%s: the hostile certificate text changed the report's lines:\nhostile (%d lines): %q\nclean   (%d lines): %q", what, len(h), h, len(c), c)
	}
}

// TestPrintCertsHostileText: printCerts, on its own, shows certificate text
// quoted and escaped, one line per field whatever the text holds.
func TestPrintCertsHostileText(t *testing.T) {
	hp, cp := newTextPKI(t, hostileText), newTextPKI(t, cleanText)
	render := func(p *textPKI) string {
		var b bytes.Buffer
		printCerts(&b, "presented by the server", []*x509.Certificate{p.leaf.Cert, p.inter.Cert, p.root.Cert}, []string{chain.SPKIHash(p.root.Cert)})
		printCerts(&b, "self-signed", []*x509.Certificate{p.self.Cert, p.mismatch.Cert}, nil)
		return b.String()
	}
	hostile, clean := render(hp), render(cp)
	assertTerminalSafe(t, "printCerts", hostile, hp.hashes())
	assertSameLines(t, "printCerts", hostile, clean)
	// The text is all there, escaped and in double quotes.
	for _, want := range []string{
		"[1] " + chain.Quote(hp.leaf.Cert.Subject.String()),
		"issuer:  " + chain.Quote(hp.inter.Cert.Subject.String()),
		"[3] " + chain.Quote(hp.root.Cert.Subject.String()) + "   <== pinned anchor",
		`names:   "localhost", "\x1b]0;title\a", "x\n      SPKI SHA-256: AAAA", "\r\x1b[2Kok", "del\x7f", 127.0.0.1, CN="db\n  SPKI SHA-256: AAAA\nOK: upstream localhost: verify-full passes\x1b[8m\r\u202e"`,
		`\u202e`,
	} {
		if !strings.Contains(hostile, want) {
			t.Errorf("printCerts output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", hostile)
	}
}

// TestCheckHostileText runs check against upstreams that present hostile
// certificate text, and against their clean twins: the same report lines,
// none of them a fake, nothing that drives a terminal.
func TestCheckHostileText(t *testing.T) {
	hp, cp := newTextPKI(t, hostileText), newTextPKI(t, cleanText)
	tests := []struct {
		name string
		cert func(p *textPKI) *testpki.Cert
		// args get {port}, {ca} (the PKI's root file) and {pins}.
		args []string
		code int
		// verdict starts the last line of the report.
		verdict string
	}{
		{name: "verified path to a --ca-file root", cert: func(p *textPKI) *testpki.Cert { return p.leaf },
			args: []string{"--ca-file", "{ca}"}, verdict: "OK:"},
		{name: "host name mismatch", cert: func(p *textPKI) *testpki.Cert { return p.mismatch },
			args: []string{"--ca-file", "{ca}"}, code: 1, verdict: "what to do:"},
		{name: "no pin yet, trust on first use of a self-signed certificate", cert: func(p *textPKI) *testpki.Cert { return p.self },
			args: []string{"--pin-dir", "{pins}", "--trust", "tofu"}, verdict: "OK:"},
		{name: "no pin yet, self-signed certificate refused", cert: func(p *textPKI) *testpki.Cert { return p.self },
			args: []string{"--pin-dir", "{pins}"}, code: 1, verdict: "what to do:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run := func(p *textPKI) string {
				t.Helper()
				c := tc.cert(p)
				s, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: c.TLSCertificate(p.inter)})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				r := strings.NewReplacer("{port}", fmt.Sprint(s.Port), "{ca}", p.rootFile, "{pins}", t.TempDir())
				args := []string{"--upstream", fmt.Sprintf("localhost:%d", s.Port)}
				for _, a := range tc.args {
					args = append(args, r.Replace(a))
				}
				out, code := runCheckCmd(t, args...)
				if code != tc.code {
					t.Errorf("exit status %d, want %d", code, tc.code)
				}
				// runCheckCmd appends main's error line; the report ends before it.
				report, _, _ := strings.Cut(out, "pgverifyproxy: error: ")
				lines := strings.Split(strings.TrimRight(report, "\n"), "\n")
				if last := lines[len(lines)-1]; !strings.HasPrefix(last, tc.verdict) {
					t.Errorf("the report ends with %q, want a line starting with %q", last, tc.verdict)
				}
				return out
			}
			hostile, clean := run(hp), run(cp)
			assertTerminalSafe(t, "check", hostile, hp.hashes())
			assertSameLines(t, "check", hostile, clean)
			for _, marker := range []string{"OK:", "FAILED:", "WARNING:", "what to do:"} {
				if h, c := countLinesWith(hostile, marker), countLinesWith(clean, marker); h != c {
					t.Errorf("%d lines start with %q, %d with clean certificate text", h, marker, c)
				}
			}
			if t.Failed() {
				t.Logf("hostile output:\n%s\nclean output:\n%s", hostile, clean)
			}
		})
	}
}

// countLinesWith counts the lines of out that start with prefix.
func countLinesWith(out, prefix string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, prefix) {
			n++
		}
	}
	return n
}

// TestChainShowHostileText: chain show FILE on a PEM file of hostile
// certificates.
func TestChainShowHostileText(t *testing.T) {
	hp, cp := newTextPKI(t, hostileText), newTextPKI(t, cleanText)
	show := func(p *textPKI) string {
		path := filepath.Join(t.TempDir(), "chain.pem")
		if err := testpki.WritePEMFile(path, p.leaf.CertPEM, p.inter.CertPEM, p.root.CertPEM, p.self.CertPEM); err != nil {
			t.Fatal(err)
		}
		out, code := runRootCmd(t, "chain", "show", path)
		if code != 0 {
			t.Fatalf("chain show: exit %d\n%s", code, out)
		}
		return out
	}
	hostile, clean := show(hp), show(cp)
	assertTerminalSafe(t, "chain show", hostile, hp.hashes())
	assertSameLines(t, "chain show", hostile, clean)
}

// TestCommandsWriteThroughSafeWriter: what chain fetch, chain show and
// check print goes through the safe writer, even text no one quoted (here
// a server name and a pin directory from the command line).
func TestCommandsWriteThroughSafeWriter(t *testing.T) {
	port := closedPort(t)
	upstream := fmt.Sprintf("127.0.0.1:%d", port)
	probe := "probe\x1b[8m\r\u202e"
	pins := filepath.Join(t.TempDir(), "pins"+probe)
	for _, args := range [][]string{
		{"check", "--upstream", upstream, "--server-name", probe, "--pin-dir", pins, "--connect-timeout", "2s"},
		{"chain", "fetch", "--upstream", upstream, "--server-name", probe, "--pin-dir", pins, "--connect-timeout", "2s"},
		{"chain", "show", "--upstream", upstream, "--server-name", probe, "--pin-dir", pins, "--connect-timeout", "2s"},
	} {
		out, _ := runRootCmd(t, args...)
		// The report, without the error line runRootCmd adds (main prints
		// that one through the safe writer too).
		report, _, _ := strings.Cut(out, "pgverifyproxy: error: ")
		if !strings.Contains(report, `probe\x1b[8m\x0d\u202e`) {
			t.Errorf("%s: the probe is not shown escaped:\n%q", args[:2], report)
		}
		assertTerminalSafe(t, strings.Join(args[:2], " "), report, nil)
	}
	if _, err := os.Stat(pins); err == nil {
		t.Errorf("a pin directory was created")
	}
}

// TestSafeWriter: controls are shown as escapes, clean text passes as it
// is, and Write reports the bytes of p it consumed.
func TestSafeWriter(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text, tabs\tand newlines\n", "plain text, tabs\tand newlines\n"},
		{"héllo — ✓ 日本\n", "héllo — ✓ 日本\n"},
		{"a\x1b[8mb", `a\x1b[8mb`},
		{"\r\x07\x00\x08\x7f\n", `\x0d\x07\x00\x08\u007f` + "\n"},
		{"c1 \u009b2J", `c1 \u009b2J`},
		{"bad \xff\xc2 utf-8", `bad \xff\xc2 utf-8`},
		{"rlo \u202e lri \u2066 ls \u2028 alm \u061c", `rlo \u202e lri \u2066 ls \u2028 alm \u061c`},
		{`a \x1b stays`, `a \x1b stays`},
	}
	for _, tc := range tests {
		var b bytes.Buffer
		w := safeOut(&b)
		n, err := w.Write([]byte(tc.in))
		if err != nil || n != len(tc.in) {
			t.Errorf("Write(%q) = %d, %v; want %d, nil", tc.in, n, err, len(tc.in))
		}
		if b.String() != tc.want {
			t.Errorf("Write(%q) wrote %q, want %q", tc.in, b.String(), tc.want)
		}
	}
	if w := safeOut(&bytes.Buffer{}); safeOut(w) != w {
		t.Errorf("safeOut wraps a safeWriter again")
	}
}

// TestEscapeControls: an error's text keeps its quotes and backslashes and
// loses its controls.
func TestEscapeControls(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{`names "a", "b\n"`, `names "a", "b\n"`},
		{"a\nb\\\"c\x1b\u202e\xff\td", `a\nb\"c\x1b\u202e\xff\td`},
		{"CN=db\r\x7f", `CN=db\r\x7f`},
		{"\u00e9\u2028", `é\u2028`},
	}
	for _, tc := range tests {
		if got := escapeControls(tc.in); got != tc.want {
			t.Errorf("escapeControls(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
