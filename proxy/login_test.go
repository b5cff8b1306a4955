package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// slowWriteConn passes every write through at once and then returns late,
// like a writer that the scheduler parks right after its write(2): the
// server's answer can arrive before the write returns.
type slowWriteConn struct {
	net.Conn
	delay time.Duration
}

func (c *slowWriteConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	time.Sleep(c.delay)
	return n, err
}

// passwordServer is a TLS upstream on loopback that asks for a cleartext
// password, then answers each simple query with one row holding its text.
func passwordServer(t *testing.T) (addr string, serverCfg *tls.Config) {
	t.Helper()
	serverCfg = testTLSConfig(t)
	addr = testpki.Serve(t, func(c net.Conn) {
		tc := tls.Server(c, serverCfg)
		be := pgproto3.NewBackend(tc, tc)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		be.Send(&pgproto3.AuthenticationCleartextPassword{})
		if be.Flush() != nil {
			return
		}
		be.SetAuthType(pgproto3.AuthTypeCleartextPassword)
		if _, err := be.Receive(); err != nil {
			return
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15"})
		be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if be.Flush() != nil {
			return
		}
		for {
			msg, err := be.Receive()
			if err != nil {
				return
			}
			q, ok := msg.(*pgproto3.Query)
			if !ok {
				return
			}
			be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("echo"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}})
			be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte(q.String)}})
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		}
	})
	return addr, serverCfg
}

