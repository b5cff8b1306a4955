package proxy

import (
	"bytes"
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestRelayListenerRules(t *testing.T) {
	stored := func() ([]byte, error) { return []byte("x"), nil }
	tests := []struct {
		name   string
		listen []string
		mode   ClientTLSMode
		stored bool
		// generated: the client TLS certificate is the in-memory one.
		generated bool
		listeners []net.Listener
		wantErr   string
	}{
		{name: "loopback v4", listen: []string{"127.0.0.1:5432"}},
		{name: "loopback v6", listen: []string{"[::1]:5432"}},
		{name: "localhost", listen: []string{"localhost:5432"}},
		{name: "unix socket", listen: []string{"unix:/run/pg"}},
		{name: "all interfaces in plaintext", listen: []string{"127.0.0.1:5432", "0.0.0.0:5432"}, wantErr: "0.0.0.0:5432 is not loopback: set client_tls: require"},
		{name: "empty host means all interfaces", listen: []string{":5432"}, wantErr: ":5432 is not loopback"},
		{name: "all interfaces with TLS required", listen: []string{"0.0.0.0:5432"}, mode: ClientTLSRequire},
		{name: "stored password on loopback", listen: []string{"127.0.0.1:5432", "unix:/run/pg"}, stored: true},
		{name: "stored password on all interfaces", listen: []string{"0.0.0.0:5432"}, mode: ClientTLSRequire, stored: true, wantErr: "a stored password lets anyone who reaches the listener in"},
		{name: "all interfaces with the generated certificate", listen: []string{"0.0.0.0:5432"}, mode: ClientTLSRequire, generated: true, wantErr: "clients cannot verify it"},
		{name: "a passed-in listener of unknown kind", listeners: []net.Listener{oddListener{}}, wantErr: "odd:1 is not loopback"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Route{Name: "r", Listen: tc.listen, Listeners: tc.listeners, Dial: neverDial(t), ClientTLS: tc.mode, TLSConfig: testTLSConfig(t),
				ClientTLSGenerated: tc.generated, Auth: AuthRelay}
			if tc.mode == "" {
				r.ClientTLS = ClientTLSAllow
			}
			if tc.stored {
				r.StoredPassword = stored
			}
			err := r.validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v; want %q", err, tc.wantErr)
			}
		})
	}
	r := Route{Name: "p", Listen: []string{"127.0.0.1:1"}, Dial: neverDial(t), ClientTLS: ClientTLSDisable, StoredPassword: stored}
	if err := r.validate(); err == nil || !strings.Contains(err.Error(), "needs auth relay") {
		t.Fatalf("stored password in passthrough: %v", err)
	}
}

func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	c, err := SelfSignedTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHandOverKeepsWhatTheClientMustSee(t *testing.T) {
	enc := func(msgs ...pgproto3.BackendMessage) []byte { return encodeAll(t, msgs...) }
	after := enc(&pgproto3.AuthenticationOk{}, &pgproto3.ParameterStatus{Name: "server_version", Value: "15"},
		&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	tests := []struct {
		name, mech string
		before     []byte
		wantPrefix []byte
	}{
		{"SCRAM", "SCRAM-SHA-256", enc(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}},
			&pgproto3.AuthenticationSASLContinue{Data: []byte("r=x")}, &pgproto3.AuthenticationSASLFinal{Data: []byte("v=y")}), nil},
		{"md5", "md5", enc(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}), nil},
		{"cleartext", "password", enc(&pgproto3.AuthenticationCleartextPassword{}), nil},
		{"trust", "trust", nil, nil},
		{"notice and NegotiateProtocolVersion before auth are kept", "md5",
			enc(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: []string{"_pq_.x"}},
				&pgproto3.NoticeResponse{Severity: "NOTICE", Message: "hello"}, &pgproto3.AuthenticationMD5Password{}),
			enc(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: []string{"_pq_.x"}},
				&pgproto3.NoticeResponse{Severity: "NOTICE", Message: "hello"})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, mech, err := handOver(append(append([]byte(nil), tc.before...), after...))
			if err != nil || mech != tc.mech {
				t.Fatalf("mechanism %q, %v; want %q", mech, err, tc.mech)
			}
			if want := append(append([]byte(nil), tc.wantPrefix...), after...); !bytes.Equal(out, want) {
				t.Fatalf("client gets %x\nwant %x", out, want)
			}
		})
	}
	if _, _, err := handOver(enc(&pgproto3.AuthenticationMD5Password{})); err == nil {
		t.Fatal("a login without AuthenticationOk was handed over")
	}
	// A message the login read only in part, after AuthenticationOk, goes
	// on raw: the relay continues the stream.
	if out, _, err := handOver(after[:len(after)-2]); err != nil || !bytes.Equal(out, after[:len(after)-2]) {
		t.Fatalf("partial message after AuthenticationOk: %x, %v", out, err)
	}
	if _, _, err := handOver(enc(&pgproto3.AuthenticationMD5Password{})[:6]); err == nil {
		t.Fatal("a stream truncated before AuthenticationOk was handed over")
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

// oddListener has an address that is neither TCP nor unix.
type oddListener struct{ net.Listener }

type oddAddr struct{}

func (oddAddr) Network() string { return "odd" }
func (oddAddr) String() string  { return "odd:1" }

func (oddListener) Addr() net.Addr { return oddAddr{} }
