package integration

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// TestBadUpstreamsFailClosed points the proxy at hostile or broken
// upstreams. Each must give the client a FATAL error naming the cause, and
// the upstream must receive no startup message (so no user name, no
// password).
func TestBadUpstreamsFailClosed(t *testing.T) {
	tests := []struct {
		name    string
		answer  harness.FakeAnswer // nil: the real server
		server  string             // server_name, for the real server
		code    string
		cause   string // in the FATAL message
		hintHas string
	}{
		{name: "certificate from another CA", answer: harness.AnswerTLS(pki.OtherLeaf.TLSCertificate(), nil), code: "08006", cause: "certificate signed by unknown authority", hintHas: "intercepting"},
		{name: "TLS-intercepting middlebox with its own CA", answer: harness.AnswerTLS(pki.OtherLeaf.TLSCertificate(pki.OtherRoot), nil), code: "08006", cause: "unknown authority", hintHas: "--ca-file"},
		{name: "wrong host name", answer: harness.AnswerTLS(pki.WrongName.TLSCertificate(pki.Intermediate), nil), code: "08006", cause: "valid for wrong.example.invalid", hintHas: "--server-name"},
		{name: "real server under another name", server: "db.example.com", code: "08006", cause: `not valid for host name "db.example.com": it is valid for localhost, 127.0.0.1, ::1`},
		{name: "expired certificate", answer: harness.AnswerTLS(pki.Expired.TLSCertificate(pki.Intermediate), nil), code: "08006", cause: "expired at", hintHas: "renew"},
		{name: "not yet valid certificate", answer: harness.AnswerTLS(pki.NotYetValid.TLSCertificate(pki.Intermediate), nil), code: "08006", cause: "not valid before", hintHas: "clock"},
		{name: "self-signed certificate", answer: harness.AnswerTLS(pki.SelfSigned.TLSCertificate(), nil), code: "08006", cause: "self-signed", hintHas: "fingerprint"},
		{name: "server answers N", answer: harness.AnswerBytes([]byte("N")), code: "08006", cause: "refused TLS", hintHas: "stripping"},
		{name: "server sends bytes after S", answer: harness.AnswerBytes([]byte("SR\x00\x00\x00\x08\x00\x00\x00\x00")), code: "08006", cause: "unencrypted data", hintHas: "man-in-the-middle"},
		{name: "server answers E", answer: harness.AnswerBytes([]byte("EFATAL: unauthenticated words")), code: "08006", cause: "not shown", hintHas: ""},
		{name: "TLS 1.1 only", answer: harness.AnswerTLS(pki.Leaf.TLSCertificate(pki.Intermediate), func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }), code: "08006", cause: "TLS 1.2 or later"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := proxyOpts{serverName: tc.server}
			var fake *harness.FakeUpstream
			if tc.answer != nil {
				var err error
				if fake, err = harness.StartFakeUpstream(tc.answer); err != nil {
					t.Fatal(err)
				}
				defer fake.Close()
				o.port = fake.Port
			}
			p := startProxy(t, o)
			for _, leg := range []string{"disable", "require"} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=%s", p.port, harness.ScramUser, harness.ScramPassword, leg)
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
				if pe.Severity != "FATAL" || pe.Code != tc.code || !strings.Contains(pe.Message, tc.cause) || !strings.Contains(pe.Hint, tc.hintHas) {
					t.Fatalf("sslmode=%s: got %s %s %q hint %q; want FATAL %s with %q, hint with %q", leg, pe.Severity, pe.Code, pe.Message, pe.Hint, tc.code, tc.cause, tc.hintHas)
				}
				if strings.Contains(pe.Message, "unauthenticated words") {
					t.Fatalf("the unauthenticated server's text was echoed: %q", pe.Message)
				}
			}
			// What a psql user sees.
			r := runPsql(t, p.port, "user="+harness.ScramUser+" sslmode=disable", harness.ScramPassword, "select 1")
			if r.code == 0 || !strings.Contains(r.err, "FATAL") || !strings.Contains(r.err, tc.cause) {
				t.Fatalf("psql exit %d stderr %q; want FATAL naming %q", r.code, r.err, tc.cause)
			}
			if fake != nil {
				fake.Close()
				if fake.Conns() == 0 {
					t.Fatal("the fake upstream was never contacted: the test proves nothing")
				}
				if got := fake.Received(); harness.HasStartupMessage(got) {
					t.Fatalf("the bad upstream received a startup message (%d bytes: %q)", len(got), got)
				}
			}
		})
	}
}

func TestClientBytesAfterSSLRequestRefused(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	c := rawDial(t, p.addr)
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": harness.MD5User, "database": "postgres"}}).Encode(nil)
	// An injected plaintext startup message right behind the SSLRequest.
	if _, err := c.Write(append(ssl, startup...)); err != nil {
		t.Fatal(err)
	}
	var s [1]byte
	if _, err := io.ReadFull(c, s[:]); err != nil || s[0] != 'S' {
		t.Fatalf("answer %q %v", s, err)
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
	if n := p.dials.Load(); n != 0 {
		t.Fatalf("upstream dialed %d times for a refused client", n)
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
