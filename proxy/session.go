package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// cancelWait bounds how long a forwarded CancelRequest waits for the server
// to close the cancel connection (which tells it was processed).
const cancelWait = 5 * time.Second

// codeTooManyConnections is SQLSTATE too_many_connections.
const codeTooManyConnections = "53300"

// session is one client connection.
type session struct {
	s      *Server
	route  *Route
	state  *routeState
	conn   net.Conn // the accepted connection, as the server tracks it
	client net.Conn // becomes the *tls.Conn after an SSLRequest
	tls    bool
	log    *slog.Logger
	start  time.Time
	result SessionResult
}

// handle runs one client connection from its first byte to its close.
// slot is the connection's startup slot (max_startup_connections): given
// back once the connection is admitted or refused.
func (s *Server) handle(ctx context.Context, r *Route, st *routeState, conn net.Conn, slot *startupSlot) {
	defer conn.Close()
	ss := &session{s: s, route: r, state: st, conn: conn, client: conn, start: time.Now(), result: ResultClientLeft,
		log: s.log.With("route", r.Name, "client", conn.RemoteAddr().String())}
	defer func() { s.obs.SessionEnded(r.Name, ss.result) }()
	if tc, ok := conn.(*net.TCPConn); ok && r.KeepAlive != nil {
		_ = tc.SetKeepAliveConfig(*r.KeepAlive)
	}
	deadline := ss.start.Add(r.StartupTimeout)
	_ = conn.SetDeadline(deadline)

	pkt, err := ss.admit()
	if err != nil {
		ss.refuse(err)
		lingerClose(conn)
		return
	}
	if pkt.code == codeCancelRequest {
		ss.result = ResultCancel
		ss.forwardCancel(ctx, pkt)
		return
	}
	params, err := startupParams(pkt)
	if err != nil {
		ss.refuse(protocolError("malformed startup message: %v", err))
		return
	}
	ss.log = ss.log.With("user", params["user"], "database", params["database"], "client_tls", ss.tls)
	admitted := st.admit(r.MaxConnections)
	slot.release()
	if !admitted {
		ss.refuse(&clientError{Reason: chain.ReasonLimit,
			Message: fmt.Sprintf("pgverifyproxy: sorry, too many clients already: route %s allows %d connections (max_connections)", r.Name, r.MaxConnections),
			Hint:    "close idle connections (or use a pool with fewer connections), or raise max_connections for this route"})
		return
	}
	defer st.admitted.Add(-1)

	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var clientPW []byte
	defer func() { zero(clientPW) }()
	up, ax, key, ok := ss.connect(dctx, r, pkt, params, deadline, &clientPW)
	if !ok {
		return
	}
	defer up.Close()
	if key != nil && r.cancel != nil {
		defer r.cancel.remove(key)
	}
	if ax.mechanism != "" {
		ss.log.Info("proxy login", "upstream_auth", ax.mechanism, "password_from", ax.passwordFrom, "channel_bound", ax.bound)
	} else {
		ss.log.Debug("authenticated; relaying")
	}
	ss.relay(up)
}

// clientLeft logs a client that closed during authentication. One that
// leaves right when the proxy asks for its password is explained: libpq
// and pgx with channel_binding=require refuse a cleartext request (and
// psql closes to prompt for a password, then reconnects).
func (ss *session) clientLeft(ax *authExchange) {
	d := time.Since(ss.start).Round(time.Millisecond).String()
	if ax.passwordFrom != "client" {
		ss.log.Info("client left during authentication", "duration", d)
		return
	}
	ss.log.Info("client left when the proxy asked for its password", "duration", d,
		"hint", "psql does this to prompt for a password; a client with channel_binding=require does it because channel binding cannot cross the proxy: set channel_binding=prefer (libpq's default) on that client, and the proxy binds its own login to the verified server")
}

// relay runs the raw relay after authentication (internal/relay) and logs
// the session's end. The caller has registered up with upstreamOpened, so
// that closing the server closes up before the client.
func (ss *session) relay(up net.Conn) {
	_ = ss.client.SetDeadline(time.Time{})
	_ = up.SetDeadline(time.Time{})
	ss.result = ResultCompleted
	st := ss.s.relay.Relay(ss.client, up, &ss.state.counters, ss.s.relayRegister(ss.conn))
	attrs := []any{
		"duration", time.Since(ss.start).Round(time.Millisecond).String(),
		"bytes_to_upstream", st.ClientToUpstream,
		"bytes_to_client", st.UpstreamToClient,
		"closed_by", string(st.ClosedBy),
		"relay", string(st.Engine),
	}
	if st.Fallback != nil {
		attrs = append(attrs, "relay_fallback", st.Fallback.Error())
	}
	if st.Err != nil && !errors.Is(st.Err, net.ErrClosed) {
		attrs = append(attrs, "error", st.Err.Error())
	}
	ss.log.Info("session ended", attrs...)
}

