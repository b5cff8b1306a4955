package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// fakeUpstream is a scripted server reached through net.Pipe: Dial hands
// the proxy one end and runs script on the other.
type fakeUpstream struct {
	t      *testing.T
	script func(be *pgproto3.Backend, conn net.Conn)
	mu     sync.Mutex
	dials  int
	done   chan struct{}
}

func (f *fakeUpstream) dial(ctx context.Context) (net.Conn, error) {
	f.mu.Lock()
	f.dials++
	f.mu.Unlock()
	p, srv := net.Pipe()
	go func() {
		defer close(f.done)
		defer srv.Close()
		f.script(pgproto3.NewBackend(srv, srv), srv)
	}()
	return p, nil
}

func (f *fakeUpstream) dialCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dials
}

// startProxy runs a one-route proxy on 127.0.0.1:0 in front of up.
func startProxy(t *testing.T, mode ClientTLSMode, dial DialFunc) string {
	t.Helper()
	tcfg, err := SelfSignedTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{
		Routes: []Route{{
			Name: "test", Listen: []string{"127.0.0.1:0"}, UpstreamAddr: "upstream.test:5432",
			Dial: dial, ClientTLS: mode, TLSConfig: tcfg, StartupTimeout: 5 * time.Second,
		}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	t.Cleanup(func() { srv.Close() })
	return srv.Addrs()[0].String()
}

func dialProxy(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func startupBytes(t *testing.T, params map[string]string) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wireMessage is a pgproto3 message of either direction.
type wireMessage interface {
	Encode(dst []byte) ([]byte, error)
}

// encodeAll encodes msgs one after the other, as they go on the wire.
func encodeAll[M wireMessage](tb testing.TB, msgs ...M) []byte {
	tb.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			tb.Fatal(err)
		}
	}
	return b
}

func sslRequest() []byte {
	b, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	return b
}

// expectFatal reads messages until an ErrorResponse and checks it.
func expectFatal(t *testing.T, fe *pgproto3.Frontend, code, substr string) *pgproto3.ErrorResponse {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("want FATAL %s, got read error %v", code, err)
		}
		if er, ok := msg.(*pgproto3.ErrorResponse); ok {
			if er.Severity != "FATAL" || er.Code != code || !strings.Contains(er.Message, substr) {
				t.Fatalf("got %s %s %q, want FATAL %s containing %q", er.Severity, er.Code, er.Message, code, substr)
			}
			return er
		}
	}
}

func neverDial(t *testing.T) DialFunc {
	return func(context.Context) (net.Conn, error) {
		t.Error("upstream dialed, but the client should have been refused first")
		return nil, errors.New("no")
	}
}

func TestAdmissionRefusals(t *testing.T) {
	big := make([]byte, 8)
	binary.BigEndian.PutUint32(big[0:4], MaxStartupPacket+1)
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

// scramUpstream offers SCRAM with and without -PLUS and records what the
// client sent in its SASLInitialResponse (nil if nothing arrived).
func scramUpstream(t *testing.T, got chan<- []byte) *fakeUpstream {
	return &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
		if _, err := be.ReceiveStartupMessage(); err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}})
		_ = be.Flush()
		be.SetAuthType(pgproto3.AuthTypeSASL)
		msg, err := be.Receive()
		if err != nil {
			got <- nil
			return
		}
		init, _ := msg.(*pgproto3.SASLInitialResponse)
		if init == nil {
			got <- nil
			return
		}
		got <- append([]byte(init.AuthMechanism+" "), init.Data...)
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed for user \"alice\""})
		_ = be.Flush()
	}}
}

