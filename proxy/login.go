package proxy

import (
	"bytes"
	"crypto/md5"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// AuthMode says who authenticates to the upstream.
type AuthMode string

const (
	// AuthAuto relays the client's own authentication exchange, except
	// where that cannot work: the server offers SCRAM-SHA-256-PLUS and the
	// client's leg is TLS (channel binding cannot cross a proxy that ends
	// the client's TLS). There the proxy asks the client for its password
	// inside that TLS and completes SCRAM-SHA-256-PLUS itself, on the same
	// upstream connection. The default.
	AuthAuto AuthMode = "auto"
	// AuthPassthrough always relays the client's own authentication
	// exchange: the proxy never sees a password, and a client that wants
	// SCRAM channel binding is refused with a hint.
	AuthPassthrough AuthMode = "passthrough"
	// AuthRelay makes the proxy log in upstream itself with the password
	// the client gives it (or a stored one), with SCRAM channel binding to
	// the verified server when the server offers it.
	AuthRelay AuthMode = "relay"
)

// ParseAuthMode validates a mode name; "" means auto.
func ParseAuthMode(s string) (AuthMode, error) {
	switch AuthMode(s) {
	case "", AuthAuto:
		return AuthAuto, nil
	case AuthPassthrough, AuthRelay:
		return AuthMode(s), nil
	}
	return "", fmt.Errorf("auth must be auto (relay the client's own login, and log in for it where channel binding cannot pass), passthrough (always relay the client's own login) or relay (the proxy always logs in upstream with the client's password), not %q", s)
}

// ParseChannelBinding validates the channel binding setting of the proxy's
// own logins.
func ParseChannelBinding(s string) (string, error) {
	switch s {
	case "":
		return "prefer", nil
	case "prefer", "require", "disable":
		return s, nil
	}
	return "", fmt.Errorf("channel_binding must be prefer, require or disable, not %q", s)
}

// scramSHA256 and scramSHA256Plus are the SASL mechanisms the proxy's login
// speaks.
const (
	scramSHA256     = "SCRAM-SHA-256"
	scramSHA256Plus = "SCRAM-SHA-256-PLUS"
)

// askPassword asks the client for its password in clear on the local hop
// (every client generation answers AuthenticationCleartextPassword) and
// returns it; the caller zeroes it.
func askPassword(client io.ReadWriter) ([]byte, error) {
	req, _ := (&pgproto3.AuthenticationCleartextPassword{}).Encode(nil)
	if _, err := client.Write(req); err != nil {
		return nil, fmt.Errorf("client: asking for the password: %w", err)
	}
	m, err := readClientAuth(client, "password", "a password message")
	if err != nil {
		return nil, err
	}
	body := m.body()
	end := bytes.IndexByte(body, 0)
	if end < 0 {
		zero(m.raw)
		return nil, protocolError("malformed password message")
	}
	pw := make([]byte, end)
	copy(pw, body[:end])
	zero(m.raw)
	return pw, nil
}

// zero overwrites b.
func zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// loginError is a clientError about the proxy's own login.
func loginError(reason chain.Reason, msg, hint string) *clientError {
	return &clientError{Reason: reason, Message: "pgverifyproxy: " + msg, Hint: hint}
}

// errBindingRequired refuses a login that cannot be bound to the verified
// TLS link while the route requires channel binding.
func errBindingRequired(what string) *clientError {
	return loginError(chain.ReasonLogin,
		"this route has channel_binding: require, and "+what,
		"store the user's password as SCRAM on the server (password_encryption = scram-sha-256, then set the password again), or set channel_binding: prefer for this route")
}

// storedPasswordError is what the client sees when the route's stored
// password cannot be had.
func storedPasswordError(err error) *clientError {
	return &clientError{Reason: chain.ReasonStoredPassword, Cause: err,
		Message: "pgverifyproxy: this route's stored password cannot be read: " + err.Error(),
		Hint:    "fix the route's password_file (mode 0600), password_env or password_command; the proxy's log has the details"}
}

// password returns the password for the proxy's login: the route's stored
// one, or the client's, asked for in clear on the local hop. The caller
// zeroes it.
func (a *authExchange) password() ([]byte, error) {
	if a.stored != nil {
		pw, err := a.stored()
		if err != nil {
			return nil, storedPasswordError(err)
		}
		a.passwordFrom = "stored"
		return pw, nil
	}
	a.passwordFrom = "client"
	if a.clientPassword != nil && *a.clientPassword != nil {
		return slices.Clone(*a.clientPassword), nil
	}
	if err := a.flushHeld(); err != nil {
		return nil, err
	}
	pw, err := askPassword(a.client)
	if err == nil && a.clientPassword != nil {
		*a.clientPassword = slices.Clone(pw)
	}
	return pw, err
}

// loginPassword answers AuthenticationCleartextPassword (md5 false) or
// AuthenticationMD5Password (md5 true, with its salt) for the client.
func (a *authExchange) loginPassword(md5Auth bool, salt []byte) error {
	if a.channelBinding == "require" {
		if md5Auth {
			return errBindingRequired("the server asked for an md5 password, which cannot be bound")
		}
		return errBindingRequired("the server asked for a cleartext password, which cannot be bound")
	}
	pw, err := a.password()
	if err != nil {
		return err
	}
	defer zero(pw)
	var msg []byte
	if md5Auth {
		a.mechanism = "md5"
		msg, _ = (&pgproto3.PasswordMessage{Password: md5Password(pw, a.user, salt)}).Encode(nil)
	} else {
		a.mechanism = "password"
		msg, _ = (&pgproto3.PasswordMessage{Password: string(pw)}).Encode(nil)
	}
	defer zero(msg)
	if _, err := a.upstream.Write(msg); err != nil {
		return &upstreamIOError{err: fmt.Errorf("upstream: sending the password: %w", err)}
	}
	return nil
}

// md5Password is PostgreSQL's md5 answer: "md5" + md5hex(md5hex(password +
// user) + salt).
func md5Password(pw []byte, user string, salt []byte) string {
	inner := md5.Sum(append(slices.Clone(pw), user...))
	hexInner := hex.EncodeToString(inner[:])
	outer := md5.Sum(append([]byte(hexInner), salt...))
	return "md5" + hex.EncodeToString(outer[:])
}

// loginSCRAM runs SCRAM-SHA-256, or SCRAM-SHA-256-PLUS bound to the
// verified server certificate (tls-server-end-point, as libpq binds), with
// the upstream. It returns once the server's signature has been verified;
// the server's AuthenticationOk is read by the caller. A server error is
// forwarded to the client byte for byte (errUpstreamRejected).
func (a *authExchange) loginSCRAM(mechs []string) error {
	if !slices.Contains(mechs, scramSHA256) && !slices.Contains(mechs, scramSHA256Plus) {
		return loginError(chain.ReasonUnsupportedAuth,
			fmt.Sprintf("the server offers the SASL mechanisms %s, and the proxy's login speaks only SCRAM-SHA-256(-PLUS)", strings.Join(mechs, ", ")),
			"use auth: passthrough for this route, so that the client logs in itself")
	}
	mech := scramSHA256
	var binding scram.ChannelBinding
	plus := slices.Contains(mechs, scramSHA256Plus) && a.upstreamTLS != nil && a.channelBinding != "disable"
	if plus {
		b, err := scram.NewTLSServerEndpointBinding(a.upstreamTLS)
		if err != nil {
			return loginError(chain.ReasonChannelBinding, "computing the channel binding to the server's certificate: "+err.Error(),
				"set channel_binding: disable for this route if the server's certificate uses a signature algorithm without a hash (such as Ed25519)")
		}
		mech, binding = scramSHA256Plus, b
	} else if a.channelBinding == "require" {
		return errBindingRequired("the server did not offer SCRAM-SHA-256-PLUS")
	}
	pw, err := a.password()
	if err != nil {
		return err
	}
	client, err := scram.SHA256.NewClient("", string(pw), "")
	if err != nil {
		// As PostgreSQL and libpq: a password SASLprep cannot prepare is
		// used as it is.
		client, err = scram.SHA256.NewClientUnprepped("", string(pw), "")
	}
	zero(pw)
	if err != nil {
		return loginError(chain.ReasonLogin, "preparing the SCRAM login: "+err.Error(), "")
	}
	// The iteration count is the server's choice (PostgreSQL 16's
	// scram_iterations can lower it); the link is verified, as libpq
	// accepts any low count. A high one is capped (scramIterations).
	client = client.WithMinIterations(1)
	var conv *scram.ClientConversation
	switch {
	case plus:
		conv = client.NewConversationWithChannelBinding(binding)
	case a.upstreamTLS != nil && a.channelBinding != "disable" && !slices.Contains(mechs, scramSHA256Plus):
		// As libpq: a TLS client that could bind says so (GS2 flag y),
		// so a server stripped of -PLUS on the way notices the downgrade.
		conv = client.NewConversationAdvertisingChannelBinding()
	default:
		conv = client.NewConversation()
	}
	a.mechanism = mech

	first, err := conv.Step("")
	if err != nil {
		return loginError(chain.ReasonLogin, "starting the SCRAM login: "+err.Error(), "")
	}
	if err := a.sendUpstream(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: []byte(first)}, "SASLInitialResponse"); err != nil {
		return err
	}
	serverFirst, err := a.saslAnswer(authSASLContinue)
	if err != nil {
		return err
	}
	if err := checkSCRAMIterations(serverFirst); err != nil {
		return err
	}
	final, err := conv.Step(string(serverFirst))
	if err != nil {
		return loginError(chain.ReasonUpstreamProtocol, "the server's SCRAM challenge: "+err.Error(), "")
	}
	if err := a.sendUpstream(&pgproto3.SASLResponse{Data: []byte(final)}, "SASLResponse"); err != nil {
		return err
	}
	serverFinal, err := a.saslAnswer(authSASLFinal)
	if err != nil {
		return err
	}
	if _, err := conv.Step(string(serverFinal)); err != nil || !conv.Valid() {
		return &clientError{Reason: chain.ReasonLogin,
			Message: "pgverifyproxy: the server did not prove that it knows the password (its SCRAM signature is wrong): " + stepError(err),
			Hint:    "the proxy did not go on with this login: something other than the real server may be answering; see the server's log"}
	}
	a.bound = plus
	return nil
}

