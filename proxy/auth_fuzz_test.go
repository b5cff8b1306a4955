package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// fzSecret is the password of the auth-phase fuzz seeds. It holds a control
// byte, so no text the proxy writes itself contains it by chance.
const fzSecret = "hunter2\x01pw-fuzz"

// fzRecConn records, in one ordered log shared by both sides, what the
// proxy wrote to the client and to the upstream.
type fzRecConn struct {
	*fzConn
	side byte // 'c' client, 'u' upstream
	log  *[]fzWrite
}

type fzWrite struct {
	side byte
	b    []byte
}

func (c *fzRecConn) Write(b []byte) (int, error) {
	*c.log = append(*c.log, fzWrite{c.side, append([]byte(nil), b...)})
	return c.fzConn.Write(b)
}

// authSeeds are upstream scripts and client answers of real exchanges.
func authSeeds(tb testing.TB) map[string][2][]byte {
	be := func(msgs ...pgproto3.BackendMessage) []byte { return encodeAll(tb, msgs...) }
	fe := func(msgs ...pgproto3.FrontendMessage) []byte { return encodeAll(tb, msgs...) }
	ready := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "17.2"},
		&pgproto3.BackendKeyData{ProcessID: 77, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}}
	okThen := func(first ...pgproto3.BackendMessage) []byte { return be(append(first, ready...)...) }
	pw := fe(&pgproto3.PasswordMessage{Password: fzSecret})
	sasl := &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}}
	saslInit := func(flag string) []byte {
		return fe(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(flag + ",,n=,r=rOprNGfwEbeRWgbNEkqO")})
	}
	fatal := be(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28P01",
		Message: `password authentication failed for user "alice"`})
	return map[string][2][]byte{
		"trust":             {okThen(), nil},
		"cleartext":         {okThen(&pgproto3.AuthenticationCleartextPassword{}), pw},
		"md5":               {okThen(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}), fe(&pgproto3.PasswordMessage{Password: "md5" + strings.Repeat("0", 32)})},
		"cleartext_refused": {be(&pgproto3.AuthenticationCleartextPassword{}, &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28P01", Message: "password authentication failed"}), pw},
		"scram": {okThen(sasl,
			&pgproto3.AuthenticationSASLContinue{Data: []byte("r=rOprNGfwEbeRWgbNEkqOsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")},
			&pgproto3.AuthenticationSASLFinal{Data: []byte("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")}),
			fe(&pgproto3.SASLResponse{Data: saslInit("n")[5:]}, &pgproto3.SASLResponse{Data: []byte("c=biws,r=rOprNGfwEbeRWgbNEkqOsrv,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")})},
		"scram_init":                 {okThen(sasl, &pgproto3.AuthenticationSASLContinue{Data: []byte("r=x,s=eA==,i=4096")}, &pgproto3.AuthenticationSASLFinal{Data: []byte("v=eA==")}), bytes.Join([][]byte{saslInit("n"), fe(&pgproto3.SASLResponse{Data: []byte("c=biws,r=x,p=eA==")})}, nil)},
		"scram_channel_binding_y":    {be(sasl), saslInit("y")},
		"scram_channel_binding_p":    {be(sasl), fe(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=x")})},
		"plus_only":                  {be(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS"}}), nil},
		"notice_negotiate":           {okThen(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: []string{"_pq_.x"}}, &pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "hi"}), nil},
		"server_error":               {fatal, nil},
		"gss":                        {be(&pgproto3.AuthenticationGSS{}), nil},
		"client_terminate":           {okThen(&pgproto3.AuthenticationCleartextPassword{}), fe(&pgproto3.Terminate{})},
		"client_wrong_message":       {okThen(&pgproto3.AuthenticationCleartextPassword{}), fe(&pgproto3.Query{String: fzSecret})},
		"unknown_method":             {[]byte{'R', 0, 0, 0, 8, 0, 0, 0, 2}, nil},
		"unexpected_message":         {be(&pgproto3.ReadyForQuery{TxStatus: 'I'}), nil},
		"truncated":                  {okThen()[:6], nil},
		"huge_length":                {[]byte{'R', 0x7f, 0xff, 0xff, 0xff}, nil},
		"ok_then_relay_bytes":        {append(okThen(), 'T', 0, 0, 0, 6, 0, 0), nil},
		"cleartext_password_garbage": {okThen(&pgproto3.AuthenticationCleartextPassword{}), []byte("p\x00\x00\x00\x05")},
	}
}

// FuzzAuthPhase fuzzes the authentication phase with a scripted upstream
// (the server's messages) and a scripted client (its answers). flags bit 0
// selects auth relay (the proxy logs in itself), bit 3 auth auto (else
// passthrough); bit 1 is a TLS client leg, bit 2 channel binding require.
// The upstream link is "TLS" for auto and relay (a verified certificate to
// bind to), so auto takes over SCRAM-SHA-256-PLUS offers from TLS clients.
// It checks that:
//   - nothing panics and every execution ends;
//   - success comes only after an AuthenticationOk that came from the
//     upstream was forwarded last, with nothing read past it (what follows
//     belongs to the raw relay);
//   - no AuthenticationSASL reaches the client offering a -PLUS mechanism
//     or no mechanism; only 'p' messages reach the upstream, and a
//     SASLInitialResponse asking for channel binding only when the proxy
//     logs in itself;
//   - every failure is an error of a known kind, a *clientError with a
//     SQLSTATE and a FATAL ErrorResponse, and errUpstreamRejected only
//     after the server's ErrorResponse was forwarded as is;
//   - the password the client sent never appears in an error unless the
//     fuzzed server wrote it.
func FuzzAuthPhase(f *testing.F) {
	seeds := map[string][]any{}
	for name, s := range authSeeds(f) {
		for _, fl := range []byte{0, 2, 1, 5, 10, 14} {
			if fl&9 != 0 && (name == "md5" || name == "client_wrong_message") {
				continue
			}
			client := s[1]
			if fl&1 == 1 || (fl&8 != 0 && fl&2 != 0 && strings.HasPrefix(name, "scram")) {
				// The proxy logs in: the client answers its cleartext request.
				client = append(authSeedsPassword(f), client...)
			}
			seeds[name+"_"+strconv.Itoa(int(fl))] = []any{fl, s[0], client}
			f.Add(fl, s[0], client)
		}
	}
	writeSeeds(f, seeds)
	f.Fuzz(func(t *testing.T, flags byte, upstream, client []byte) {
		fuzzExchange(t, flags, upstream, client)
	})
}

func authSeedsPassword(tb testing.TB) []byte {
	b, err := (&pgproto3.PasswordMessage{Password: fzSecret}).Encode(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// passwords are the cleartext passwords in the client's 'p' messages.
func passwords(client []byte) []string {
	var out []string
	if strings.Contains(string(client), fzSecret) {
		out = append(out, fzSecret)
	}
	for m, rest, ok := nextMessage(client); ok; m, rest, ok = nextMessage(rest) {
		if m[0] != 'p' {
			continue
		}
		body := m[5:]
		if i := bytes.IndexByte(body, 0); i >= 0 {
			body = body[:i]
		}
		// Only passwords no proxy text can hold by chance.
		if len(body) >= 8 && bytes.ContainsFunc(body, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			out = append(out, string(body))
		}
	}
	return out
}

// checkNoPassword fails when text holds a password (as is or as %q would
// escape it) that the fuzzed server did not send itself.
func checkNoPassword(t *testing.T, what, text string, pws []string, upstream []byte) {
	t.Helper()
	for _, pw := range pws {
		q := strconv.Quote(pw)
		q = q[1 : len(q)-1]
		if (strings.Contains(text, pw) || strings.Contains(text, q)) && !bytes.Contains(upstream, []byte(pw)) && !strings.Contains(string(upstream), q) {
			t.Fatalf("the client's password %q appears in %s: %q", pw, what, text)
		}
	}
}

// errorTexts are the strings of err and of a *clientError's fields.
func errorTexts(err error) string {
	s := err.Error()
	var ce *clientError
	if errors.As(err, &ce) {
		s += "\n" + ce.Message + "\n" + ce.Detail + "\n" + ce.Hint
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		s += "\n" + e.Error()
	}
	return s
}

// fzUpstreamTLS is a verified-looking upstream TLS state for the proxy's
// SCRAM-SHA-256-PLUS to bind to.
var fzUpstreamTLS = sync.OnceValues(func() (*tls.ConnectionState, error) {
	cfg, err := SelfSignedTLSConfig()
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		return nil, err
	}
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}, nil
})

func fuzzExchange(t *testing.T, flags byte, upstream, client []byte) {
	clientTLS := flags&2 != 0
	ax := &authExchange{clientTLS: clientTLS, mode: AuthPassthrough, user: "alice", channelBinding: "prefer"}
	switch {
	case flags&1 != 0:
		ax.mode = AuthRelay
	case flags&8 != 0:
		ax.mode = AuthAuto
	}
	if flags&4 != 0 {
		ax.channelBinding = "require"
	}
	if ax.mode != AuthPassthrough {
		st, err := fzUpstreamTLS()
		if err != nil {
			t.Fatal(err)
		}
		ax.upstreamTLS = st
	}
	var log []fzWrite
	cc := &fzRecConn{fzConn: newFzConn(client), side: 'c', log: &log}
	uc := &fzRecConn{fzConn: newFzConn(upstream), side: 'u', log: &log}
	ax.client, ax.upstream = cc, uc
	var err error
	fzRun(t, "authExchange.run", func() {
		err = ax.run()
	})

	saslPending := false
	for _, w := range log {
		for m, rest, ok := nextMessage(w.b); ; m, rest, ok = nextMessage(rest) {
			if !ok {
				if len(rest) != 0 {
					t.Fatalf("proxy wrote a partial message to %c: %q", w.side, rest)
				}
				break
			}
			switch w.side {
			case 'c':
				if m[0] == 'R' && len(m) >= 9 && binary.BigEndian.Uint32(m[5:9]) == authSASL {
					var sasl pgproto3.AuthenticationSASL
					if err := sasl.Decode(m[5:]); err != nil {
						t.Fatalf("AuthenticationSASL sent to the client does not decode: %v", err)
					}
					if len(sasl.AuthMechanisms) == 0 {
						t.Fatalf("AuthenticationSASL without mechanisms sent to the client")
					}
					for _, mech := range sasl.AuthMechanisms {
						if strings.HasSuffix(mech, scramPlusSuffix) {
							t.Fatalf("AuthenticationSASL offering %s reached the client", mech)
						}
					}
					saslPending = true
				}
			case 'u':
				if m[0] != 'p' {
					t.Fatalf("message %q forwarded to the upstream during authentication", m[0])
				}
				if saslPending && ax.mechanism == "" {
					var init pgproto3.SASLInitialResponse
					if err := init.Decode(m[5:]); err != nil {
						t.Fatalf("malformed SASLInitialResponse forwarded: %v", err)
					}
					if strings.HasSuffix(init.AuthMechanism, scramPlusSuffix) || bytes.HasPrefix(init.Data, []byte("y")) || bytes.HasPrefix(init.Data, []byte("p=")) {
						t.Fatalf("SASLInitialResponse asking for channel binding forwarded: %q %q", init.AuthMechanism, init.Data)
					}
					saslPending = false
				}
			}
		}
	}

	toClient := cc.out.Bytes()
	n := uc.consumed()
	if err == nil {
		// What was read is whole messages; the last one is the server's
		// AuthenticationOk (code 0; PostgreSQL sends 8 bytes, the proxy
		// takes any length), forwarded as is, last.
		var last []byte
		rest := upstream[:n]
		for m, r, ok := nextMessage(rest); ok; m, r, ok = nextMessage(r) {
			last, rest = m, r
		}
		if len(rest) != 0 || len(last) < 9 || last[0] != 'R' || binary.BigEndian.Uint32(last[5:9]) != authOK || !bytes.HasSuffix(toClient, last) {
			t.Fatalf("authentication phase ended without forwarding the upstream's AuthenticationOk last (read %q; client got %q)", upstream[:n], toClient)
		}
		return
	}
	var (
		ce  *clientError
		uio *upstreamIOError
	)
	switch {
	case errors.As(err, &ce):
		checkClientError(t, ce)
	case errors.Is(err, errUpstreamRejected):
		last := log[len(log)-1]
		if last.side != 'c' || last.b[0] != 'E' || n < len(last.b) || !bytes.Equal(upstream[n-len(last.b):n], last.b) {
			t.Fatalf("errUpstreamRejected without forwarding the server's ErrorResponse last")
		}
	case errors.Is(err, errClientLeft):
	case errors.As(err, &uio):
	default:
		t.Fatalf("authentication failed with an error of no known kind (%T): %v", err, err)
	}
	text := errorTexts(err)
	if ce != nil && ce.Reason == chain.ReasonChannelBinding && strings.Contains(ce.Message, "the client chose ") {
		return // echoes the mechanism name the client chose
	}
	checkNoPassword(t, "an error", text, passwords(client), upstream)
}
