package chain_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

func TestDialVerifyFull(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	cnOnly, err := testpki.IssueLeaf(pki.Intermediate, testpki.LeafOptions{CommonName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	good := pki.Leaf.TLSCertificate(pki.Intermediate)
	tests := []struct {
		name       string
		host       string
		serverName string
		answer     testpki.FakeAnswer
		kind       chain.Kind // for verification failures
		errHas     string     // "" means success
		wantSNI    string
		wantCN     bool
	}{
		{name: "good chain by name", host: "localhost", answer: testpki.AnswerTLS(good, nil), wantSNI: "localhost"},
		{name: "good chain by IP sends no SNI", host: "127.0.0.1", answer: testpki.AnswerTLS(good, nil), wantSNI: ""},
		{name: "server_name overrides the dialled IP", host: "127.0.0.1", serverName: "localhost", answer: testpki.AnswerTLS(good, nil), wantSNI: "localhost"},
		{name: "CN-only certificate (libpq fallback)", host: "localhost", answer: testpki.AnswerTLS(cnOnly.TLSCertificate(pki.Intermediate), nil), wantSNI: "localhost", wantCN: true},
		{name: "leaf without its intermediate", host: "localhost", answer: testpki.AnswerTLS(pki.Leaf.TLSCertificate(), nil), kind: chain.KindUnknownAuthority, errHas: "unknown authority"},
		{name: "other CA", host: "localhost", answer: testpki.AnswerTLS(pki.OtherLeaf.TLSCertificate(), nil), kind: chain.KindUnknownAuthority, errHas: "unknown authority"},
		{name: "wrong host name", host: "localhost", answer: testpki.AnswerTLS(pki.WrongName.TLSCertificate(pki.Intermediate), nil), kind: chain.KindHostname, errHas: `valid for "wrong.example.invalid"`},
		{name: "right cert, wrong server_name", host: "127.0.0.1", serverName: "db.example.com", answer: testpki.AnswerTLS(good, nil), kind: chain.KindHostname, errHas: `not valid for host name "db.example.com"`},
		{name: "expired", host: "localhost", answer: testpki.AnswerTLS(pki.Expired.TLSCertificate(pki.Intermediate), nil), kind: chain.KindExpired, errHas: "expired at"},
		{name: "not yet valid", host: "localhost", answer: testpki.AnswerTLS(pki.NotYetValid.TLSCertificate(pki.Intermediate), nil), kind: chain.KindNotYetValid, errHas: "not valid before"},
		{name: "self-signed", host: "localhost", answer: testpki.AnswerTLS(pki.SelfSigned.TLSCertificate(), nil), kind: chain.KindSelfSigned, errHas: "self-signed"},
		{name: "TLS 1.1 only", host: "localhost", answer: testpki.AnswerTLS(good, func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }), errHas: "TLS 1.2 or later"},
		{name: "answers N", host: "localhost", answer: testpki.AnswerBytes([]byte("N")), errHas: "refused TLS"},
		{name: "answers E, not echoed", host: "localhost", answer: testpki.AnswerBytes([]byte("EFATAL: attacker-chosen text")), errHas: "not shown"},
		{name: "garbage answer", host: "localhost", answer: testpki.AnswerBytes([]byte("H")), errHas: "unexpected answer 0x48"},
		// 'S' then a fake AuthenticationOk, as a man in the middle would.
		{name: "bytes injected after S", host: "localhost", answer: testpki.AnswerBytes([]byte("SR\x00\x00\x00\x08\x00\x00\x00\x00")), errHas: "unencrypted data where the TLS handshake should start"},
		{name: "closes without answering", host: "localhost", answer: func(net.Conn, *testpki.FakeUpstream) net.Conn { return nil }, errHas: "closed the connection without answering"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := testpki.StartFakeUpstream(tc.answer)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var sawCN bool
			d := &chain.Dialer{Host: tc.host, Port: s.Port, ServerName: tc.serverName, Roots: testpki.Pool(pki.Root),
				ConnectTimeout: 5 * time.Second, OnCommonName: func(*x509.Certificate) { sawCN = true }}
			conn, err := d.Dial(context.Background())
			if tc.errHas == "" {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				conn.Write([]byte("hello"))
				conn.Close()
				s.Close()
				if got := string(s.Received()); got != "hello" {
					t.Fatalf("server got %q", got)
				}
				if sni := s.SNI(); len(sni) != 1 || sni[0] != tc.wantSNI {
					t.Errorf("SNI %q, want %q", sni, tc.wantSNI)
				}
				if sawCN != tc.wantCN {
					t.Errorf("CN fallback reported %v, want %v", sawCN, tc.wantCN)
				}
				return
			}
			if err == nil {
				conn.Close()
				t.Fatal("dial succeeded; want a failure")
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("error %q does not contain %q", err, tc.errHas)
			}
			if strings.Contains(err.Error(), "attacker-chosen") {
				t.Fatalf("error echoes the unauthenticated server's text: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "upstream "+net.JoinHostPort(tc.host, strconv.Itoa(s.Port))) {
				t.Errorf("error %q does not name the upstream first", err)
			}
			var de *chain.DialError
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a DialError", err)
			}
			if tc.kind != 0 {
				var ve *chain.VerifyError
				if !errors.As(err, &ve) || ve.Kind != tc.kind {
					t.Fatalf("error %v: want kind %v", err, tc.kind)
				}
			}
			s.Close()
			if got := s.Received(); testpki.HasStartupMessage(got) || (len(got) > 0 && got[0] != 0x16) {
				t.Fatalf("the untrusted server received %q: more than a TLS ClientHello", got)
			}
		})
	}
}

