package chain_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// serveRaw runs answer on every connection to a loopback listener and
// returns its port.
func serveRaw(t *testing.T, answer func(c net.Conn)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); answer(c) }()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// oldServer stands in for PostgreSQL before 17 facing direct TLS: it reads
// the ClientHello as a startup packet of absurd length and hangs up.
func oldServer(c net.Conn) { _, _ = io.ReadFull(c, make([]byte, 8)) }

func TestNegotiation(t *testing.T) {
	pki, err := harness.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	cert := pki.Leaf.TLSCertificate(pki.Intermediate)
	tests := []struct {
		name     string
		mode     chain.Negotiation
		server   *harness.ScriptedOptions // nil: oldServer
		wantALPN string
		errHas   string
	}{
		{name: "direct, server selects postgresql", mode: chain.NegotiateDirect,
			server: &harness.ScriptedOptions{Direct: true, ALPN: []string{"postgresql"}}, wantALPN: "postgresql"},
		{name: "direct, server selects no ALPN", mode: chain.NegotiateDirect,
			server: &harness.ScriptedOptions{Direct: true}, errHas: `did not select the ALPN protocol "postgresql"`},
		{name: "direct, server knows only h2", mode: chain.NegotiateDirect,
			server: &harness.ScriptedOptions{Direct: true, ALPN: []string{"h2"}}, errHas: `refused the ALPN protocol "postgresql"`},
		{name: "direct, server before PostgreSQL 17", mode: chain.NegotiateDirect,
			errHas: "does not accept direct TLS (PostgreSQL 17 or later is needed); use negotiation postgres"},
		{name: "SSLRequest, server with ALPN", mode: chain.NegotiatePostgres,
			server: &harness.ScriptedOptions{ALPN: []string{"postgresql"}}, wantALPN: "postgresql"},
		{name: "SSLRequest, server without ALPN (before 17)", mode: "",
			server: &harness.ScriptedOptions{}, wantALPN: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var port int
			var s *harness.ScriptedServer
			if tc.server != nil {
				o := *tc.server
				o.Cert = cert
				if s, err = harness.StartScriptedServer(o); err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				port = s.Port
			} else {
				port = serveRaw(t, oldServer)
			}
			d := &chain.Dialer{Host: "localhost", Port: port, Roots: harness.Pool(pki.Root), Negotiation: tc.mode, ConnectTimeout: 5 * time.Second}
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

func TestClientCertificate(t *testing.T) {
	pki, err := harness.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := harness.WritePEMFile(certFile, pki.Client.CertPEM); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pki.Client.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cc, err := chain.LoadClientCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := harness.StartScriptedServer(harness.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate), ClientCAs: []*harness.Cert{pki.ClientCA}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	d := &chain.Dialer{Host: "localhost", Port: s.Port, Roots: harness.Pool(pki.Root), ClientCert: cc, ConnectTimeout: 5 * time.Second}
	conn, err := d.Dial(context.Background())
	if err != nil {
		t.Fatalf("dial with a client certificate: %v", err)
	}
	conn.Write([]byte{0, 0, 0, 8, 0, 0, 0, 0}) // let the server finish its handshake
	conn.Close()

	d.ClientCert = nil
	if conn, err := d.Dial(context.Background()); err == nil {
		// TLS 1.3: the server's refusal arrives with the first read.
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Fatalf("without a client certificate: %v; want the server's 'certificate required'", err)
		}
	}
	s.Close()
	if got := s.ClientCertSubjects(); len(got) != 1 || !strings.Contains(got[0], "CN="+harness.CertUser) {
		t.Fatalf("server saw client certificates %q, want one for %s", got, harness.CertUser)
	}
}

func TestLoadClientCertificateRefusals(t *testing.T) {
	pki, err := harness.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile := filepath.Join(dir, "c.crt")
	harness.WritePEMFile(certFile, pki.Client.CertPEM)
	tests := []struct {
		name   string
		mode   os.FileMode
		key    []byte
		errHas string
	}{
		{name: "0600", mode: 0o600, key: pki.Client.KeyPEM},
		{name: "0400", mode: 0o400, key: pki.Client.KeyPEM},
		{name: "0700 (user execute is ignored)", mode: 0o700, key: pki.Client.KeyPEM},
		{name: "world-readable", mode: 0o644, key: pki.Client.KeyPEM, errHas: "chmod 0"},
		// The file is the current user's (root's too, when run as root):
		// libpq then wants 0600 or less; 0640 is allowed only for a
		// root-owned key read by another user.
		{name: "group-writable", mode: 0o660, key: pki.Client.KeyPEM, errHas: "chmod 0600"},
		{name: "group-readable", mode: 0o640, key: pki.Client.KeyPEM, errHas: "chmod 0600"},
		{name: "key of another certificate", mode: 0o600, key: pki.Leaf.KeyPEM, errHas: "private key does not match public key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keyFile := filepath.Join(dir, tc.name+".key")
			if err := os.WriteFile(keyFile, tc.key, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(keyFile, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := chain.LoadClientCertificate(certFile, keyFile)
			if tc.errHas == "" {
				if err != nil {
					t.Fatalf("got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("got %v; want %q", err, tc.errHas)
			}
		})
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
