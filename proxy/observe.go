package proxy

import (
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

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
	// ResultShutdown is a connection still in its startup phase when the
	// proxy shut down (chain.ReasonShutdown): not a refusal.
	ResultShutdown SessionResult = "shutdown"
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
	// Refused is called for each refused connection with its cause (one
	// for which Reason.Refusal holds): the Reason of the FATAL error the
	// client received, and the reason field of the log's "connection
	// refused" line.
	Refused(route string, cause chain.Reason)
	// UpstreamDialed is called after each upstream dial (TCP connect,
	// SSLRequest, TLS handshake and verification) with the host dialled
	// (host:port as configured: one of the route's hosts), its duration
	// and error, nil when the server passed verify-full.
	UpstreamDialed(route, host string, took time.Duration, err error)
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
	// Starting is the number of connections in their startup phase now
	// (accepted, not yet admitted), which Config.MaxStartupConnections
	// bounds over all routes.
	Starting int64
	// StartupWaits counts the accepts that waited for a startup slot.
	StartupWaits int64
}

// nopObserver is used when Config.Observer is nil.
type nopObserver struct{}

func (nopObserver) RoutesChanged([]string)                              {}
func (nopObserver) SessionStarted(string)                               {}
func (nopObserver) SessionEnded(string, SessionResult)                  {}
func (nopObserver) Refused(string, chain.Reason)                        {}
func (nopObserver) UpstreamDialed(string, string, time.Duration, error) {}