func TestDialUnreachable(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	d := &chain.Dialer{Host: "127.0.0.1", Port: port, Roots: x509.NewCertPool(), ConnectTimeout: 2 * time.Second}
	_, err := d.Dial(context.Background())
	var de *chain.DialError
	if !errors.As(err, &de) || de.Step != chain.StepConnect || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("got %v, want a connect failure", err)
	}
}

// recordingDialer proves the dialer is injectable and dials the configured
// host, not some resolved address.
type recordingDialer struct{ addrs []string }

func (r *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	r.addrs = append(r.addrs, addr)
	return nil, errors.New("recorded")
}

func TestDialUsesInjectedDialer(t *testing.T) {
	rd := &recordingDialer{}
	d := &chain.Dialer{Host: "db.example.com", Port: 6543, Roots: x509.NewCertPool(), Net: rd}
	if _, err := d.Dial(context.Background()); err == nil {
		t.Fatal("want error")
	}
	if len(rd.addrs) != 1 || rd.addrs[0] != "db.example.com:6543" {
		t.Fatalf("dialled %q", rd.addrs)
	}
}

func TestNoRootsFailsClosed(t *testing.T) {
	d := &chain.Dialer{Host: "localhost", Port: 1}
	if _, err := d.Dial(context.Background()); err == nil || !strings.Contains(err.Error(), "no trust anchors") {
		t.Fatalf("got %v", err)
	}
}

// serveRaw runs answer on every connection to a loopback listener and
// returns its port.
func serveRaw(t *testing.T, answer func(c net.Conn)) int {
	t.Helper()
	return testpki.PortOf(testpki.Serve(t, answer))
}

// oldServer stands in for PostgreSQL before 17 facing direct TLS: it reads
// the ClientHello as a startup packet of absurd length and hangs up.
func oldServer(c net.Conn) { _, _ = io.ReadFull(c, make([]byte, 8)) }

