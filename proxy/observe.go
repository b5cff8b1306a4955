package proxy

import "time"

// SessionResult is how a client connection ended, for metrics.
type SessionResult string

const (
	// ResultCompleted is a session that was relayed and then ended.
	ResultCompleted SessionResult = "completed"
	// ResultRefused is a connection the proxy refused (see Observer.Refused
	// for the cause).
	ResultRefused SessionResult = "refused"
	// ResultAuthFailed is a session the upstream server refused during
	// authentication (wrong password, unknown user, pg_hba).
	ResultAuthFailed SessionResult = "auth_failed"
	// ResultClientLeft is a client that went away before the relay started.
	ResultClientLeft SessionResult = "client_left"
	// ResultCancel is a CancelRequest, forwarded or not.
	ResultCancel SessionResult = "cancel"
)

// Refusal causes passed to Observer.Refused: the Reason of the ClientError
// the client received, or one of these for refusals it could not be told.
const (
	// CauseLimit is a route at its max_connections.
	CauseLimit = "limit"
	// CauseStartupTimeout is a client that did not finish its startup in time.
	CauseStartupTimeout = "startup_timeout"
	// CauseClientProtocol is a client that broke the protocol.
	CauseClientProtocol = "client_protocol"
	// CauseUpstreamProtocol is a server that broke the protocol during
	// authentication.
	CauseUpstreamProtocol = "upstream_protocol"
	// CauseChannelBinding is a client that asked for SCRAM channel binding
	// where the proxy relays its own exchange (which cannot be bound).
	CauseChannelBinding = "channel_binding"
	// CauseLogin is a login the proxy made for the client (auth relay, or
	// auth auto where it steps in) that failed on the proxy's side: the
	// server's own refusals are forwarded and counted as auth_failed
	// sessions instead. The value keeps its first name for dashboards.
	CauseLogin = "relay_login"
	// CauseStoredPassword is a stored password (file, environment
	// variable or command) that could not be read.
	CauseStoredPassword = "stored_password"
)

// Observer receives the proxy's events, for metrics and health. Calls come
// from many goroutines at once and must not block. Nothing is called per
// relayed message: live byte counts are read with Server.RouteStats.
type Observer interface {
	// RoutesChanged is called with the names of the routes in service
	// when Listen succeeds and after each successful Reload.
	RoutesChanged(routes []string)
	// SessionStarted is called when a client connection is accepted.
	SessionStarted(route string)
	// SessionEnded is called once per accepted connection, when it closes.
	SessionEnded(route string, result SessionResult)
	// Refused is called for each refused connection with its cause: a
	// ClientError Reason such as "verification", "untrusted",
	// "upstream_unreachable", "client_protocol" or "limit".
	Refused(route, cause string)
	// UpstreamDialed is called after each upstream dial (TCP connect,
	// SSLRequest, TLS handshake and verification) with its duration and
	// error, nil when the server passed verify-full.
	UpstreamDialed(route string, took time.Duration, err error)
}

// RouteStats are one route's live counters.
type RouteStats struct {
	// Route is the route's name.
	Route string
	// Active is the number of client connections open now.
	Active int64
	// BytesToUpstream counts bytes relayed from clients to the server.
	BytesToUpstream int64
	// BytesToClient counts bytes relayed from the server to clients.
	BytesToClient int64
}

// nopObserver is used when Config.Observer is nil.
type nopObserver struct{}

func (nopObserver) RoutesChanged([]string)                      {}
func (nopObserver) SessionStarted(string)                       {}
func (nopObserver) SessionEnded(string, SessionResult)          {}
func (nopObserver) Refused(string, string)                      {}
func (nopObserver) UpstreamDialed(string, time.Duration, error) {}