// TestLoginWithSlowUpstreamWritesLosesNoServerBytes is the regression test
// for the stall of issue 14: with the proxy's upstream writes returning
// more than 15 ms late, the login through pgconn left its background
// reader blocked in a Read on the upstream connection after Hijack, and
// that read took the answer to the client's first query. Each mode that
// logs in or relays must deliver that answer.
func TestLoginWithSlowUpstreamWritesLosesNoServerBytes(t *testing.T) {
	for _, mode := range []AuthMode{AuthRelay, AuthMode("auto"), AuthPassthrough} {
		t.Run(string(mode), func(t *testing.T) {
			addr, serverCfg := passwordServer(t)
			leaf, err := x509.ParseCertificate(serverCfg.Certificates[0].Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(leaf)
			dial := func(ctx context.Context) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
				if err != nil {
					return nil, err
				}
				cfg := &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS12, RootCAs: roots}
				tc := tls.Client(&slowWriteConn{Conn: c, delay: 40 * time.Millisecond}, cfg)
				if err := tc.HandshakeContext(ctx); err != nil {
					c.Close()
					return nil, err
				}
				return tc, nil
			}
			srv, err := New(Config{
				Routes: []Route{{Name: "slow", Listen: []string{"127.0.0.1:0"}, UpstreamAddr: addr, Dial: dial,
					ClientTLS: ClientTLSDisable, StartupTimeout: 10 * time.Second, Auth: mode}},
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

			c := dialProxy(t, srv.Addrs()[0].String())
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			fe := pgproto3.NewFrontend(c, c)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "alice", "database": "db"}})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if msg, err := fe.Receive(); err != nil {
				t.Fatal(err)
			} else if _, ok := msg.(*pgproto3.AuthenticationCleartextPassword); !ok {
				t.Fatalf("got %T, want AuthenticationCleartextPassword", msg)
			}
			fe.Send(&pgproto3.PasswordMessage{Password: "secret"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			waitReady(t, fe)
			// The answer to the first query must arrive, well within the
			// 10 s deadline (it takes a few 40 ms writes).
			fe.Send(&pgproto3.Query{String: "first query"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var row string
			for {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatalf("no answer to the first query after the login (server bytes lost): %v", err)
				}
				if dr, ok := msg.(*pgproto3.DataRow); ok {
					row = string(dr.Values[0])
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			if row != "first query" {
				t.Fatalf("row %q, want the query echoed", row)
			}
		})
	}
}

// waitReady reads server messages until ReadyForQuery; an ErrorResponse or a
// read error fails the test.
func waitReady(t *testing.T, fe *pgproto3.Frontend) {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("waiting for ReadyForQuery: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return
		case *pgproto3.ErrorResponse:
			t.Fatalf("server error while logging in: %s %s", m.Code, m.Message)
		}
	}
}

// loginCase is one authentication exchange through a proxy in front of the
// scripted server of internal/testpki (real TLS, SCRAM with
// tls-server-end-point binding checked against its own certificate).
type loginCase struct {
	name   string
	server testpki.ScriptedOptions // Cert is filled in
	mode   AuthMode
	cb     string
	stored string
	// stale is a cached stored password the server refuses: the first
	// login uses it, StoredRejected drops it, and the proxy logs in once
	// more with stored on a second connection.
	stale     string
	clientTLS bool
	// password is what the client answers to a password request.
	password string
	// wantAsked: the client is asked for its password in clear.
	wantAsked bool
	// wantCode is the SQLSTATE of the FATAL the client gets; "" means it
	// logs in and its query is answered.
	wantCode, wantMessage string
	// wantMech and wantGS2 are what the server saw of the SCRAM login
	// ("" when none).
	wantMech, wantGS2 string
	// mechRacy: the proxy ends the exchange mid-way, and whether the
	// server recorded it by then is a race; its mechanism is not checked.
	mechRacy bool
}

func TestProxyLogin(t *testing.T) {
	const pw = "correct horse"
	scram := testpki.ScriptedOptions{SCRAMPassword: pw}
	tests := []loginCase{
		{name: "auto: PLUS offered to a TLS client, the proxy binds its own login", server: scram, mode: AuthAuto, clientTLS: true, password: pw,
			wantAsked: true, wantMech: scramSHA256Plus, wantGS2: "p=tls-server-end-point,,"},
		{name: "auto: a forged server signature is refused", server: testpki.ScriptedOptions{SCRAMPassword: pw, SCRAMSignature: "forge"}, mode: AuthAuto, clientTLS: true, password: pw,
			wantAsked: true, wantCode: codeInvalidAuthorization, wantMessage: "did not prove that it knows the password", wantMech: scramSHA256Plus},
		{name: "auto: AuthenticationOk without the server signature is refused", server: testpki.ScriptedOptions{SCRAMPassword: pw, SCRAMSignature: "omit"}, mode: AuthAuto, clientTLS: true, password: pw,
			wantAsked: true, wantCode: codeInvalidAuthorization, wantMessage: "AuthenticationOk before completing SCRAM", wantMech: scramSHA256Plus},
		{name: "auto: the wrong password gets the server's own error", server: scram, mode: AuthAuto, clientTLS: true, password: "wrong",
			wantAsked: true, wantCode: "28P01", wantMessage: "password authentication failed", wantMech: scramSHA256Plus},
		{name: "auto: a trust server never makes the proxy ask", server: testpki.ScriptedOptions{}, mode: AuthAuto, clientTLS: true},
		{name: "auto: md5 passes through to the client", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "md5"}, mode: AuthAuto, clientTLS: true, password: pw},
		{name: "auto: a stored password answers for the client", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "password"}, mode: AuthAuto, stored: pw},
		{name: "auto: channel_binding require with PLUS binds", server: scram, mode: AuthAuto, cb: "require", clientTLS: true, password: pw,
			wantAsked: true, wantMech: scramSHA256Plus, wantGS2: "p=tls-server-end-point,,"},
		{name: "auto: channel_binding require refuses a trust login", server: testpki.ScriptedOptions{}, mode: AuthAuto, cb: "require", clientTLS: true,
			wantCode: codeInvalidAuthorization, wantMessage: "without SCRAM-SHA-256-PLUS"},
		{name: "auto: channel_binding require with a stored password refuses a trust login", server: testpki.ScriptedOptions{}, mode: AuthAuto, cb: "require", stored: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "without SCRAM-SHA-256-PLUS"},
		{name: "auto: channel_binding require refuses md5 instead of passing it on", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "md5"}, mode: AuthAuto, cb: "require", clientTLS: true, password: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "md5 password, which cannot be bound"},
		{name: "auto: channel_binding require refuses cleartext instead of passing it on", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "password"}, mode: AuthAuto, cb: "require", clientTLS: true, password: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "cleartext password, which cannot be bound"},
		{name: "auto: channel_binding require with a stored password refuses md5", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "md5"}, mode: AuthAuto, cb: "require", stored: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "md5 password, which cannot be bound"},
		{name: "auto: channel_binding require without PLUS is refused", server: testpki.ScriptedOptions{SCRAMPassword: pw, SCRAMNoPlus: true}, mode: AuthAuto, cb: "require", clientTLS: true, password: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "did not offer SCRAM-SHA-256-PLUS"},
		{name: "auto: channel_binding require and a plaintext client", server: scram, mode: AuthAuto, cb: "require", password: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "connected without TLS"},
		{name: "relay: a server asking for 2^31-1 SCRAM iterations is refused", server: testpki.ScriptedOptions{SCRAMPassword: pw, SCRAMIterations: 1<<31 - 1}, mode: AuthRelay, password: pw,
			wantAsked: true, wantCode: codeProtocolViolation, wantMessage: "2147483647 iterations, more than the proxy computes", mechRacy: true},
		{name: "relay: 600,000 SCRAM iterations are computed", server: testpki.ScriptedOptions{SCRAMPassword: pw, SCRAMIterations: 600_000}, mode: AuthRelay, password: pw,
			wantAsked: true, wantMech: scramSHA256Plus, wantGS2: "p=tls-server-end-point,,"},
		{name: "relay: a cached stored password the server refuses is replaced, unseen by the client", server: scram, mode: AuthRelay, stale: "expired token", stored: pw,
			wantMech: scramSHA256Plus},
		{name: "auto: a cached stored password the server refuses is replaced (md5)", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "md5"}, mode: AuthAuto, stale: "expired token", stored: pw},
		{name: "relay: md5 for a plaintext client", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "md5"}, mode: AuthRelay, password: pw, wantAsked: true},
		{name: "relay: cleartext for a plaintext client", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "password"}, mode: AuthRelay, password: pw, wantAsked: true},
		{name: "relay: PLUS for a plaintext client", server: scram, mode: AuthRelay, password: pw, wantAsked: true, wantMech: scramSHA256Plus, wantGS2: "p=tls-server-end-point,,"},
		{name: "relay: channel_binding require with PLUS", server: scram, mode: AuthRelay, cb: "require", password: pw, wantAsked: true, wantMech: scramSHA256Plus, wantGS2: "p=tls-server-end-point,,"},
		{name: "relay: channel_binding require without PLUS is refused before the password", server: testpki.ScriptedOptions{SCRAMPassword: pw, SCRAMNoPlus: true}, mode: AuthRelay, cb: "require", password: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "did not offer SCRAM-SHA-256-PLUS"},
		{name: "relay: channel_binding require refuses md5", server: testpki.ScriptedOptions{Password: pw, PasswordAuth: "md5"}, mode: AuthRelay, cb: "require", password: pw,
			wantCode: codeInvalidAuthorization, wantMessage: "md5 password, which cannot be bound"},
		{name: "relay: channel_binding require refuses a trust login", server: testpki.ScriptedOptions{}, mode: AuthRelay, cb: "require",
			wantCode: codeInvalidAuthorization, wantMessage: "without SCRAM-SHA-256-PLUS"},
		{name: "relay: channel_binding disable sends GS2 flag n", server: scram, mode: AuthRelay, cb: "disable", password: pw, wantAsked: true, wantMech: scramSHA256, wantGS2: "n,,"},
		{name: "relay: no PLUS offered on a TLS link sends GS2 flag y", server: testpki.ScriptedOptions{SCRAMPassword: pw, SCRAMNoPlus: true}, mode: AuthRelay, password: pw, wantAsked: true, wantMech: scramSHA256, wantGS2: "y,,"},
	}
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.server
			opts.Cert = pki.Leaf.TLSCertificate(pki.Intermediate)
			s, err := testpki.StartScriptedServer(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			var dials atomic.Int32
			scripted := scriptedDial(pki, s.Addr)
			dial := func(ctx context.Context) (net.Conn, error) {
				dials.Add(1)
				return scripted(ctx)
			}
			route := Route{Name: "login", Listen: []string{"127.0.0.1:0"}, UpstreamAddr: s.Addr, Dial: dial,
				TLSConfig: testTLSConfig(t), ClientTLSGenerated: true, StartupTimeout: 10 * time.Second,
				Auth: tc.mode, ChannelBinding: tc.cb}
			if tc.stored != "" {
				route.StoredPassword = func() ([]byte, error) { return []byte(tc.stored), nil }
			}
			wantDials := int32(1)
			if tc.stale != "" {
				var mu sync.Mutex
				cached := tc.stale
				route.StoredPassword = func() ([]byte, error) {
					mu.Lock()
					defer mu.Unlock()
					if cached != "" {
						return []byte(cached), nil
					}
					return []byte(tc.stored), nil
				}
				route.StoredRejected = func() bool {
					mu.Lock()
					defer mu.Unlock()
					had := cached != ""
					cached = ""
					return had
				}
				wantDials = 2
			}
			srv, err := New(Config{Routes: []Route{route}, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Listen(); err != nil {
				t.Fatal(err)
			}
			go srv.Serve(context.Background())
			t.Cleanup(func() { srv.Close() })

			var c net.Conn = dialProxy(t, srv.Addrs()[0].String())
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.clientTLS {
				c = clientTLSConn(t, c)
			}
			fe := pgproto3.NewFrontend(c, c)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "alice", "database": "db"}})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			asked, gotOK := false, false
			var fatal *pgproto3.ErrorResponse
		login:
			for {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatalf("during the login: %v", err)
				}
				switch m := msg.(type) {
				case *pgproto3.AuthenticationCleartextPassword:
					asked = true
					fe.Send(&pgproto3.PasswordMessage{Password: tc.password})
				case *pgproto3.AuthenticationMD5Password:
					fe.Send(&pgproto3.PasswordMessage{Password: md5Password([]byte(tc.password), "alice", m.Salt[:])})
				case *pgproto3.AuthenticationOk:
					gotOK = true
				case *pgproto3.AuthenticationSASL:
					t.Fatalf("the client was offered SASL %v", m.AuthMechanisms)
				case *pgproto3.ErrorResponse:
					fatal = m
					break login
				case *pgproto3.ReadyForQuery:
					break login
				}
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
			}
			if asked != tc.wantAsked {
				t.Errorf("client asked for its password: %v, want %v", asked, tc.wantAsked)
			}
			if got := dials.Load(); got != wantDials {
				t.Errorf("%d upstream connections, want %d", got, wantDials)
			}
			ex := s.SCRAMExchanges()
			var mech, gs2 string
			if len(ex) > 0 {
				mech, gs2 = ex[0].Mechanism, ex[0].GS2Header
				// (No binding data: the proxy stopped before its
				// client-final-message.)
				if mech == scramSHA256Plus && ex[0].BindingData != nil && !ex[0].BindingOK {
					t.Errorf("the server saw binding data that is not its certificate's hash")
				}
			}
			if !tc.mechRacy && (mech != tc.wantMech || (tc.wantGS2 != "" && gs2 != tc.wantGS2)) {
				t.Errorf("server saw SCRAM %q with GS2 header %q, want %q %q", mech, gs2, tc.wantMech, tc.wantGS2)
			}
			if tc.wantCode != "" {
				if fatal == nil {
					t.Fatalf("logged in; want FATAL %s %q", tc.wantCode, tc.wantMessage)
				}
				if fatal.Code != tc.wantCode || !strings.Contains(fatal.Message, tc.wantMessage) {
					t.Fatalf("FATAL %s %q; want %s %q", fatal.Code, fatal.Message, tc.wantCode, tc.wantMessage)
				}
				if gotOK {
					t.Fatal("the client got AuthenticationOk before the refusal")
				}
				return
			}
			if fatal != nil {
				t.Fatalf("FATAL %s %q", fatal.Code, fatal.Message)
			}
			fe.Send(&pgproto3.Query{String: "select after login"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			for {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatalf("no answer after the login: %v", err)
				}
				if dr, ok := msg.(*pgproto3.DataRow); ok && string(dr.Values[0]) != "select after login" {
					t.Fatalf("row %q", dr.Values[0])
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
		})
	}
}

