package chain

import (
	"errors"
	"strconv"
	"strings"
)

// Reason is why a connection through pgverifyproxy failed, in one word:
// the cause label of pgverifyproxy_refused_total, the reason field of the
// proxy's log and, through the proxy's mapping, the SQLSTATE its client
// gets. It is one vocabulary for the proxy, check and the chain commands:
// the upstream's failures, which this package explains (Explain), and the
// proxy's own, which the proxy sets where it refuses a client (a route at
// its limit, a client that broke the protocol, ...) and which Explain never
// returns.
type Reason uint8

// Refusals: the proxy answers the client with a FATAL error (or, for a
// client that broke the protocol or ran out of time before its startup
// message was complete, only closes) and counts it in
// pgverifyproxy_refused_total. The order is that of docs/operating.md.
const (
	// ReasonNone is no failure.
	ReasonNone Reason = iota

	// ReasonUpstreamUnreachable: the upstream could not be reached (DNS,
	// connection refused, timeout).
	ReasonUpstreamUnreachable
	// ReasonUpstreamRefusedTLS: the upstream (or something on the path)
	// answered the SSLRequest with 'N' or an error, or does not accept
	// direct TLS.
	ReasonUpstreamRefusedTLS
	// ReasonUpstreamInjection: plaintext arrived where the TLS handshake
	// should start.
	ReasonUpstreamInjection
	// ReasonUpstreamTLS: the TLS handshake failed otherwise.
	ReasonUpstreamTLS
	// ReasonClientCertificate: the server refused the proxy's client
	// certificate, or its absence (a TLS alert during the handshake, or
	// with TLS 1.3 right after it).
	ReasonClientCertificate
	// ReasonUntrusted: there is nothing to verify the upstream against: no
	// pin yet and its chain may not be pinned, or the pin cannot be read.
	ReasonUntrusted
	// ReasonVerification: the server's certificate failed verify-full.
	ReasonVerification
	// ReasonUpstreamTLSAlert: the server ended the verified TLS session with
	// an alert other than a client-certificate refusal.
	ReasonUpstreamTLSAlert
	// ReasonUpstreamClosed: the verified upstream closed the connection
	// during authentication, without a word.
	ReasonUpstreamClosed
	// ReasonUpstreamProtocol: the server broke the protocol during
	// authentication.
	ReasonUpstreamProtocol
	// ReasonUnsupportedAuth: the server asked for an authentication method
	// the proxy can neither relay nor speak in its own login.
	ReasonUnsupportedAuth
	// ReasonLogin: a login the proxy made for the client (auth relay, or
	// auth auto where it steps in) failed on the proxy's side; the server's
	// own refusals are forwarded and counted as auth_failed sessions
	// instead. The word keeps its first name for dashboards.
	ReasonLogin
	// ReasonStoredPassword: the route's stored password (file, variable or
	// command) could not be read.
	ReasonStoredPassword
	// ReasonChannelBinding: SCRAM channel binding cannot be had on this
	// exchange (the client asked for it where the proxy relays the
	// exchange, or the server offers nothing else).
	ReasonChannelBinding
	// ReasonClientProtocol: the client broke the protocol.
	ReasonClientProtocol
	// ReasonUnsupportedProtocol: the client speaks a frontend protocol
	// other than 3 (protocol 2, say).
	ReasonUnsupportedProtocol
	// ReasonClientTLSRequired: a plaintext startup on a client_tls: require
	// listener.
	ReasonClientTLSRequired
	// ReasonLimit: the route is at its max_connections.
	ReasonLimit
	// ReasonStartupTimeout: the startup phase took longer than
	// startup_timeout.
	ReasonStartupTimeout
	// ReasonUpstreamRole: no host of the route had the role its
	// target_session_attrs asks for (or the one that answered a relayed
	// login had the wrong one).
	ReasonUpstreamRole
	// ReasonIdentityChanged: the server's chain no longer leads to the
	// pinned anchor (a new root where the pin stood): the one event the
	// proxy exists for, counted apart from the other verify-full failures.
	ReasonIdentityChanged

	// firstNotRefusal ends the refusals.
	firstNotRefusal
)

// Not refusals: a connection the proxy ends, with a FATAL error, for a
// reason that is neither the client's nor the upstream's. Logged with its
// reason, never counted in pgverifyproxy_refused_total.
const (
	// ReasonShutdown: the proxy was shutting down (the drain ended) while
	// the connection was still in its startup phase.
	ReasonShutdown Reason = firstNotRefusal + iota
)

const reasonNames = "noneupstream_unreachableupstream_refused_tlsupstream_injectionupstream_tlsclient_certificateuntrustedverificationupstream_tls_alertupstream_closedupstream_protocolunsupported_authrelay_loginstored_passwordchannel_bindingclient_protocolunsupported_protocolclient_tls_requiredlimitstartup_timeoutupstream_roleidentity_changedshutdown"

var reasonIndex = [...]uint16{0, 4, 24, 44, 62, 74, 92, 101, 113, 131, 146, 163, 179, 190, 205, 220, 235, 255, 274, 279, 294, 307, 323, 331}

