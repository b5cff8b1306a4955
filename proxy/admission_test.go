package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestAdmissionRefusals(t *testing.T) {
	big := make([]byte, 8)
	binary.BigEndian.PutUint32(big[0:4], maxStartupPacket+1)
	binary.BigEndian.PutUint32(big[4:8], pgproto3.ProtocolVersion30)
	tiny := []byte{0, 0, 0, 4}
	v2 := []byte{0, 0, 0, 8, 0, 2, 0, 0}
	tests := []struct {
		name   string
		mode   ClientTLSMode
		send   [][]byte
		answer string // bytes expected before the error, e.g. "N"
		code   string
		substr string
	}{
		{"oversized startup packet", ClientTLSAllow, [][]byte{big}, "", "08P01", "invalid length of startup packet"},
		{"undersized startup packet", ClientTLSAllow, [][]byte{tiny}, "", "08P01", "invalid length of startup packet"},
		{"protocol 2", ClientTLSAllow, [][]byte{v2}, "", "0A000", "unsupported frontend protocol"},
		{"plaintext on a require listener", ClientTLSRequire, [][]byte{startupBytes(t, map[string]string{"user": "u"})}, "", "28000", "requires TLS"},
		{"bytes after SSLRequest", ClientTLSAllow, [][]byte{append(sslRequest(), startupBytes(t, map[string]string{"user": "u"})...)}, "S", "08P01", "received unencrypted data after SSL request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := startProxy(t, tc.mode, neverDial(t))
			c := dialProxy(t, addr)
			for _, b := range tc.send {
				if _, err := c.Write(b); err != nil {
					t.Fatal(err)
				}
			}
			if tc.answer != "" {
				got := make([]byte, len(tc.answer))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != tc.answer {
					t.Fatalf("answer %q, %v; want %q", got, err, tc.answer)
				}
			}
			expectFatal(t, pgproto3.NewFrontend(c, c), tc.code, tc.substr)
		})
	}
}

func TestGSSENCAndSSLDisableAnswerN(t *testing.T) {
	up := &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		if sm, ok := msg.(*pgproto3.StartupMessage); !ok || sm.Parameters["user"] != "alice" {
			t.Errorf("upstream got %#v", msg)
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		_ = be.Flush()
	}}
	addr := startProxy(t, ClientTLSDisable, up.dial)
	c := dialProxy(t, addr)
	gss, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)
	for _, req := range [][]byte{gss, sslRequest()} {
		c.Write(req)
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("answer %q %v, want N", b, err)
		}
	}
	c.Write(startupBytes(t, map[string]string{"user": "alice", "database": "db"}))
	fe := pgproto3.NewFrontend(c, c)
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
		t.Fatalf("got %T, want AuthenticationOk", msg)
	}
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.ReadyForQuery); !ok {
		t.Fatalf("got %T, want ReadyForQuery", msg)
	}
}

// TestDirectTLSFromClient covers libpq 17's sslnegotiation=direct toward
// the proxy: a TLS handshake as the very first bytes, ALPN "postgresql"
// required, as a PostgreSQL 17 server requires it.
func TestDirectTLSFromClient(t *testing.T) {
	tests := []struct {
		name    string
		mode    ClientTLSMode
		alpn    []string
		wantErr string // "" means the startup reaches the upstream
		wantRaw bool   // the handshake itself fails
	}{
		{name: "ALPN postgresql", mode: ClientTLSAllow, alpn: []string{"postgresql"}},
		{name: "client_tls=require", mode: ClientTLSRequire, alpn: []string{"postgresql"}},
		{name: "no ALPN", mode: ClientTLSAllow, wantErr: `without the ALPN protocol "postgresql"`},
		{name: "other ALPN", mode: ClientTLSAllow, alpn: []string{"h2"}, wantRaw: true},
		{name: "client_tls=disable", mode: ClientTLSDisable, alpn: []string{"postgresql"}, wantRaw: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan map[string]string, 1)
			up := &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
				m, err := be.ReceiveStartupMessage()
				if sm, ok := m.(*pgproto3.StartupMessage); ok && err == nil {
					got <- sm.Parameters
				}
				be.Send(&pgproto3.AuthenticationOk{})
				be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
				be.Flush()
			}}
			addr := startProxy(t, tc.mode, up.dial)
			raw := dialProxy(t, addr)
			tc2 := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: tc.alpn})
			if err := tc2.Handshake(); err != nil {
				if !tc.wantRaw {
					t.Fatalf("handshake: %v", err)
				}
				if up.dialCount() != 0 {
					t.Fatal("the upstream was dialled")
				}
				return
			}
			if tc.wantRaw {
				// TLS 1.3 reports the server's refusal on the first read.
				if _, err := tc2.Read(make([]byte, 1)); err == nil {
					t.Fatal("handshake and read succeeded; want a refusal")
				}
				return
			}
			tc2.Write(startupBytes(t, map[string]string{"user": "app", "database": "db"}))
			fe := pgproto3.NewFrontend(tc2, tc2)
			if tc.wantErr != "" {
				expectFatal(t, fe, "08P01", tc.wantErr)
				if up.dialCount() != 0 {
					t.Fatal("the upstream was dialled")
				}
				return
			}
			msg, err := fe.Receive()
			if _, ok := msg.(*pgproto3.AuthenticationOk); !ok || err != nil {
				t.Fatalf("got %T %v; want AuthenticationOk", msg, err)
			}
			if p := <-got; p["user"] != "app" {
				t.Fatalf("upstream got %v", p)
			}
			if a := tc2.ConnectionState().NegotiatedProtocol; a != "postgresql" {
				t.Fatalf("ALPN %q", a)
			}
		})
	}
}
