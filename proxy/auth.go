package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
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

// authRelay carries the authentication exchange between a client and a
// verified upstream until the server sends AuthenticationOk (which is
// forwarded; the raw relay takes over from there).
//
// Server messages are parsed so that SCRAM-SHA-256-PLUS can be removed from
// AuthenticationSASL: the client's TLS (if any) ends at the proxy, so channel
// binding cannot succeed, and libpq refuses a plaintext server that offers it.
type authRelay struct {
	client    io.ReadWriter
	upstream  io.ReadWriter
	clientTLS bool
}

// run returns nil once AuthenticationOk has been forwarded. A *ClientError
// is for the client; errUpstreamRejected and errClientLeft need no answer.
func (a *authRelay) run() error {
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
			if _, err := a.client.Write(m.raw); err != nil {
				return fmt.Errorf("client: forwarding server error: %w", err)
			}
			return errUpstreamRejected
		case 'N', 'v':
			// NoticeResponse, NegotiateProtocolVersion: pass through.
			if _, err := a.client.Write(m.raw); err != nil {
				return fmt.Errorf("client: forwarding %q: %w", m.typ, err)
			}
		default:
			return &ClientError{
				Code:    codeProtocolViolation,
				Message: fmt.Sprintf("pgverifyproxy: upstream sent unexpected message %q during authentication", m.typ),
				Reason:  "upstream_protocol",
			}
		}
	}
}

// authRequest handles one 'R' message; done is true after AuthenticationOk.
func (a *authRelay) authRequest(m *message) (done bool, err error) {
	body := m.body()
	if len(body) < 4 {
		return false, &ClientError{Code: codeProtocolViolation, Message: "pgverifyproxy: upstream sent a truncated authentication request", Reason: "upstream_protocol"}
	}
	switch code := binary.BigEndian.Uint32(body); code {
	case authOK:
		if len(body) != 4 {
			// Exactly 8 bytes from every PostgreSQL server: anything else
			// would hand the client bytes the proxy has not understood.
			return false, &ClientError{Code: codeProtocolViolation, Message: fmt.Sprintf("pgverifyproxy: upstream sent an AuthenticationOk of %d bytes instead of 8", len(m.raw)-1), Reason: "upstream_protocol"}
		}
		if _, err := a.client.Write(m.raw); err != nil {
			return false, fmt.Errorf("client: forwarding AuthenticationOk: %w", err)
		}
		return true, nil
	case authSASL:
		out, err := withoutChannelBinding(m)
		if err != nil {
			return false, err
		}
		if _, err := a.client.Write(out); err != nil {
			return false, fmt.Errorf("client: forwarding AuthenticationSASL: %w", err)
		}
		return false, a.forwardClient(true)
	case authCleartextPassword, authMD5Password, authGSS, authGSSContinue, authSSPI, authSASLContinue:
		if _, err := a.client.Write(m.raw); err != nil {
			return false, fmt.Errorf("client: forwarding authentication request: %w", err)
		}
		return false, a.forwardClient(false)
	case authSASLFinal:
		if _, err := a.client.Write(m.raw); err != nil {
			return false, fmt.Errorf("client: forwarding AuthenticationSASLFinal: %w", err)
		}
		return false, nil
	default:
		return false, &ClientError{
			Code:    codeFeatureNotSupported,
			Message: fmt.Sprintf("pgverifyproxy: upstream asked for authentication method %d, which the proxy does not relay", code),
			Reason:  "upstream_protocol",
		}
	}
}

// withoutChannelBinding re-encodes AuthenticationSASL without the -PLUS
// mechanisms.
func withoutChannelBinding(m *message) ([]byte, error) {
	var sasl pgproto3.AuthenticationSASL
	if err := sasl.Decode(m.body()); err != nil {
		return nil, &ClientError{Code: codeProtocolViolation, Message: "pgverifyproxy: upstream sent a malformed AuthenticationSASL: " + err.Error(), Reason: "upstream_protocol"}
	}
	kept := sasl.AuthMechanisms[:0]
	for _, mech := range sasl.AuthMechanisms {
		if !strings.HasSuffix(mech, scramPlusSuffix) {
			kept = append(kept, mech)
		}
	}
	if len(kept) == 0 {
		return nil, &ClientError{
			Code:    codeFeatureNotSupported,
			Message: "pgverifyproxy: upstream offers only SASL mechanisms with channel binding, which cannot cross a proxy that terminates the client's TLS",
			Hint:    "allow SCRAM-SHA-256 without channel binding on the server",
			Reason:  "channel_binding",
		}
	}
	sasl.AuthMechanisms = kept
	return sasl.Encode(nil)
}

// forwardClient reads the client's answer to an authentication request and
// forwards it. initial marks the SASLInitialResponse, whose GS2 header is
// checked for channel binding.
func (a *authRelay) forwardClient(initial bool) error {
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
		return nil, &ClientError{Code: codeProtocolViolation, Message: "pgverifyproxy: reading the client's " + what + ": " + err.Error(), Reason: "client_protocol", Cause: err}
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
func (a *authRelay) checkSASLInitial(m *message) error {
	var init pgproto3.SASLInitialResponse
	if err := init.Decode(m.body()); err != nil {
		return protocolError("malformed SASLInitialResponse: %v", err)
	}
	if strings.HasSuffix(init.AuthMechanism, scramPlusSuffix) {
		return channelBindingError(a.clientTLS, "the client chose "+init.AuthMechanism)
	}
	if bytes.HasPrefix(init.Data, []byte("y")) || bytes.HasPrefix(init.Data, []byte("p=")) {
		return channelBindingError(a.clientTLS, "the client asked for SCRAM channel binding (GS2 flag "+string(init.Data[:1])+")")
	}
	return nil
}

func channelBindingError(clientTLS bool, what string) *ClientError {
	leg := "its TLS connection to the proxy ends at the proxy"
	if !clientTLS {
		leg = "its connection to the proxy is not the proxy's TLS link to the server"
	}
	return &ClientError{
		Code:    codeFeatureNotSupported,
		Message: "pgverifyproxy: SCRAM channel binding cannot pass through this proxy: " + what + ", but " + leg,
		Detail:  "The server's TLS channel is verified by the proxy (verify-full); channel binding would bind to a different TLS session.",
		Hint:    hintChannelBinding(clientTLS),
		Reason:  "channel_binding",
	}
}

// hintChannelBinding says how to turn channel binding off on the client.
func hintChannelBinding(clientTLS bool) string {
	off := "add channel_binding=disable to the client's connection string (libpq, pgx; node-postgres: leave enableChannelBinding off)"
	relay := "; or set auth: relay for this route, and the proxy logs in itself with channel binding to the server. The proxy verifies the server (verify-full) in every case."
	if clientTLS {
		return "Use sslmode=disable on this local hop (libpq's sslmode=prefer falls back to it by itself), or " + off + relay
	}
	return "Turn channel binding off in the client: " + off + relay
}