// maxSCRAMIterations caps the PBKDF2 iteration count a server may ask of
// the proxy's SCRAM login. PostgreSQL's default is 4096 and OWASP's advice
// for PBKDF2-HMAC-SHA256 is 600,000; a million take about a third of a second
// of one CPU here (600,000: 0.2 s in TestProxyLogin). Without a cap a server (one that passed verify-full, but
// still not the proxy's to trust with its CPU) could ask for 2^31-1
// iterations: minutes of CPU per login, which no startup deadline stops
// once the computation has begun.
const maxSCRAMIterations = 1_000_000

// checkSCRAMIterations refuses a server-first-message whose iteration
// count is above maxSCRAMIterations (a malformed one is left to the SCRAM
// library, which refuses it).
func checkSCRAMIterations(serverFirst []byte) error {
	for _, attr := range strings.Split(string(serverFirst), ",") {
		v, ok := strings.CutPrefix(attr, "i=")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err == nil && n <= maxSCRAMIterations {
			return nil
		}
		shown := strconv.FormatUint(n, 10)
		if err != nil {
			if len(v) > 24 {
				v = v[:24] + "..."
			}
			shown = chain.Quote(v)
		}
		return loginError(chain.ReasonUpstreamProtocol,
			fmt.Sprintf("the server asked the proxy's SCRAM login for %s iterations, more than the proxy computes (%d; PostgreSQL's default is 4096)", shown, maxSCRAMIterations),
			"lower the server's scram_iterations and set the user's password again, or use auth: passthrough for this route so that the client logs in itself")
	}
	return nil
}