// lingerClose half-closes a refused client and discards what it still sends
// for a moment, so that the error just written is not lost to a TCP reset
// (closing a socket with unread input resets the connection).
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.CopyN(io.Discard, c, 1<<16)
	c.Close()
}

// dialFailed is what the client sees when its upstream dial failed: the
// upstream's fault, or the startup deadline running out (a slow client, or
// a slow upstream) or a shutdown, which are not counted against the
// upstream.
func (ss *session) dialFailed(ctx context.Context, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &clientError{Reason: chain.ReasonStartupTimeout, Cause: err,
			Message: fmt.Sprintf("pgverifyproxy: startup_timeout (%s) ran out while connecting to upstream %s: %v", ss.route.StartupTimeout, ss.route.UpstreamAddr, err),
			Hint:    "send the startup message sooner, or raise startup_timeout if the upstream is slow to answer"}
	case ctx.Err() != nil:
		return &clientError{Reason: chain.ReasonShutdown, Cause: err,
			Message: "pgverifyproxy: the proxy is shutting down", Hint: "connect again in a moment"}
	}
	return upstreamError(ss.route, err)
}

// refuse reports err to the client when it can be reported, logs it, and
// counts it: as a refusal with its reason, or, for a reason that is no
// refusal (the proxy shutting down), as a session of that result.
func (ss *session) refuse(err error) {
	var ce *clientError
	if errors.As(err, &ce) {
		// The startup deadline may just have passed: give the error
		// itself a moment to go out.
		_ = ss.client.SetWriteDeadline(time.Now().Add(time.Second))
		writeClientError(ss.client, ce)
		attrs := []any{"reason", ce.Reason.String(), "error", ce.Message}
		if ce.Hint != "" {
			attrs = append(attrs, "hint", ce.Hint)
		}
		if !ce.Reason.Refusal() {
			ss.result = ResultShutdown
			ss.log.Info("connection closed before its relay started", attrs...)
			return
		}
		ss.refused(ce.Reason)
		ss.log.Warn("connection refused", attrs...)
		return
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		ss.log.Debug("client closed before startup completed")
		return
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		ss.refused(chain.ReasonStartupTimeout)
		ss.log.Warn("connection refused", "reason", chain.ReasonStartupTimeout.String(), "error", "client did not complete startup within "+ss.route.StartupTimeout.String())
		return
	}
	ss.refused(chain.ReasonClientProtocol)
	ss.log.Warn("connection refused", "reason", chain.ReasonClientProtocol.String(), "error", err.Error())
}

// refused records a refusal with its cause.
func (ss *session) refused(cause chain.Reason) {
	ss.result = ResultRefused
	ss.s.obs.Refused(ss.route.Name, cause)
}

// forwardCancel sends a CancelRequest to the upstream over a new verified
// connection, waits for the server to close it, then closes the client.
func (ss *session) forwardCancel(ctx context.Context, pkt *startupPacket) {
	ctx, cancel := context.WithTimeout(ctx, cancelWait+ss.route.StartupTimeout)
	defer cancel()
	var up net.Conn
	var err error
	if r := ss.route; len(r.Hosts) > 1 {
		// The host that serves the session whose key this is; a key the
		// proxy does not know (a session that ended) is not sent anywhere.
		hi, ok := r.cancel.lookup(cancelBody(pkt.raw))
		if !ok {
			ss.log.Info("cancel request for no session of this proxy: not forwarded")
			return
		}
		ss.log = ss.log.With("host", r.Hosts[hi].Addr)
		up, _, err = ss.dialHost(ctx, r, hi)
	} else {
		up, _, err = ss.s.upstreamConn(ctx, ss.route)
	}
	if err != nil {
		ss.log.Warn("cancel request not forwarded", "reason", upstreamError(ss.route, err).Reason.String(), "error", err.Error())
		return
	}
	defer up.Close()
	_ = up.SetDeadline(time.Now().Add(cancelWait))
	if _, err := up.Write(pkt.raw); err != nil {
		ss.log.Warn("cancel request not forwarded", "error", "upstream: writing CancelRequest: "+err.Error())
		return
	}
	// The server closes the connection once it has handled the request.
	_, _ = io.Copy(io.Discard, up)
	ss.log.Info("cancel request forwarded")
}

// loginOutcome is what one login attempt came to.
type loginOutcome int

const (
	// loginOK: authenticated; the caller relays and closes the upstream.
	loginOK loginOutcome = iota
	// loginDone: refused or ended, the client answered; nothing to close.
	loginDone
	// loginRetry: the server refused a cached stored password, which was
	// dropped, before anything reached the client: try once more.
	loginRetry
	// loginNext: this host cannot serve the session (unreachable, or the
	// wrong role before the client took part): try the next one.
	loginNext
)

