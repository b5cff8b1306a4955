package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// Limits on single messages during the authentication phase.
const (
	// maxClientAuthMessage bounds a client's password / SASL / GSS message;
	// the server's own limit for auth tokens is 65535 bytes.
	maxClientAuthMessage = 1 << 17
	// maxUpstreamAuthMessage bounds a server message before AuthenticationOk.
	maxUpstreamAuthMessage = 1 << 20
)

// Authentication request codes (the int32 after 'R').
const (
	authOK                = 0
	authCleartextPassword = 3
	authMD5Password       = 5
	authGSS               = 7
	authGSSContinue       = 8
	authSSPI              = 9
	authSASL              = 10
	authSASLContinue      = 11
	authSASLFinal         = 12
)

// scramPlusSuffix marks SASL mechanisms with channel binding.
const scramPlusSuffix = "-PLUS"

// errUpstreamRejected means the server sent an ErrorResponse during the
// authentication phase; it was forwarded to the client as is.
var errUpstreamRejected = errors.New("upstream rejected the session during authentication (its error was forwarded to the client)")

// errStaleStored means the server refused a login made with a cached
// stored password, which was dropped; nothing reached the client, and the
// session may log in once more with a fresh one.
var errStaleStored = errors.New("upstream refused the cached stored password")

// errHostUnavailable means the server answered the startup with "shutting
// down" or "starting up" before the client saw anything: another host of
// the route may serve the session.
var errHostUnavailable = errors.New("upstream host unavailable (shutting down or starting up)")

// isUnavailable tells whether an ErrorResponse says the server cannot
// take sessions now: admin_shutdown, crash_shutdown, cannot_connect_now.
func isUnavailable(m *message) bool {
	var e pgproto3.ErrorResponse
	if e.Decode(m.body()) != nil {
		return false
	}
	switch e.Code {
	case "57P01", "57P02", "57P03":
		return true
	}
	return false
}

// isAuthFailure tells whether an ErrorResponse is an authentication
// failure (SQLSTATE class 28: invalid_authorization_specification,
// invalid_password).
func isAuthFailure(m *message) bool {
	var e pgproto3.ErrorResponse
	return e.Decode(m.body()) == nil && strings.HasPrefix(e.Code, "28")
}

// errClientLeft means the client closed during authentication, as libpq
// does when it needs a password it does not have yet.
var errClientLeft = errors.New("client closed during authentication")

// upstreamIOError is a failed read from the upstream during authentication.
type upstreamIOError struct{ err error }

func (e *upstreamIOError) Error() string { return e.err.Error() }
func (e *upstreamIOError) Unwrap() error { return e.err }

// message is one typed protocol message, header included.
type message struct {
	typ byte
	raw []byte
}

func (m *message) body() []byte { return m.raw[5:] }