func TestAuthRemovesChannelBinding(t *testing.T) {
	tests := []struct {
		name     string
		useTLS   bool
		gs2      string
		wantCode string // "" means forwarded to the server
	}{
		{"plaintext client n flag is forwarded", false, "n,,n=,r=abc", ""},
		{"TLS client n flag is forwarded", true, "n,,n=,r=abc", ""},
		{"TLS client y flag gets the hint", true, "y,,n=,r=abc", "0A000"},
		{"plaintext client p flag gets the hint", false, "p=tls-server-end-point,,n=,r=abc", "0A000"},
		{"plaintext client y flag gets the hint (node-postgres with enableChannelBinding)", false, "y,,n=,r=abc", "0A000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan []byte, 1)
			up := scramUpstream(t, got)
			addr := startProxy(t, ClientTLSAllow, up.dial)
			var c net.Conn = dialProxy(t, addr)
			if tc.useTLS {
				c.Write(sslRequest())
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
					t.Fatalf("answer %q %v", b, err)
				}
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // like sslmode=require
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				c = tc
			}
			c.Write(startupBytes(t, map[string]string{"user": "alice"}))
			fe := pgproto3.NewFrontend(c, c)
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			sasl, ok := msg.(*pgproto3.AuthenticationSASL)
			if !ok {
				t.Fatalf("got %T", msg)
			}
			if len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
				t.Fatalf("client saw mechanisms %q, want only SCRAM-SHA-256", sasl.AuthMechanisms)
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(tc.gs2)})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if tc.wantCode != "" {
				er := expectFatal(t, fe, tc.wantCode, "channel binding cannot pass through")
				// The fixes: channel binding off in the client, or (on a
				// TLS leg) plaintext on the local hop.
				fixes := []string{"channel_binding=disable", "enableChannelBinding off"}
				if tc.useTLS {
					fixes = append(fixes, "sslmode=disable")
				}
				for _, f := range fixes {
					if !strings.Contains(er.Hint, f) {
						t.Errorf("hint %q does not name %q", er.Hint, f)
					}
				}
				if !tc.useTLS && strings.Contains(er.Hint, "sslmode=disable") {
					t.Errorf("hint %q suggests sslmode=disable to a client already in plaintext", er.Hint)
				}
				if g := <-got; g != nil {
					t.Errorf("server received %q, want nothing", g)
				}
				return
			}
			if g := <-got; string(g) != "SCRAM-SHA-256 "+tc.gs2 {
				t.Fatalf("server received %q", g)
			}
			// The server's own error reaches the client verbatim.
			expectFatal(t, fe, "28P01", "password authentication failed")
		})
	}
}

func TestCancelRequestForwardedVerbatim(t *testing.T) {
	got := make(chan []byte, 1)
	up := &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
		var hdr [4]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			got <- nil
			return
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		copy(b, hdr[:])
		if _, err := io.ReadFull(conn, b[4:]); err != nil {
			got <- nil
			return
		}
		got <- b
	}}
	addr := startProxy(t, ClientTLSAllow, up.dial)
	for _, keyLen := range []int{4, 32, 256} {
		key := bytes.Repeat([]byte{0xAB}, keyLen)
		req, err := (&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: key}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		c := dialProxy(t, addr)
		c.Write(req)
		// The proxy closes the client once the upstream has the request.
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-got:
			if !bytes.Equal(b, req) {
				t.Fatalf("key %d: upstream got %x, want %x", keyLen, b, req)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("cancel request never reached the upstream")
		}
		up.done = make(chan struct{})
	}
}

func TestRelayAfterAuthenticationIsByteExact(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB, not messages
	echoed := make(chan []byte, 1)
	up := &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
		if _, err := be.ReceiveStartupMessage(); err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		be.Send(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}})
		_ = be.Flush()
		be.SetAuthType(pgproto3.AuthTypeMD5Password)
		if msg, err := be.Receive(); err != nil {
			t.Errorf("upstream: %v", err)
			return
		} else if pm, ok := msg.(*pgproto3.PasswordMessage); !ok || pm.Password != "md5abc" {
			t.Errorf("upstream got %#v", msg)
		}
		be.Send(&pgproto3.AuthenticationOk{})
		_ = be.Flush()
		buf := make([]byte, len(payload))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Errorf("upstream read: %v", err)
		}
		echoed <- buf
		conn.Write(buf)
	}}
	addr := startProxy(t, ClientTLSAllow, up.dial)
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	fe := pgproto3.NewFrontend(c, c)
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.AuthenticationMD5Password); !ok {
		t.Fatalf("got %T", msg)
	}
	fe.Send(&pgproto3.PasswordMessage{Password: "md5abc"})
	fe.Flush()
	ok := make([]byte, 9)
	if _, err := io.ReadFull(c, ok); err != nil || ok[0] != 'R' {
		t.Fatalf("AuthenticationOk: %q %v", ok, err)
	}
	go c.Write(payload)
	back := make([]byte, len(payload))
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-echoed, payload) || !bytes.Equal(back, payload) {
		t.Fatal("relay altered bytes")
	}
}