func stepError(err error) string {
	if err == nil {
		return "invalid"
	}
	return err.Error()
}

// sendUpstream writes one message of the proxy's login to the upstream.
func (a *authExchange) sendUpstream(m pgproto3.FrontendMessage, what string) error {
	b, err := m.Encode(nil)
	if err != nil {
		return fmt.Errorf("login: encoding %s: %w", what, err)
	}
	if _, err := a.upstream.Write(b); err != nil {
		return &upstreamIOError{err: fmt.Errorf("upstream: sending %s: %w", what, err)}
	}
	return nil
}

// saslAnswer reads the server's next SASL message of the proxy's login,
// which must be the authentication request want (SASLContinue or
// SASLFinal), and returns its data. Notices are forwarded; an
// ErrorResponse is forwarded byte for byte; an AuthenticationOk before the
// server has proved itself is refused.
func (a *authExchange) saslAnswer(want uint32) ([]byte, error) {
	for {
		m, err := readMessage(a.upstream, maxUpstreamAuthMessage)
		if err != nil {
			return nil, &upstreamIOError{err: fmt.Errorf("upstream: reading the SCRAM answer: %w", err)}
		}
		switch m.typ {
		case 'E':
			return nil, a.forwardError(m)
		case 'N':
			if err := a.toClient(m.raw); err != nil {
				return nil, fmt.Errorf("client: forwarding a notice: %w", err)
			}
			continue
		case 'R':
			body := m.body()
			if len(body) < 4 {
				return nil, upstreamProtocol("upstream sent a truncated authentication request")
			}
			switch code := binary.BigEndian.Uint32(body); {
			case code == want:
				return body[4:], nil
			case code == authOK:
				return nil, &clientError{Reason: chain.ReasonLogin,
					Message: "pgverifyproxy: the server sent AuthenticationOk before completing SCRAM: it did not prove that it knows the password",
					Hint:    "the proxy refuses such a server, as libpq does: something other than the real server may be answering; see the server's log"}
			default:
				return nil, upstreamProtocol(fmt.Sprintf("upstream sent authentication request %d during SCRAM (expected %d)", code, want))
			}
		}
		return nil, upstreamProtocol(fmt.Sprintf("upstream sent unexpected message %q during SCRAM", m.typ))
	}
}

// upstreamProtocol is a protocol violation by the upstream.
func upstreamProtocol(msg string) *clientError {
	return &clientError{Reason: chain.ReasonUpstreamProtocol, Message: "pgverifyproxy: " + msg}
}

// upstreamTLSState returns the verified TLS state of an upstream
// connection, or nil when it is not TLS (test dialers).
func upstreamTLSState(c any) *tls.ConnectionState {
	if tc, ok := c.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		if len(cs.PeerCertificates) > 0 {
			return &cs
		}
	}
	return nil
}
