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
)

// ClientError is an error the proxy reports to the client as a FATAL
// ErrorResponse before closing. Its fields are what the client sees.
type ClientError struct {
	// Code is the SQLSTATE.
	Code string
	// Message is the primary message; it starts with "pgverifyproxy: ".
	Message string
	// Detail adds facts, optional.
	Detail string
	// Hint says what to do, optional.
	Hint string
	// Cause is the underlying error (logged, not sent).
	Cause error
	// Reason is a short machine word for logs and metrics.
	Reason string
}

func (e *ClientError) Error() string {
	s := e.Message
	if e.Hint != "" {
		s += " (hint: " + e.Hint + ")"
	}
	return s
}

// Unwrap returns the cause.
func (e *ClientError) Unwrap() error { return e.Cause }

// response encodes e as a FATAL ErrorResponse.
func (e *ClientError) response() ([]byte, error) {
	msg := &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                e.Code,
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
func writeClientError(w io.Writer, e *ClientError) {
	b, err := e.response()
	if err != nil {
		return
	}
	_, _ = w.Write(b)
}

// protocolError is a client protocol violation.
func protocolError(format string, args ...any) *ClientError {
	return &ClientError{
		Code:    codeProtocolViolation,
		Message: "pgverifyproxy: " + fmt.Sprintf(format, args...),
		Reason:  "client_protocol",
	}
}

// upstreamError turns a failed upstream dial into what the client sees: the
// upstream, what failed, and what to do.
func upstreamError(r *Route, err error) *ClientError {
	var de *chain.DialError
	if !errors.As(err, &de) {
		return &ClientError{
			Code:    codeUnableToConnect,
			Message: fmt.Sprintf("pgverifyproxy: cannot connect to upstream %s: %v", r.UpstreamAddr, err),
			Hint:    "check the upstream address and that the server is up",
			Cause:   err,
			Reason:  "upstream_unreachable",
		}
	}
	ce := &ClientError{Message: "pgverifyproxy: " + de.Error(), Cause: err}
	switch {
	case de.Step == chain.StepConnect:
		ce.Code, ce.Reason = codeUnableToConnect, "upstream_unreachable"
		ce.Hint = "check the upstream host and port and that the server accepts connections from this machine"
	case de.Refused:
		ce.Code, ce.Reason = codeConnectionFailure, "upstream_refused_tls"
		ce.Hint = "pgverifyproxy only talks to the upstream over verified TLS: enable ssl on the server; if the server has TLS on, something on the network path is stripping it"
	case de.Injected:
		ce.Code, ce.Reason = codeConnectionFailure, "upstream_injection"
		ce.Hint = "nothing was sent to the server; this is what a man-in-the-middle does: check the network path between this machine and the server"
	case de.Step == chain.StepTrust:
		ce.Code, ce.Reason = codeConnectionFailure, "untrusted"
		ce.Hint = "the proxy relays nothing to an upstream it cannot trust; fix what the message says, or pin explicitly with: pgverifyproxy chain fetch --upstream " + r.UpstreamAddr
		var te *chain.TrustError
		if errors.As(err, &te) && te.Hint != "" {
			ce.Hint = te.Hint
		}
	case de.Step == chain.StepVerify:
		ce.Code, ce.Reason = codeConnectionFailure, "verification"
		ce.Hint = chain.VerifyHint(de.Err, chain.HintContext{Trust: r.Trust, Repin: r.RepinCommand})
		ce.Detail = "the proxy stopped at the TLS handshake: no startup message, user name or password was sent to the server"
	default:
		ce.Code, ce.Reason = codeConnectionFailure, "upstream_tls"
		ce.Hint = "the server must offer TLS 1.2 or later; check its ssl_min_protocol_version and certificate configuration"
	}
	if de.Hint != "" {
		ce.Hint = de.Hint
	}
	return ce
}

// upstreamLost turns a failure reading from or writing to the verified
// upstream during authentication into what the client sees. With TLS 1.3
// a server that refuses the proxy's client certificate says so only here,
// on the first read after the handshake.
func upstreamLost(r *Route, err error) *ClientError {
	ce := &ClientError{Code: codeConnectionFailure, Cause: err, Reason: "upstream_closed",
		Message: fmt.Sprintf("pgverifyproxy: upstream %s closed the connection during authentication: %v", r.UpstreamAddr, err),
		Hint:    "see the server's log for why it closed the session"}
	if alert, ok := chain.TLSAlert(err); ok {
		ce.Reason = "upstream_tls_alert"
		ce.Message = fmt.Sprintf("pgverifyproxy: upstream %s ended the TLS session during authentication with the alert %q", r.UpstreamAddr, alert)
		if chain.ClientCertAlert(alert) {
			ce.Reason = "client_certificate"
			ce.Hint = chain.ClientCertHint
		}
	}
	return ce
}