func TestUpstreamDialErrorReachesClient(t *testing.T) {
	addr := startProxy(t, ClientTLSAllow, func(context.Context) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	})
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	expectFatal(t, pgproto3.NewFrontend(c, c), "08001", "cannot connect to upstream upstream.test:5432")
}

func TestStartupDeadlineFreesSilentClient(t *testing.T) {
	tcfg, _ := SelfSignedTLSConfig()
	srv, err := New(Config{Routes: []Route{{Listen: []string{"127.0.0.1:0"}, UpstreamAddr: "u:1",
		Dial: neverDial(t), TLSConfig: tcfg, StartupTimeout: 200 * time.Millisecond}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	defer srv.Close()
	c := dialProxy(t, srv.Addrs()[0].String())
	// Say nothing: the proxy must hang up on its own.
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("want the proxy to close the connection, got %v", err)
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

// TestAuthRequestAuthenticationOkLength: AuthenticationOk is forwarded
// only as the exact 8-byte message; a longer one is a protocol violation
// and nothing reaches the client.
func TestAuthRequestAuthenticationOkLength(t *testing.T) {
	tests := []struct {
		name     string
		raw      []byte
		wantDone bool
		wantErr  string
	}{
		{"exact", []byte("R\x00\x00\x00\x08\x00\x00\x00\x00"), true, ""},
		{"trailing bytes", []byte("R\x00\x00\x00\x0c\x00\x00\x00\x00ZZZZ"), false, "AuthenticationOk of 12 bytes instead of 8"},
		{"truncated", []byte("R\x00\x00\x00\x06\x00\x00"), false, "truncated authentication request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var client bytes.Buffer
			a := &authExchange{client: &client, upstream: &bytes.Buffer{}, mode: AuthPassthrough}
			done, err := a.authRequest(&message{typ: 'R', raw: tc.raw})
			if done != tc.wantDone {
				t.Errorf("done = %v, want %v", done, tc.wantDone)
			}
			if tc.wantErr == "" {
				if err != nil || !bytes.Equal(client.Bytes(), tc.raw) {
					t.Fatalf("err %v, client got %q; want the message forwarded", err, client.Bytes())
				}
				return
			}
			var ce *ClientError
			if !errors.As(err, &ce) || ce.Code() != codeProtocolViolation || !strings.Contains(ce.Message, tc.wantErr) {
				t.Fatalf("err = %v, want a 08P01 ClientError containing %q", err, tc.wantErr)
			}
			if client.Len() != 0 {
				t.Errorf("the client got %q", client.Bytes())
			}
		})
	}
}

// TestClientErrorTextIsOneField: a NUL or invalid UTF-8 in an error's text
// (an upstream's bytes quoted in it) cannot end the field early or reach
// the client undecodable. Found by FuzzAuthPhase.
func TestClientErrorTextIsOneField(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "pgverifyproxy: refused", "pgverifyproxy: refused"},
		{"NUL", "unknown message type: \x00", `unknown message type: \x00`},
		{"NUL then field-like bytes", "x\x00Dinjected\x00", `x\x00Dinjected\x00`},
		{"invalid UTF-8", "bad \xff\xfe byte", "bad \uFFFD byte"},
		{"valid UTF-8 kept", "café ✓", "café ✓"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ce := &ClientError{Reason: chain.ReasonVerification, Message: "pgverifyproxy: " + tc.in, Detail: tc.in, Hint: tc.in}
			b, err := ce.response()
			if err != nil {
				t.Fatal(err)
			}
			var er pgproto3.ErrorResponse
			if err := er.Decode(b[5:]); err != nil {
				t.Fatal(err)
			}
			if er.Message != "pgverifyproxy: "+tc.want || er.Detail != tc.want || er.Hint != tc.want {
				t.Errorf("decoded message %q detail %q hint %q, want %q", er.Message, er.Detail, er.Hint, tc.want)
			}
			if er.Code != "08006" || er.Severity != "FATAL" {
				t.Errorf("decoded code %q severity %q", er.Code, er.Severity)
			}
		})
	}
}

// nextMessage splits the first complete typed message (type byte, length,
// body) off b; ok is false when b does not start with one.
func nextMessage(b []byte) (msg, rest []byte, ok bool) {
	if len(b) < 5 {
		return nil, b, false
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if n < 4 || len(b) < 1+n {
		return nil, b, false
	}
	return b[:1+n], b[1+n:], true
}