// clientTLSConn runs a client's SSLRequest and TLS handshake on c.
func clientTLSConn(t *testing.T, c net.Conn) net.Conn {
	t.Helper()
	if _, err := c.Write(sslRequest()); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", b, err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the proxy's generated certificate, as sslmode=require
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

// TestStoredPasswordFailureOpensNoUpstream: a relay route whose stored
// password cannot be had (a failing password_command) refuses the client
// with the reason before any upstream connection: no login attempt.
func TestStoredPasswordFailureOpensNoUpstream(t *testing.T) {
	up := &fakeUpstream{t: t, done: make(chan struct{}), script: func(*pgproto3.Backend, net.Conn) {}}
	srv, err := New(Config{
		Routes: []Route{{Name: "stored", Listen: []string{"127.0.0.1:0"}, UpstreamAddr: "upstream.test:5432", Dial: up.dial,
			ClientTLS: ClientTLSDisable, Auth: AuthRelay,
			StoredPassword: func() ([]byte, error) { return nil, errors.New("password_command failed (exit status 3)") }}},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	t.Cleanup(func() { srv.Close() })
	c := dialProxy(t, srv.Addrs()[0].String())
	if _, err := c.Write(startupBytes(t, map[string]string{"user": "alice"})); err != nil {
		t.Fatal(err)
	}
	e := expectFatal(t, pgproto3.NewFrontend(c, c), codeInvalidAuthorization, "stored password cannot be read: password_command failed (exit status 3)")
	if !strings.Contains(e.Hint, "password_command") {
		t.Errorf("hint %q", e.Hint)
	}
	if n := up.dialCount(); n != 0 {
		t.Fatalf("%d upstream connections, want none", n)
	}
}

func TestAskPassword(t *testing.T) {
	tests := []struct {
		name    string
		client  []byte
		want    string
		wantErr string
	}{
		{"password", mustEncode(t, &pgproto3.PasswordMessage{Password: "s3cret"}), "s3cret", ""},
		{"terminate", mustEncode(t, &pgproto3.Terminate{}), "", "client closed"},
		{"eof", nil, "", "client closed"},
		{"query instead", mustEncode(t, &pgproto3.Query{String: "select 1"}), "", "expected a password message"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, p := net.Pipe()
			defer c.Close()
			go func() {
				buf := make([]byte, 9)
				p.Read(buf) // AuthenticationCleartextPassword
				p.Write(tc.client)
				p.Close()
			}()
			pw, err := askPassword(c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want %q", pw, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(pw) != tc.want {
				t.Fatalf("got %q, %v", pw, err)
			}
		})
	}
}

func mustEncode(t *testing.T, m pgproto3.FrontendMessage) []byte {
	t.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
