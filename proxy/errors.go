package proxy

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// SQLSTATE codes the proxy sends in its own FATAL errors.
const (
	codeProtocolViolation    = "08P01" // protocol_violation
	codeUnableToConnect      = "08001" // sqlclient_unable_to_establish_sqlconnection
	codeConnectionFailure    = "08006" // connection_failure (verification)
	codeInvalidAuthorization = "28000" // invalid_authorization_specification
	codeFeatureNotSupported  = "0A000" // feature_not_supported
	codeAdminShutdown        = "57P01" // admin_shutdown
	codeCannotConnectNow     = "57P03" // cannot_connect_now
)

// sqlstate is the SQLSTATE of the FATAL error a client gets for a reason:
// one code per reason, as docs/operating.md lists them. It is "" for
// ReasonNone.
func sqlstate(r chain.Reason) string {
	switch r {
	case chain.ReasonUpstreamUnreachable, chain.ReasonStartupTimeout:
		return codeUnableToConnect
	case chain.ReasonUpstreamRefusedTLS, chain.ReasonUpstreamInjection, chain.ReasonUpstreamTLS,
		chain.ReasonClientCertificate, chain.ReasonUntrusted, chain.ReasonVerification, chain.ReasonIdentityChanged,
		chain.ReasonUpstreamTLSAlert, chain.ReasonUpstreamClosed:
		return codeConnectionFailure
	case chain.ReasonUpstreamProtocol, chain.ReasonClientProtocol:
		return codeProtocolViolation
	case chain.ReasonUnsupportedAuth, chain.ReasonChannelBinding, chain.ReasonUnsupportedProtocol:
		return codeFeatureNotSupported
	case chain.ReasonLogin, chain.ReasonStoredPassword, chain.ReasonClientTLSRequired:
		return codeInvalidAuthorization
	case chain.ReasonLimit:
		return codeTooManyConnections
	case chain.ReasonShutdown:
		return codeAdminShutdown
	case chain.ReasonUpstreamRole:
		// What a server in recovery answers: drivers and pools reconnect.
		return codeCannotConnectNow
	}
	return ""
}

// clientError is an error the proxy reports to the client as a FATAL
// ErrorResponse before closing. Its fields are what the client sees.
type clientError struct {
	// Reason is why, in one word: the SQLSTATE (Code), the log's reason
	// and the refusal's metrics label all come from it.
	Reason chain.Reason
	// Message is the primary message; it starts with "pgverifyproxy: ".
	Message string
	// Detail adds facts, optional.
	Detail string
	// Hint says what to do, optional.
	Hint string
	// Cause is the underlying error (logged, not sent).
	Cause error
}

// Code is the SQLSTATE the client gets, that of the Reason.
func (e *clientError) Code() string { return sqlstate(e.Reason) }

func (e *clientError) Error() string {
	s := e.Message
	if e.Hint != "" {
		s += " (hint: " + e.Hint + ")"
	}
	return s
}

// Unwrap returns the cause.
func (e *clientError) Unwrap() error { return e.Cause }

// response encodes e as a FATAL ErrorResponse.
func (e *clientError) response() ([]byte, error) {
	msg := &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                e.Code(),
		Message:             clientText(e.Message),
		Detail:              clientText(e.Detail),
		Hint:                clientText(e.Hint),
	}
	return msg.Encode(nil)
}

// clientText makes s safe as an ErrorResponse field: the fields are
// NUL-terminated, so a NUL (which can come from an upstream's bytes quoted
// in an error) would end the field early and make the client read the
// rest as further fields; clients decode the text as UTF-8; and clients
// such as psql print it on a terminal, where a newline or an escape
// sequence from a certificate's name could forge or hide lines. A NUL
// becomes the four characters \x00, any other control or non-printing
// character its \x or \u escape, invalid UTF-8 U+FFFD.
func clientText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", `\x00`)
	return chain.EscapeControls(s)
}

// writeClientError sends e to the client; errors writing are ignored since the
// connection is closed right after.
func writeClientError(w io.Writer, e *clientError) {
	b, err := e.response()
	if err != nil {
		return
	}
	_, _ = w.Write(b)
}

// protocolError is a client protocol violation.
func protocolError(format string, args ...any) *clientError {
	return &clientError{
		Reason:  chain.ReasonClientProtocol,
		Message: "pgverifyproxy: " + fmt.Sprintf(format, args...),
	}
}

// hints is what the advice about the route's upstream names.
func (r *Route) hints() chain.HintContext {
	return chain.HintContext{Trust: r.Trust, Repin: r.RepinCommand}
}

// upstreamError turns a failed upstream dial into what the client sees: the
// upstream, what failed (chain.Explain's reason), and what to do.
func upstreamError(r *Route, err error) *clientError {
	reason, hint := chain.Explain(err, r.hints())
	ce := &clientError{Reason: reason, Hint: hint, Cause: err}
	var de *chain.DialError
	if !errors.As(err, &de) {
		ce.Message = fmt.Sprintf("pgverifyproxy: cannot connect to upstream %s: %v", r.UpstreamAddr, err)
		return ce
	}
	ce.Message = "pgverifyproxy: " + de.Error()
	if reason == chain.ReasonVerification || reason == chain.ReasonIdentityChanged {
		ce.Detail = "the proxy stopped at the TLS handshake: no startup message, user name or password was sent to the server"
	}
	return ce
}

// upstreamLost turns a failure reading from or writing to the verified
// upstream during authentication into what the client sees. With TLS 1.3
// a server that refuses the proxy's client certificate says so only here,
// on the first read after the handshake.
func upstreamLost(r *Route, err error) *clientError {
	if de := chain.AlertAfterHandshake(r.UpstreamAddr, err); de != nil {
		reason, hint := chain.Explain(de, r.hints())
		return &clientError{Reason: reason, Hint: hint, Cause: err,
			Message: fmt.Sprintf("pgverifyproxy: upstream %s ended the TLS session during authentication with the alert %q", r.UpstreamAddr, de.Alert)}
	}
	return &clientError{Reason: chain.ReasonUpstreamClosed, Cause: err,
		Message: fmt.Sprintf("pgverifyproxy: upstream %s closed the connection during authentication: %v", r.UpstreamAddr, err),
		Hint:    "see the server's log for why it closed the session"}
}