// login dials (or takes a pre-dialled) upstream connection to one host,
// sends the client's StartupMessage, runs the authentication exchange and,
// when the route has several hosts or wants a role, checks the role.
// a.mayRetry allows a loginRetry outcome (the first attempt only). On
// loginNext why says why the host was skipped.
func (ss *session) login(dctx context.Context, r *Route, pkt *startupPacket, params map[string]string, deadline time.Time, a loginAttempt) (net.Conn, *authExchange, []byte, loginOutcome, *clientError) {
	// A relay route with a stored password will log in with it: read it
	// before dialling, so that a failing password_command opens no
	// upstream connection and costs no failed login at the server.
	var stored func() ([]byte, error)
	if r.StoredPassword != nil {
		stored = r.StoredPassword
		if r.Auth == AuthRelay {
			pw, err := r.StoredPassword()
			if err != nil {
				ss.refuse(storedPasswordError(err))
				return nil, nil, nil, loginDone, nil
			}
			defer zero(pw)
			stored = func() ([]byte, error) { return slices.Clone(pw), nil }
		}
	}
	up, warm, err := a.conn, true, error(nil)
	if up == nil {
		up, warm, err = ss.dialHost(dctx, r, a.host)
	}
	if err != nil {
		if len(r.Hosts) > 1 && dctx.Err() == nil {
			return nil, nil, nil, loginNext, upstreamError(r.host(a.host), err)
		}
		ss.refuse(ss.dialFailed(dctx, err))
		return nil, nil, nil, loginDone, nil
	}
	if warm {
		ss.log = ss.log.With("prewarmed", true)
	}
	// From here closing the session (Server.Close) closes up too, so an
	// authentication exchange waiting for the server ends at once.
	ss.s.upstreamOpened(ss.conn, up)
	_ = up.SetDeadline(deadline)
	// The client's StartupMessage goes to the server as it came, in every
	// auth mode: the server negotiates the protocol with the client itself.
	if _, err := up.Write(pkt.raw); err != nil {
		up.Close()
		if len(r.Hosts) > 1 {
			return nil, nil, nil, loginNext, upstreamError(r.host(a.host), err)
		}
		ss.refuse(upstreamError(r, err))
		return nil, nil, nil, loginDone, nil
	}
	ax := &authExchange{client: ss.client, upstream: up, clientTLS: ss.tls, mode: r.Auth, user: params["user"],
		upstreamTLS: upstreamTLSState(up), channelBinding: r.ChannelBinding, stored: stored, storedRejected: r.StoredRejected,
		retryStale: a.mayRetry, hold: r.TargetSessionAttrs != AttrsAny, clientPassword: a.clientPW,
		otherHosts: len(r.Hosts) > 1,
		whyNoAsk:   func() string { return r.noAsk(ss.conn.LocalAddr(), ss.conn.RemoteAddr()) },
		fallback: func(reason string) {
			ss.log.Info("auth auto: relaying the client's own login instead of logging in for it", "why", reason)
		}}
	err = ax.run()
	if err == nil {
		if len(r.Hosts) == 1 && r.TargetSessionAttrs == AttrsAny {
			return up, ax, nil, loginOK, nil
		}
		key, next, why := ss.checkRole(r, a, up, ax)
		if next == loginOK {
			return up, ax, key, loginOK, nil
		}
		up.Close()
		return nil, nil, nil, next, why
	}
	up.Close()
	switch {
	case errors.Is(err, errStaleStored):
		return nil, nil, nil, loginRetry, nil
	case errors.Is(err, errHostUnavailable):
		return nil, nil, nil, loginNext, &clientError{Reason: chain.ReasonUpstreamClosed, Cause: err,
			Message: fmt.Sprintf("pgverifyproxy: upstream host %s is shutting down or starting up", r.Hosts[a.host].Addr)}
	case len(r.Hosts) > 1 && !ax.wrote && !ax.clientInvolved && errors.As(err, new(*upstreamIOError)):
		// The host closed before the client saw anything (a pre-dialled
		// connection to a server that has since stopped): the next.
		return nil, nil, nil, loginNext, upstreamLost(r.host(a.host), err)
	case errors.Is(err, errUpstreamRejected):
		ss.result = ResultAuthFailed
		attrs := []any{}
		if ax.mechanism != "" {
			attrs = append(attrs, "upstream_auth", ax.mechanism, "password_from", ax.passwordFrom)
		}
		ss.log.Info("session refused by upstream during authentication (its error was forwarded to the client)", attrs...)
	case errors.Is(err, errClientLeft):
		ss.clientLeft(ax)
	case errors.As(err, new(*upstreamIOError)):
		ss.refuse(upstreamLost(r, err))
	default:
		ss.refuse(err)
	}
	return nil, nil, nil, loginDone, nil
}