// An "invalid array index" compiler error here means the constants above
// changed: update reasonNames and reasonIndex (and the test's table).
func _() {
	var x [1]struct{}
	_ = x[ReasonNone-0]
	_ = x[ReasonUpstreamUnreachable-1]
	_ = x[ReasonUpstreamRefusedTLS-2]
	_ = x[ReasonUpstreamInjection-3]
	_ = x[ReasonUpstreamTLS-4]
	_ = x[ReasonClientCertificate-5]
	_ = x[ReasonUntrusted-6]
	_ = x[ReasonVerification-7]
	_ = x[ReasonUpstreamTLSAlert-8]
	_ = x[ReasonUpstreamClosed-9]
	_ = x[ReasonUpstreamProtocol-10]
	_ = x[ReasonUnsupportedAuth-11]
	_ = x[ReasonLogin-12]
	_ = x[ReasonStoredPassword-13]
	_ = x[ReasonChannelBinding-14]
	_ = x[ReasonClientProtocol-15]
	_ = x[ReasonUnsupportedProtocol-16]
	_ = x[ReasonClientTLSRequired-17]
	_ = x[ReasonLimit-18]
	_ = x[ReasonStartupTimeout-19]
	_ = x[ReasonUpstreamRole-20]
	_ = x[ReasonIdentityChanged-21]
	_ = x[ReasonShutdown-22]
}

// String is the reason's word, as in metrics and logs.
func (r Reason) String() string {
	if int(r) >= len(reasonIndex)-1 {
		return "Reason(" + strconv.FormatInt(int64(r), 10) + ")"
	}
	return reasonNames[reasonIndex[r]:reasonIndex[r+1]]
}

// MarshalText writes the word, so that a Reason logged as it is (slog's
// JSON and text handlers) reads as in metrics.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Refusal reports whether r counts as a refused connection.
func (r Reason) Refusal() bool { return r > ReasonNone && r < firstNotRefusal }

// Reasons returns every reason but ReasonNone: the refusals first, in
// order, then the others.
func Reasons() []Reason {
	out := make([]Reason, 0, len(reasonIndex)-2)
	for r := ReasonNone + 1; int(r) < len(reasonIndex)-1; r++ {
		out = append(out, r)
	}
	return out
}

// What to do about the upstream's failures that have one fix whatever the
// route.
const (
	hintUnreachable = "check the upstream address and that the server is up"
	hintConnect     = "check the upstream host and port, and that the server is up and accepts connections from this machine (firewall, listen_addresses)"
	hintRefusedTLS  = "pgverifyproxy only talks to the upstream over verified TLS: enable ssl on the server; if the server has TLS on, something on the network path is stripping it"
	hintInjection   = "nothing was sent to the server; this is what a man-in-the-middle does: check the network path between this machine and the server"
	hintTLS         = "the server must offer TLS 1.2 or later; check its ssl_min_protocol_version and certificate configuration"
	hintAlert       = "see the server's log for why it ended the session"
)

// Explain says why a connection to the upstream, a capture or a trust
// decision failed, as a Reason, and what to do about it, naming what hc
// gives. It is the one place that turns this package's errors (DialError,
// TrustError, VerifyError) into advice: the proxy's FATAL errors, check and
// the chain commands all say what it says. An error this package does not
// know is taken as the upstream not being reached.
func Explain(err error, hc HintContext) (Reason, string) {
	if err == nil {
		return ReasonNone, ""
	}
	var de *DialError
	if errors.As(err, &de) {
		r, hint := de.explain(hc)
		if de.Hint != "" {
			hint = de.Hint
		}
		return r, hint
	}
	var te *TrustError
	if errors.As(err, &te) {
		return ReasonUntrusted, trustHint(te, hc, "HOST:PORT")
	}
	var ve *VerifyError
	if errors.As(err, &ve) {
		return verifyReason(ve), VerifyHint(ve, hc)
	}
	return ReasonUpstreamUnreachable, hintUnreachable
}

// explain classifies a failed connection by its step.
func (e *DialError) explain(hc HintContext) (Reason, string) {
	switch {
	case e.Step == StepConnect:
		return ReasonUpstreamUnreachable, hintConnect
	case e.Refused:
		return ReasonUpstreamRefusedTLS, hintRefusedTLS
	case e.Injected:
		return ReasonUpstreamInjection, hintInjection
	case e.Step == StepTrust:
		var te *TrustError
		errors.As(e.Err, &te)
		return ReasonUntrusted, trustHint(te, hc, e.Addr)
	case e.Step == StepVerify:
		var ve *VerifyError
		if errors.As(e.Err, &ve) {
			return verifyReason(ve), VerifyHint(e.Err, hc)
		}
		return ReasonVerification, VerifyHint(e.Err, hc)
	case e.Alert != "" && ClientCertAlert(e.Alert):
		return ReasonClientCertificate, ClientCertHint
	case e.Step == StepAfterHandshake:
		return ReasonUpstreamTLSAlert, hintAlert
	}
	return ReasonUpstreamTLS, hintTLS
}

// trustHint is what to do when the upstream cannot be trusted: what the
// trust decision says (te, when set), else the command that pins it.
func trustHint(te *TrustError, hc HintContext, addr string) string {
	if te != nil && te.Hint != "" {
		return te.Hint
	}
	fetch := strings.TrimSuffix(hc.Repin, " --repin")
	if fetch == "" {
		fetch = "pgverifyproxy chain fetch --upstream " + addr
	}
	return "the proxy relays nothing to an upstream it cannot trust; fix what the message says, or pin explicitly with: " + fetch
}

// verifyReason is the refusal cause of a failed verify-full check: a chain
// that no longer leads to the pin has its own.
func verifyReason(ve *VerifyError) Reason {
	if ve.Kind == KindIdentityChanged {
		return ReasonIdentityChanged
	}
	return ReasonVerification
}
