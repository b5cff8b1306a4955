//go:build linux

package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// attackRow is one hostile or broken upstream behind the bad route.
type attackRow struct {
	name   string
	answer testpki.FakeAnswer // the fake upstream's script
	server string             // the bad route's server_name; "" means its host, localhost
	reason string             // the refusal cause the proxy counts (Observer.Refused)
	code   string             // SQLSTATE of the FATAL
	cause  []string           // each in the FATAL message
	hint   string             // in the hint
	// notEchoed must appear nowhere the client can see it.
	notEchoed string
	// setup, when set, replaces the bad route's trust (it returns its
	// description for hints).
	setup func(t *testing.T, d *chain.Dialer) string
	// before, when set, runs once the proxy serves, before the attacks.
	before func(t *testing.T, ap *attackProxy, fake *testpki.FakeUpstream)
	// contacted counts the hostile connections; nil means fake.Conns().
	contacted func() int
	// after checks what else the row needs.
	after func(t *testing.T)
}

// TestBadUpstreamsFailClosed points the proxy at hostile or broken
// upstreams. For each, on the plaintext and the TLS client leg and with
// psql, the client must get a FATAL error with the SQLSTATE naming the
// cause; the upstream must receive no startup message (so no user name, no
// password); and a good route to the real server, served by the same
// proxy.Server, must keep answering real queries after each refusal.
func TestBadUpstreamsFailClosed(t *testing.T) {
	const eText = "unauthenticated words from a server nobody verified"
	eAnswer, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28000", Message: eText,
		Detail: eText + " (detail)", Hint: "connect with sslmode=disable"}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	authOK, err := (&pgproto3.AuthenticationOk{}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	var sawS, hellos atomic.Int32
	// A new root after pinning: the route pins the real chain through a
	// relay to the real server, then the upstream presents a chain to a
	// root the system store trusts, but that is not the pinned one.
	newRoot := mustCA(t, nil, "attack new root")
	newInter := mustCA(t, newRoot, "attack new intermediate")
	newLeaf := mustLeaf(t, newInter)
	sw := &switchableUpstream{tlsOnly: testpki.AnswerTLS(newLeaf.TLSCertificate(newInter), nil)}
	pinDir := t.TempDir()
	// SSRF before verification: a leaf from an unknown CA whose caIssuers
	// URLs point at this machine (the proxy's own admin port, a cloud
	// metadata service, internal hosts). Without aia_allow_private no
	// request may reach them.
	internal := startCountingHTTP(t)
	ssrfLeaf := issueCert(t, mustCA(t, mustCA(t, nil, "ssrf root"), "ssrf intermediate"), &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IssuingCertificateURL: []string{internal.URL + "/latest/meta-data/iam", "http://localhost:" + strings.TrimPrefix(internal.URL, "http://127.0.0.1:") + "/admin",
			"http://2130706433:" + strings.TrimPrefix(internal.URL, "http://127.0.0.1:") + "/numeric"}})
	// A sub-CA permitted only example.com vouching, by the CN of a leaf
	// without a dNSName, for a name outside its constraints; crypto/x509
	// alone accepts it, OpenSSL (libpq) does not.
	constrainedRoot := mustCA(t, nil, "constrained root")
	constrainedSub := issueCert(t, constrainedRoot, &x509.Certificate{Subject: pkix.Name{CommonName: "example.com only"}, IsCA: true,
		PermittedDNSDomains: []string{"example.com"}})
	cnOnly := issueCert(t, constrainedSub, &x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}})
	ipSANOnly := issueCert(t, constrainedSub, &x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, IPAddresses: []net.IP{net.ParseIP("192.0.2.1")}})
	// A certificate whose names would forge lines on the client's terminal
	// and hide the rest.
	forger := issueCert(t, mustCA(t, nil, "forging root"), &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost\nOK: verified\x1b[8m", Organization: []string{"\x1b]0;owned\x07"}}, DNSNames: []string{"localhost"}})

	tests := []attackRow{
		{name: "certificate from another CA", answer: testpki.AnswerTLS(pki.OtherLeaf.TLSCertificate(), nil),
			reason: "verification", code: "08006", cause: []string{"certificate signed by unknown authority"}, hint: "intercepting"},
		{name: "TLS-intercepting middlebox re-signing with its own CA for the right name", answer: testpki.AnswerTLS(pki.OtherLeaf.TLSCertificate(pki.OtherRoot), nil),
			reason: "verification", code: "08006", cause: []string{"unknown authority"}, hint: "--ca-file"},
		{name: "wrong host name", answer: testpki.AnswerTLS(pki.WrongName.TLSCertificate(pki.Intermediate), nil),
			reason: "verification", code: "08006", cause: []string{`valid for "wrong.example.invalid"`}, hint: "--server-name"},
		// The real server's own chain and key, reached under another name.
		{name: "real server certificate under another name", answer: testpki.AnswerTLS(pki.Leaf.TLSCertificate(pki.Intermediate), nil), server: "db.example.com",
			reason: "verification", code: "08006", cause: []string{`not valid for host name "db.example.com": it is valid for "localhost", 127.0.0.1, ::1`}, hint: "--server-name"},
		{name: "expired certificate", answer: testpki.AnswerTLS(pki.Expired.TLSCertificate(pki.Intermediate), nil),
			reason: "verification", code: "08006", cause: []string{"expired at"}, hint: "renew"},
		{name: "not yet valid certificate", answer: testpki.AnswerTLS(pki.NotYetValid.TLSCertificate(pki.Intermediate), nil),
			reason: "verification", code: "08006", cause: []string{"not valid before"}, hint: "clock"},
		{name: "self-signed certificate", answer: testpki.AnswerTLS(pki.SelfSigned.TLSCertificate(), nil),
			reason: "verification", code: "08006", cause: []string{"self-signed"}, hint: "fingerprint"},
		{name: "server answers N", answer: testpki.AnswerBytes([]byte("N")),
			reason: "upstream_refused_tls", code: "08006", cause: []string{"refused TLS", "answered 'N'"}, hint: "stripping"},
		{name: "downgrade: middlebox strips the real server's S", answer: answerStripS(&sawS),
			reason: "upstream_refused_tls", code: "08006", cause: []string{"refused TLS", "stripped TLS"}, hint: "stripping",
			after: func(t *testing.T) {
				if sawS.Load() != 3 {
					t.Fatalf("the real server answered 'S' to %d of the middlebox's 3 SSLRequests", sawS.Load())
				}
			}},
		{name: "server sends bytes after S", answer: testpki.AnswerBytes(append([]byte("S"), authOK...)),
			reason: "upstream_injection", code: "08006", cause: []string{"unencrypted data"}, hint: "man-in-the-middle"},
		{name: "downgrade: middlebox answers S then plaintext AuthenticationOk to the ClientHello",
			answer: answerSThenPlaintext(&hellos, &pgproto3.AuthenticationOk{}, &pgproto3.ParameterStatus{Name: "server_version", Value: "15"},
				&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 2}}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
			reason: "upstream_injection", code: "08006", cause: []string{"unencrypted data"}, hint: "man-in-the-middle",
			after: func(t *testing.T) {
				if hellos.Load() != 3 {
					t.Fatalf("the middlebox saw %d ClientHellos, want 3", hellos.Load())
				}
			}},
		{name: "E answer to SSLRequest is not echoed", answer: testpki.AnswerBytes(eAnswer), notEchoed: eText,
			reason: "upstream_refused_tls", code: "08006", cause: []string{"answered SSLRequest with an error message", "not shown"}},
		{name: "TLS 1.0 only", answer: testpki.AnswerTLS(pki.Leaf.TLSCertificate(pki.Intermediate), func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10 }),
			reason: "upstream_tls", code: "08006", cause: []string{"TLS 1.2 or later"}, hint: "TLS 1.2 or later"},
		{name: "TLS 1.1 only", answer: testpki.AnswerTLS(pki.Leaf.TLSCertificate(pki.Intermediate), func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11 }),
			reason: "upstream_tls", code: "08006", cause: []string{"TLS 1.2 or later"}, hint: "TLS 1.2 or later"},
		{name: "SSRF: caIssuers URLs on this machine from an unverified certificate", answer: testpki.AnswerTLS(ssrfLeaf.TLSCertificate(), nil),
			reason: "verification", code: "08006", cause: []string{"unknown authority"}, hint: "intercepting", setup: rootsTrust(pki.Root),
			after: func(t *testing.T) {
				if n := internal.hits.Load(); n != 0 {
					t.Fatalf("%d AIA requests reached the local HTTP server", n)
				}
			}},
		{name: "name-constrained sub-CA vouching by CN only for a name outside its constraints", answer: testpki.AnswerTLS(cnOnly.TLSCertificate(constrainedSub), nil),
			reason: "verification", code: "08006", cause: []string{`common name "localhost" is outside the domains CA`, "name constraints"}, hint: "--server-name",
			setup: rootsTrust(constrainedRoot)},
		{name: "name-constrained sub-CA, leaf with IP SANs only, CN outside its constraints", answer: testpki.AnswerTLS(ipSANOnly.TLSCertificate(constrainedSub), nil),
			reason: "verification", code: "08006", cause: []string{`common name "localhost" is outside the domains CA`}, hint: "--server-name",
			setup: rootsTrust(constrainedRoot)},
		{name: "certificate names holding a newline and escape sequences", answer: testpki.AnswerTLS(forger.TLSCertificate(), nil),
			reason: "verification", code: "08006", cause: []string{`localhost\nOK: verified\x1b[8m`}, hint: "intercepting", notEchoed: "\x1b",
			after: func(t *testing.T) {}},
		{name: "new root after pinning", answer: sw.answer,
			reason: "identity_changed", code: "08006",
			cause: []string{"THE UPSTREAM'S IDENTITY CHANGED", "pgverifyproxy test root CA", "attack new root", chain.SPKIHash(newRoot.Cert), "system trust store"},
			hint:  "--repin",
			setup: func(t *testing.T, d *chain.Dialer) string {
				store := &chain.PinStore{Dir: pinDir}
				d.Roots = nil
				d.Trust = &chain.PinTrust{Store: store, Dialer: d, Policy: chain.PolicySystem,
					System: testpki.Pool(pki.Root, newRoot), AIA: &chain.Completer{}}
				return "the pinned anchor in " + store.Path(d.Host, d.Port, d.ServerName)
			},
			before: func(t *testing.T, ap *attackProxy, fake *testpki.FakeUpstream) {
				// First use pins the real chain; the route serves.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
					ap.badPort, harness.ScramUser, harness.ScramPassword))
				if err != nil {
					t.Fatalf("the route before the change of root: %v", err)
				}
				var got string
				err = conn.QueryRow(ctx, "select 'pinned'").Scan(&got)
				conn.Close(context.Background())
				if err != nil || got != "pinned" {
					t.Fatalf("the route before the change of root: %q %v", got, err)
				}
				pin, err := (&chain.PinStore{Dir: pinDir}).Load("localhost", fake.Port, "")
				if err != nil || len(pin.Anchors) != 1 || !pin.Anchors[0].Equal(pki.Root.Cert) {
					t.Fatalf("the route did not pin the real root: %+v %v", pin, err)
				}
				if sw.relayed.Load() == 0 {
					t.Fatal("nothing was relayed to the real server before the change")
				}
				sw.flipped.Store(true)
			},
			contacted: func() int { return int(sw.hellos.Load()) }},
	}
	refused := 0
	for _, tc := range tests {
		ok := t.Run(tc.name, func(t *testing.T) {
			fake, err := testpki.StartFakeUpstream(tc.answer)
			if err != nil {
				t.Fatal(err)
			}
			defer fake.Close()
			d := &chain.Dialer{Host: "localhost", Port: fake.Port, ServerName: tc.server, Roots: testpki.Pool(pki.Root), ConnectTimeout: 10 * time.Second}
			trust := "the roots in --ca-file " + rootFile
			if tc.setup != nil {
				trust = tc.setup(t, d)
			}
			ap := startAttackProxy(t, d, trust)
			if tc.before != nil {
				tc.before(t, ap, fake)
			}
			dialsBefore := ap.badDials.Load()
			ap.queryGood(t, "require", "before "+tc.name)
			for _, leg := range []string{"disable", "require"} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=%s", ap.badPort, harness.ScramUser, harness.ScramPassword, leg)
				conn, err := pgconn.Connect(ctx, dsn)
				cancel()
				if err == nil {
					conn.Close(context.Background())
					t.Fatalf("sslmode=%s: connected through a bad upstream", leg)
				}
				var pe *pgconn.PgError
				if !errors.As(err, &pe) {
					t.Fatalf("sslmode=%s: got %v, want the proxy's FATAL ErrorResponse", leg, err)
				}
				if pe.Severity != "FATAL" || pe.Code != tc.code || !strings.Contains(pe.Hint, tc.hint) || !strings.HasPrefix(pe.Message, "pgverifyproxy: ") {
					t.Fatalf("sslmode=%s: got %s %s %q hint %q; want FATAL %s from pgverifyproxy, hint with %q", leg, pe.Severity, pe.Code, pe.Message, pe.Hint, tc.code, tc.hint)
				}
				for _, c := range tc.cause {
					if !strings.Contains(pe.Message, c) {
						t.Fatalf("sslmode=%s: message %q does not name %q", leg, pe.Message, c)
					}
				}
				if tc.notEchoed != "" {
					for what, s := range map[string]string{"message": pe.Message, "detail": pe.Detail, "hint": pe.Hint, "error": err.Error()} {
						if strings.Contains(s, tc.notEchoed) || strings.Contains(s, "(detail)") || strings.Contains(s, "sslmode=disable") {
							t.Fatalf("sslmode=%s: the unauthenticated server's text reached the client's %s: %q", leg, what, s)
						}
					}
				}
				t.Logf("sslmode=%s: FATAL %s %s", leg, pe.Code, pe.Message)
				ap.queryGood(t, leg, "refusal on sslmode="+leg)
			}
			// What a psql user sees.
			r := runPsql(t, ap.badPort, "user="+harness.ScramUser+" sslmode=disable", harness.ScramPassword, "select 1")
			if r.code == 0 || !strings.Contains(r.err, "FATAL") || !strings.Contains(r.err, tc.cause[0]) {
				t.Fatalf("psql exit %d stderr %q; want FATAL naming %q", r.code, r.err, tc.cause[0])
			}
			if tc.notEchoed != "" && strings.Contains(r.err, tc.notEchoed) {
				t.Fatalf("psql shows the unauthenticated server's text: %q", r.err)
			}
			ap.queryGood(t, "disable", "refusal to psql")
			ap.waitRefusals(t, 3, tc.reason)
			if n := ap.badDials.Load() - dialsBefore; n != 3 {
				t.Fatalf("the bad route dialed %d times for 3 clients", n)
			}
			fake.Close()
			contacted := fake.Conns()
			if tc.contacted != nil {
				contacted = tc.contacted()
			}
			if contacted != 3 {
				t.Fatalf("the hostile upstream was contacted %d times for 3 clients", contacted)
			}
			if got := fake.Received(); testpki.HasStartupMessage(got) {
				t.Fatalf("the bad upstream received a startup message (%d bytes: %q)", len(got), got)
			}
			if tc.after != nil {
				tc.after(t)
			}
		})
		if ok {
			refused++
		}
	}
	t.Logf("attack rows refused %d/%d", refused, len(tests))
}