// readMessage reads one typed message straight from r (no buffering, so the
// relay can take over the connection afterwards with nothing left behind).
func readMessage(r io.Reader, max int) (*message, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > max {
		return nil, fmt.Errorf("message %q has invalid length %d (limit %d)", hdr[0], n, max)
	}
	raw := make([]byte, 1+n)
	copy(raw, hdr[:])
	if _, err := io.ReadFull(r, raw[5:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return &message{typ: hdr[0], raw: raw}, nil
}

// authExchange carries the authentication phase between a client and a
// verified upstream until the server sends AuthenticationOk (which is
// forwarded; the raw relay takes over from there, so every byte the server
// sends from AuthenticationOk on reaches the client as it came).
//
// In passthrough the client's own exchange is relayed. Server messages are
// parsed so that SCRAM-SHA-256-PLUS can be removed from AuthenticationSASL:
// the client's TLS (if any) ends at the proxy, so channel binding cannot
// succeed, and libpq refuses a plaintext server that offers it. Where the
// proxy logs in itself (auth relay; auth auto when the server offers
// SCRAM-SHA-256-PLUS to a TLS client; a stored password), it answers the
// server's requests on the same connection (login.go).
type authExchange struct {
	client    io.ReadWriter
	upstream  io.ReadWriter
	clientTLS bool
	mode      AuthMode
	// user is the client's user name (md5 salts the password with it).
	user string
	// upstreamTLS is the verified upstream TLS state that SCRAM-PLUS binds
	// to; nil when the upstream is not TLS.
	upstreamTLS *tls.ConnectionState
	// channelBinding is the route's setting for the proxy's logins.
	channelBinding string
	// stored supplies the route's stored password; nil when it has none.
	stored func() ([]byte, error)
	// storedRejected is told when the server refused a login made with the
	// stored password, and reports whether it dropped a cached one (a
	// fresh one may differ); nil when nobody needs to know.
	storedRejected func() bool
	// retryStale lets a refusal of a cached stored password end the
	// exchange with errStaleStored instead of reaching the client.
	retryStale bool
	// hold keeps what the server sends for the client (notices,
	// AuthenticationOk) in held until the session knows that this host
	// has the role it wants (target_session_attrs), so that another host
	// can be tried with the client none the wiser. A relayed exchange
	// (the client answers the server itself) ends holding: clientInvolved.
	hold           bool
	held           []byte
	clientInvolved bool
	// wrote tells that something of this exchange reached the client.
	wrote bool
	// otherHosts lets a server that is shutting down or starting up
	// (57P01, 57P02, 57P03, before the client saw anything) end the
	// exchange with errHostUnavailable, so that the next host is tried.
	otherHosts bool
	// clientPassword, when set, keeps the password the client gave the
	// proxy for the session's next login attempts (another host); the
	// session zeroes it.
	clientPassword *[]byte
	// whyNoAsk, when set, says why auth auto may not ask this client for
	// its password ("" when it may); it is asked only when the proxy
	// would ask (the link rule reads the interface table), at most once.
	whyNoAsk func() string
	noAskSet bool
	noAskWhy string
	// fallback is called when auth auto passes through an exchange it
	// would have taken over, with the reason (for the log).
	fallback func(reason string)

	// mechanism is how the proxy logged in ("" while it only relayed).
	mechanism string
	// passwordFrom is "client" or "stored" once the proxy used a password.
	passwordFrom string
	// bound tells that the proxy's SCRAM login was channel-bound.
	bound bool
}

// run returns nil once AuthenticationOk has been forwarded. A *clientError
// is for the client; errUpstreamRejected and errClientLeft need no answer.
func (a *authExchange) run() error {
	for {
		m, err := readMessage(a.upstream, maxUpstreamAuthMessage)
		if err != nil {
			return &upstreamIOError{err: fmt.Errorf("upstream: reading authentication message: %w", err)}
		}
		switch m.typ {
		case 'R':
			done, err := a.authRequest(m)
			if err != nil || done {
				return err
			}
		case 'E':
			return a.forwardError(m)
		case 'N', 'v':
			// NoticeResponse, NegotiateProtocolVersion: pass through.
			if err := a.toClient(m.raw); err != nil {
				return fmt.Errorf("client: forwarding %q: %w", m.typ, err)
			}
		default:
			return upstreamProtocol(fmt.Sprintf("upstream sent unexpected message %q during authentication", m.typ))
		}
	}
}

// toClient writes b to the client, or keeps it while holding.
func (a *authExchange) toClient(b []byte) error {
	if a.hold {
		if len(a.held)+len(b) > maxAfterLogin {
			return upstreamProtocol(fmt.Sprintf("upstream sent more than %d bytes of notices during authentication", maxAfterLogin))
		}
		a.held = append(a.held, b...)
		return nil
	}
	a.wrote = true
	_, err := a.client.Write(b)
	return err
}

// flushHeld writes what was held to the client.
func (a *authExchange) flushHeld() error {
	if len(a.held) == 0 {
		return nil
	}
	a.wrote = true
	_, err := a.client.Write(a.held)
	a.held = nil
	if err != nil {
		return fmt.Errorf("client: forwarding held messages: %w", err)
	}
	return nil
}

// involveClient ends holding before the client takes part in the
// exchange: from here this login cannot move to another host unseen.
func (a *authExchange) involveClient() error {
	a.hold, a.clientInvolved = false, true
	return a.flushHeld()
}

// forwardError sends the server's ErrorResponse to the client byte for byte.
func (a *authExchange) forwardError(m *message) error {
	if a.passwordFrom == "stored" && a.storedRejected != nil && isAuthFailure(m) &&
		a.storedRejected() && a.retryStale {
		return errStaleStored
	}
	if a.otherHosts && !a.wrote && !a.clientInvolved && isUnavailable(m) {
		return errHostUnavailable
	}
	if err := a.flushHeld(); err != nil {
		return err
	}
	if _, err := a.client.Write(m.raw); err != nil {
		return fmt.Errorf("client: forwarding server error: %w", err)
	}
	return errUpstreamRejected
}

// loggingIn tells whether the proxy answers the server's password requests
// itself: always in relay mode, and with a stored password (the client has
// none to give).
func (a *authExchange) loggingIn() bool {
	return a.mode == AuthRelay || a.stored != nil
}

// noAsk says why auth auto may not ask this client for its password, or
// "" when it may (whyNoAsk, read once).
func (a *authExchange) noAsk() string {
	if !a.noAskSet && a.whyNoAsk != nil {
		a.noAskWhy, a.noAskSet = a.whyNoAsk(), true
	}
	return a.noAskWhy
}

// bindingRequired tells whether this login must end bound to the verified
// server with SCRAM-SHA-256-PLUS: channel_binding require, in relay and in
// auto (where the proxy can bind only by logging in itself), as libpq's
// channel_binding=require. Passthrough never logs in, so the setting does
// not apply there.
func (a *authExchange) bindingRequired() bool {
	return a.channelBinding == "require" && a.mode != AuthPassthrough
}

// unboundRelay refuses, under channel_binding require in auto, a SASL
// exchange the proxy would have relayed to the client unbound, and says
// what would let the proxy bind it.
func (a *authExchange) unboundRelay(mechs []string) error {
	switch {
	case !slices.Contains(mechs, scramSHA256Plus) || a.upstreamTLS == nil:
		return errBindingRequired("the server did not offer SCRAM-SHA-256-PLUS")
	case a.noAsk() != "":
		return errBindingRequired("binding needs the client's password, and " + a.noAsk())
	}
	return errBindingRequired("binding needs the client's password, which the proxy asks for only inside the client's TLS, and this client connected without TLS")
}

// takeOverSASL tells whether the proxy runs the SCRAM exchange itself.
func (a *authExchange) takeOverSASL(mechs []string) bool {
	if a.loggingIn() {
		return true
	}
	if a.mode != AuthAuto || !a.clientTLS || a.upstreamTLS == nil || !slices.Contains(mechs, scramSHA256Plus) {
		return false
	}
	if a.noAsk() != "" {
		if a.fallback != nil {
			a.fallback(a.noAsk())
		}
		return false
	}
	return true
}

// authRequest handles one 'R' message; done is true after AuthenticationOk.
func (a *authExchange) authRequest(m *message) (done bool, err error) {
	body := m.body()
	if len(body) < 4 {
		return false, upstreamProtocol("upstream sent a truncated authentication request")
	}
	switch code := binary.BigEndian.Uint32(body); code {
	case authOK:
		if len(body) != 4 {
			// Exactly 8 bytes from every PostgreSQL server: anything else
			// would hand the client bytes the proxy has not understood.
			return false, upstreamProtocol(fmt.Sprintf("upstream sent an AuthenticationOk of %d bytes instead of 8", len(m.raw)-1))
		}
		if a.bindingRequired() && !a.bound {
			// As libpq: a server that lets the login in without the
			// bound SCRAM exchange has not been authenticated by it.
			return false, errBindingRequired("the server let the login in without SCRAM-SHA-256-PLUS")
		}
		if err := a.toClient(m.raw); err != nil {
			return false, fmt.Errorf("client: forwarding AuthenticationOk: %w", err)
		}
		return true, nil
	case authSASL:
		var sasl pgproto3.AuthenticationSASL
		if err := sasl.Decode(body); err != nil {
			return false, upstreamProtocol("upstream sent a malformed AuthenticationSASL: " + err.Error())
		}
		if a.mechanism != "" {
			return false, upstreamProtocol("upstream asked for a second SASL exchange")
		}
		if a.takeOverSASL(sasl.AuthMechanisms) {
			return false, a.loginSCRAM(sasl.AuthMechanisms)
		}
		if a.bindingRequired() {
			return false, a.unboundRelay(sasl.AuthMechanisms)
		}
		out, err := withoutChannelBinding(&sasl)
		if err != nil {
			return false, err
		}
		if err := a.involveClient(); err != nil {
			return false, err
		}
		if _, err := a.client.Write(out); err != nil {
			return false, fmt.Errorf("client: forwarding AuthenticationSASL: %w", err)
		}
		return false, a.forwardClient(true)
	case authCleartextPassword, authMD5Password:
		if a.loggingIn() {
			if a.mechanism != "" {
				return false, upstreamProtocol("upstream asked for a password again")
			}
			return false, a.loginPassword(code == authMD5Password, body[4:])
		}
		if a.bindingRequired() {
			if code == authMD5Password {
				return false, errBindingRequired("the server asked for an md5 password, which cannot be bound")
			}
			return false, errBindingRequired("the server asked for a cleartext password, which cannot be bound")
		}
		if err := a.involveClient(); err != nil {
			return false, err
		}
		if _, err := a.client.Write(m.raw); err != nil {
			return false, fmt.Errorf("client: forwarding authentication request: %w", err)
		}
		return false, a.forwardClient(false)
	case authGSS, authGSSContinue, authSSPI, authSASLContinue:
		if a.bindingRequired() && a.mechanism == "" {
			return false, errBindingRequired(fmt.Sprintf("the server asked for authentication method %d, which the proxy cannot bind", code))
		}
		if a.loggingIn() || a.mechanism != "" {
			return false, loginError(chain.ReasonUnsupportedAuth,
				fmt.Sprintf("the server asked for authentication method %d, which the proxy's own login does not speak", code),
				"use auth: passthrough for this route, so that the client logs in itself")
		}
		if err := a.involveClient(); err != nil {
			return false, err
		}
		if _, err := a.client.Write(m.raw); err != nil {
			return false, fmt.Errorf("client: forwarding authentication request: %w", err)
		}
		return false, a.forwardClient(false)
	case authSASLFinal:
		if a.mechanism != "" {
			return false, upstreamProtocol("upstream sent AuthenticationSASLFinal twice")
		}
		if err := a.involveClient(); err != nil {
			return false, err
		}
		if _, err := a.client.Write(m.raw); err != nil {
			return false, fmt.Errorf("client: forwarding AuthenticationSASLFinal: %w", err)
		}
		return false, nil
	default:
		return false, &clientError{
			Reason:  chain.ReasonUnsupportedAuth,
			Message: fmt.Sprintf("pgverifyproxy: upstream asked for authentication method %d, which the proxy does not relay", code),
		}
	}
}

// withoutChannelBinding re-encodes AuthenticationSASL without the -PLUS
// mechanisms.
func withoutChannelBinding(sasl *pgproto3.AuthenticationSASL) ([]byte, error) {
	kept := sasl.AuthMechanisms[:0]
	for _, mech := range sasl.AuthMechanisms {
		if !strings.HasSuffix(mech, scramPlusSuffix) {
			kept = append(kept, mech)
		}
	}
	if len(kept) == 0 {
		return nil, &clientError{
			Reason:  chain.ReasonChannelBinding,
			Message: "pgverifyproxy: upstream offers only SASL mechanisms with channel binding, which cannot cross a proxy that terminates the client's TLS",
			Hint:    "allow SCRAM-SHA-256 without channel binding on the server",
		}
	}
	sasl.AuthMechanisms = kept
	return sasl.Encode(nil)
}

// forwardClient reads the client's answer to an authentication request and
// forwards it. initial marks the SASLInitialResponse, whose GS2 header is
// checked for channel binding.
func (a *authExchange) forwardClient(initial bool) error {
	m, err := readClientAuth(a.client, "authentication response", "an authentication response")
	if err != nil {
		return err
	}
	if initial {
		if err := a.checkSASLInitial(m); err != nil {
			return err
		}
	}
	if _, err := a.upstream.Write(m.raw); err != nil {
		return fmt.Errorf("upstream: forwarding authentication response: %w", err)
	}
	return nil
}

// readClientAuth reads the client's answer to an authentication request: a
// 'p' message (password, SASL or GSS data). A client that closes or sends
// Terminate has left (errClientLeft); anything else is a protocol error.
// what and expected name the message in errors.
func readClientAuth(client io.Reader, what, expected string) (*message, error) {
	m, err := readMessage(client, maxClientAuthMessage)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errClientLeft
		}
		return nil, &clientError{Reason: chain.ReasonClientProtocol, Message: "pgverifyproxy: reading the client's " + what + ": " + err.Error(), Cause: err}
	}
	switch m.typ {
	case 'p':
		return m, nil
	case 'X':
		return nil, errClientLeft
	}
	return nil, protocolError("expected %s from the client, got message %q", expected, m.typ)
}