func TestNegotiation(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	cert := pki.Leaf.TLSCertificate(pki.Intermediate)
	tests := []struct {
		name     string
		mode     chain.Negotiation
		server   *testpki.ScriptedOptions // nil: oldServer
		wantALPN string
		errHas   string
	}{
		{name: "direct, server selects postgresql", mode: chain.NegotiateDirect,
			server: &testpki.ScriptedOptions{Direct: true, ALPN: []string{"postgresql"}}, wantALPN: "postgresql"},
		{name: "direct, server selects no ALPN", mode: chain.NegotiateDirect,
			server: &testpki.ScriptedOptions{Direct: true}, errHas: `did not select the ALPN protocol "postgresql"`},
		{name: "direct, server knows only h2", mode: chain.NegotiateDirect,
			server: &testpki.ScriptedOptions{Direct: true, ALPN: []string{"h2"}}, errHas: `refused the ALPN protocol "postgresql"`},
		{name: "direct, server before PostgreSQL 17", mode: chain.NegotiateDirect,
			errHas: "does not accept direct TLS (PostgreSQL 17 or later is needed); use negotiation postgres"},
		{name: "SSLRequest, server with ALPN", mode: chain.NegotiatePostgres,
			server: &testpki.ScriptedOptions{ALPN: []string{"postgresql"}}, wantALPN: "postgresql"},
		{name: "SSLRequest, server without ALPN (before 17)", mode: "",
			server: &testpki.ScriptedOptions{}, wantALPN: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var port int
			var s *testpki.ScriptedServer
			if tc.server != nil {
				o := *tc.server
				o.Cert = cert
				if s, err = testpki.StartScriptedServer(o); err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				port = s.Port
			} else {
				port = serveRaw(t, oldServer)
			}
			d := &chain.Dialer{Host: "localhost", Port: port, Roots: testpki.Pool(pki.Root), Negotiation: tc.mode, ConnectTimeout: 5 * time.Second}
			conn, err := d.Dial(context.Background())
			if tc.errHas != "" {
				if err == nil {
					conn.Close()
					t.Fatal("dial succeeded; want a failure")
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("error %q lacks %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if got := conn.ConnectionState().NegotiatedProtocol; got != tc.wantALPN {
				t.Errorf("ALPN %q, want %q", got, tc.wantALPN)
			}
			conn.Close()
			// The fetcher negotiates the same way.
			f, err := chain.Fetch(context.Background(), d)
			if err != nil || len(f.Presented) != 2 {
				t.Fatalf("fetch: %v", err)
			}
		})
	}
	if _, err := chain.ParseNegotiation("starttls"); err == nil {
		t.Error("ParseNegotiation accepted an unknown mode")
	}
}

// TestHandshakeErrorsNameTheCause covers refusals whose first message used
// to mislead: a stalled handshake, a plaintext answer to a direct
// ClientHello.
func TestHandshakeErrorsNameTheCause(t *testing.T) {
	tests := []struct {
		name     string
		mode     chain.Negotiation
		answer   func(c net.Conn)
		errHas   string
		hintHas  string
		injected bool
	}{
		{name: "S, then silence", answer: func(c net.Conn) {
			io.ReadFull(c, make([]byte, 8))
			c.Write([]byte("S"))
			time.Sleep(3 * time.Second)
		}, errHas: "TLS handshake timed out"},
		{name: "direct: plaintext answer to the ClientHello", mode: chain.NegotiateDirect, answer: func(c net.Conn) {
			io.ReadFull(c, make([]byte, 8))
			c.Write([]byte("EFATAL:  unsupported frontend protocol\x00"))
		}, errHas: "answered the TLS ClientHello in plaintext", hintHas: "negotiation: postgres"},
		{name: "direct: hang-up", mode: chain.NegotiateDirect, answer: oldServer, errHas: "does not accept direct TLS", hintHas: "negotiation: postgres"},
		{name: "SSLRequest: bytes after S are still an injection", answer: func(c net.Conn) {
			io.ReadFull(c, make([]byte, 8))
			c.Write([]byte("SR\x00\x00\x00\x08\x00\x00\x00\x00"))
		}, errHas: "possible man-in-the-middle", injected: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			port := serveRaw(t, tc.answer)
			d := &chain.Dialer{Host: "localhost", Port: port, Roots: x509.NewCertPool(), Negotiation: tc.mode, ConnectTimeout: 500 * time.Millisecond}
			_, err := d.Dial(context.Background())
			var de *chain.DialError
			if !errors.As(err, &de) || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("got %v; want a DialError with %q", err, tc.errHas)
			}
			if !strings.Contains(de.Hint, tc.hintHas) || de.Injected != tc.injected {
				t.Fatalf("hint %q injected %v; want hint with %q, injected %v", de.Hint, de.Injected, tc.hintHas, tc.injected)
			}
		})
	}
}