// TestAttackControlLeakIsDetected is the control for the table above: the
// same fake upstream, presenting the real server's chain under the right
// name, passes verification, and then the fake does record the startup
// message. Without it, "no startup message received" could hold because the
// fake never records anything.
func TestAttackControlLeakIsDetected(t *testing.T) {
	fake, err := testpki.StartFakeUpstream(testpki.AnswerTLS(pki.Leaf.TLSCertificate(pki.Intermediate), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	// The fake never answers the startup message: the proxy gives up at
	// its startup timeout and closes the upstream connection.
	ap := startAttackProxy(t, &chain.Dialer{Host: "localhost", Port: fake.Port, Roots: testpki.Pool(pki.Root), ConnectTimeout: 10 * time.Second}, "the roots in --ca-file "+rootFile,
		func(r *proxy.Route) { r.StartupTimeout = 2 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
		ap.badPort, harness.ScramUser, harness.ScramPassword)); err == nil {
		conn.Close(context.Background())
		t.Fatal("logged in through a fake that never answers")
	}
	fake.Close()
	got := fake.Received()
	if !testpki.HasStartupMessage(got) || !strings.Contains(string(got), harness.ScramUser) {
		t.Fatalf("the verified fake upstream recorded %d bytes %q: the leak check cannot see a leak", len(got), got)
	}
}

// TestClientBytesAfterSSLRequestRefused: a client (or something on the
// client's path) that sends plaintext where the TLS handshake must start is
// refused before any upstream is dialed. The route's upstream is a fake that
// would pass verification and records what reaches it; a good route in the
// same proxy keeps serving.
func TestClientBytesAfterSSLRequestRefused(t *testing.T) {
	fake, err := testpki.StartFakeUpstream(testpki.AnswerTLS(pki.Leaf.TLSCertificate(pki.Intermediate), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	ap := startAttackProxy(t, &chain.Dialer{Host: "localhost", Port: fake.Port, Roots: testpki.Pool(pki.Root), ConnectTimeout: 10 * time.Second}, "the roots in --ca-file "+rootFile)
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": harness.MD5User, "database": "postgres"}}).Encode(nil)
	variants := []struct {
		name      string
		pipelined bool
	}{
		// An injected plaintext startup message right behind the SSLRequest.
		{"startup message pipelined behind the SSLRequest", true},
		// The proxy's 'S' is answered with plaintext instead of a ClientHello.
		{"startup message in place of the ClientHello", false},
	}
	for i, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			c := rawDial(t, fmt.Sprintf("127.0.0.1:%d", ap.badPort))
			first := ssl
			if v.pipelined {
				first = append(append([]byte(nil), ssl...), startup...)
			}
			if _, err := c.Write(first); err != nil {
				t.Fatal(err)
			}
			var s [1]byte
			if _, err := io.ReadFull(c, s[:]); err != nil || s[0] != 'S' {
				t.Fatalf("answer %q %v", s, err)
			}
			if !v.pipelined {
				if _, err := c.Write(startup); err != nil {
					t.Fatal(err)
				}
			}
			msg, err := pgproto3.NewFrontend(c, c).Receive()
			if err != nil {
				t.Fatal(err)
			}
			er, ok := msg.(*pgproto3.ErrorResponse)
			if !ok || er.Severity != "FATAL" || er.Code != "08P01" || !strings.Contains(er.Message, "received unencrypted data after SSL request") {
				t.Fatalf("got %#v", msg)
			}
			if _, err := c.Read(s[:]); err == nil {
				t.Fatal("connection still open after refusal")
			}
			ap.queryGood(t, "disable", "a client injection")
			ap.queryGood(t, "require", "a client injection")
			ap.waitRefusals(t, i+1, "client_protocol")
		})
	}
	if n := ap.badDials.Load(); n != 0 {
		t.Fatalf("upstream dialed %d times for refused clients", n)
	}
	fake.Close()
	if n := fake.Conns(); n != 0 {
		t.Fatalf("the upstream was contacted %d times for refused clients", n)
	}
	if got := fake.Received(); len(got) != 0 {
		t.Fatalf("the upstream received %d bytes from refused clients: %q", len(got), got)
	}
}

func TestOversizedStartupPacketRefused(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	c := rawDial(t, p.addr)
	pkt := make([]byte, 10001)
	binary.BigEndian.PutUint32(pkt[0:4], uint32(len(pkt)))
	binary.BigEndian.PutUint32(pkt[4:8], pgproto3.ProtocolVersion30)
	go c.Write(pkt)
	msg, err := pgproto3.NewFrontend(c, c).Receive()
	if err != nil {
		t.Fatal(err)
	}
	er, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || er.Code != "08P01" || !strings.Contains(er.Message, "invalid length of startup packet (10001 bytes; the limit is 10000)") {
		t.Fatalf("got %#v", msg)
	}
	if n := p.dials.Load(); n != 0 {
		t.Fatalf("upstream dialed %d times for a refused client", n)
	}
}

// rawDial opens a bare TCP connection to the proxy, for hand-made packets.
func rawDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}