// checkSASLInitial refuses a SASLInitialResponse that asks for channel
// binding. The GS2 flag is covered by the SCRAM proof, so it cannot be
// rewritten; the server would reject it anyway, with a less useful message.
func (a *authExchange) checkSASLInitial(m *message) error {
	var init pgproto3.SASLInitialResponse
	if err := init.Decode(m.body()); err != nil {
		return protocolError("malformed SASLInitialResponse: %v", err)
	}
	if strings.HasSuffix(init.AuthMechanism, scramPlusSuffix) {
		return a.channelBindingError("the client chose " + init.AuthMechanism)
	}
	if bytes.HasPrefix(init.Data, []byte("y")) || bytes.HasPrefix(init.Data, []byte("p=")) {
		return a.channelBindingError("the client asked for SCRAM channel binding (GS2 flag " + string(init.Data[:1]) + ")")
	}
	return nil
}

// channelBindingError refuses a client that asked for channel binding on an
// exchange the proxy relays.
func (a *authExchange) channelBindingError(what string) *clientError {
	leg := "its TLS connection to the proxy ends at the proxy"
	if !a.clientTLS {
		leg = "its connection to the proxy is not the proxy's TLS link to the server"
	}
	return &clientError{
		Reason:  chain.ReasonChannelBinding,
		Message: "pgverifyproxy: SCRAM channel binding cannot pass through this proxy: " + what + ", but " + leg,
		Detail:  "The server's TLS channel is verified by the proxy (verify-full); channel binding would bind to a different TLS session.",
		Hint:    a.channelBindingHint(),
	}
}

// channelBindingHint says first what the proxy's operator can change, so
// that an app whose connection string is fixed gets in, then what the
// client could change.
func (a *authExchange) channelBindingHint() string {
	var route string
	switch {
	case a.mode == AuthAuto && a.noAsk() != "":
		route = "Give this route a certificate of its own (client_tls_cert and client_tls_key): the proxy then asks for the password inside the client's TLS and logs in with channel binding itself (" + a.noAsk() + ")"
	case a.mode == AuthAuto:
		route = "Set auth: relay for this route: the proxy then logs in for every client itself, with channel binding to the server"
	default:
		route = "Set auth: auto (the default) for this route: the proxy then logs in for TLS clients itself, with channel binding to the server"
	}
	client := "turn channel binding off in the client: add channel_binding=disable to its connection string (libpq, pgx; node-postgres: leave enableChannelBinding off)"
	if a.clientTLS {
		client = "in the client, use sslmode=disable on this local hop (libpq's sslmode=prefer falls back to it by itself), or " + client
	}
	return route + ". Or " + client + ". The proxy verifies the server (verify-full) in every case."
}
