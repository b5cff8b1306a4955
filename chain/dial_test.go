package chain_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

func TestDialVerifyFull(t *testing.T) {
	pki, err := harness.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	cnOnly, err := harness.IssueLeaf(pki.Intermediate, harness.LeafOptions{CommonName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	good := pki.Leaf.TLSCertificate(pki.Intermediate)
	tests := []struct {
		name       string
		host       string
		serverName string
		answer     harness.FakeAnswer
		kind       chain.Kind // for verification failures
		errHas     string     // "" means success
		wantSNI    string
		wantCN     bool
	}{
		{name: "good chain by name", host: "localhost", answer: harness.AnswerTLS(good, nil), wantSNI: "localhost"},
		{name: "good chain by IP sends no SNI", host: "127.0.0.1", answer: harness.AnswerTLS(good, nil), wantSNI: ""},
		{name: "server_name overrides the dialled IP", host: "127.0.0.1", serverName: "localhost", answer: harness.AnswerTLS(good, nil), wantSNI: "localhost"},
		{name: "CN-only certificate (libpq fallback)", host: "localhost", answer: harness.AnswerTLS(cnOnly.TLSCertificate(pki.Intermediate), nil), wantSNI: "localhost", wantCN: true},
		{name: "leaf without its intermediate", host: "localhost", answer: harness.AnswerTLS(pki.Leaf.TLSCertificate(), nil), kind: chain.KindUnknownAuthority, errHas: "unknown authority"},
		{name: "other CA", host: "localhost", answer: harness.AnswerTLS(pki.OtherLeaf.TLSCertificate(), nil), kind: chain.KindUnknownAuthority, errHas: "unknown authority"},
		{name: "wrong host name", host: "localhost", answer: harness.AnswerTLS(pki.WrongName.TLSCertificate(pki.Intermediate), nil), kind: chain.KindHostname, errHas: `valid for "wrong.example.invalid"`},
		{name: "right cert, wrong server_name", host: "127.0.0.1", serverName: "db.example.com", answer: harness.AnswerTLS(good, nil), kind: chain.KindHostname, errHas: `not valid for host name "db.example.com"`},
		{name: "expired", host: "localhost", answer: harness.AnswerTLS(pki.Expired.TLSCertificate(pki.Intermediate), nil), kind: chain.KindExpired, errHas: "expired at"},
		{name: "not yet valid", host: "localhost", answer: harness.AnswerTLS(pki.NotYetValid.TLSCertificate(pki.Intermediate), nil), kind: chain.KindNotYetValid, errHas: "not valid before"},
		{name: "self-signed", host: "localhost", answer: harness.AnswerTLS(pki.SelfSigned.TLSCertificate(), nil), kind: chain.KindSelfSigned, errHas: "self-signed"},
		{name: "TLS 1.1 only", host: "localhost", answer: harness.AnswerTLS(good, func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }), errHas: "TLS 1.2 or later"},
		{name: "answers N", host: "localhost", answer: harness.AnswerBytes([]byte("N")), errHas: "refused TLS"},
		{name: "answers E, not echoed", host: "localhost", answer: harness.AnswerBytes([]byte("EFATAL: attacker-chosen text")), errHas: "not shown"},
		{name: "garbage answer", host: "localhost", answer: harness.AnswerBytes([]byte("H")), errHas: "unexpected answer 0x48"},
		// 'S' then a fake AuthenticationOk, as a man in the middle would.
		{name: "bytes injected after S", host: "localhost", answer: harness.AnswerBytes([]byte("SR\x00\x00\x00\x08\x00\x00\x00\x00")), errHas: "unencrypted data where the TLS handshake should start"},
		{name: "closes without answering", host: "localhost", answer: func(net.Conn, *harness.FakeUpstream) net.Conn { return nil }, errHas: "closed the connection without answering"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := harness.StartFakeUpstream(tc.answer)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var sawCN bool
			d := &chain.Dialer{Host: tc.host, Port: s.Port, ServerName: tc.serverName, Roots: harness.Pool(pki.Root),
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
			if got := s.Received(); harness.HasStartupMessage(got) || (len(got) > 0 && got[0] != 0x16) {
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
