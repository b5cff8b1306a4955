package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// ClientTLSMode says how a route answers a client's SSLRequest.
type ClientTLSMode string

const (
	// ClientTLSAllow answers 'S' and accepts plaintext clients too (default).
	ClientTLSAllow ClientTLSMode = "allow"
	// ClientTLSDisable answers 'N': clients speak plaintext.
	ClientTLSDisable ClientTLSMode = "disable"
	// ClientTLSRequire answers 'S' and refuses plaintext startup messages.
	ClientTLSRequire ClientTLSMode = "require"
)

// ParseClientTLSMode validates a mode name; "" means allow.
func ParseClientTLSMode(s string) (ClientTLSMode, error) {
	switch ClientTLSMode(s) {
	case "", ClientTLSAllow:
		return ClientTLSAllow, nil
	case ClientTLSDisable, ClientTLSRequire:
		return ClientTLSMode(s), nil
	}
	return "", fmt.Errorf("client_tls must be allow, disable or require, not %q", s)
}

// DefaultStartupTimeout bounds everything before the relay starts: the
// client's first packets, the upstream dial and the authentication exchange.
// It matches PostgreSQL's authentication_timeout default.
const DefaultStartupTimeout = 60 * time.Second

// maxStartupPacket is the largest first packet accepted from a client, the
// same limit as the PostgreSQL server's MAX_STARTUP_PACKET_LENGTH.
const maxStartupPacket = 10000

// DialFunc opens a connection to the upstream that has passed verify-full.
type DialFunc func(ctx context.Context) (net.Conn, error)

// Route is one upstream and the local listeners that lead to it.
type Route struct {
	// Name identifies the route in logs; defaults to the upstream address.
	Name string
	// Listen are listen addresses: "HOST:PORT" for TCP, "unix:/DIR[:PORT]"
	// for a unix socket in libpq's layout (see ParseListenAddr).
	Listen []string
	// UnixSocketMode is the mode of the route's unix socket files; zero
	// means 0777 (every local user may connect, PostgreSQL's default
	// unix_socket_permissions). 0770 with UnixSocketGroup limits a route
	// (a stored-password one above all) to the members of a group.
	UnixSocketMode os.FileMode
	// UnixSocketGroup is the group of the route's unix socket files; empty
	// keeps the proxy's own group.
	UnixSocketGroup string
	// Listeners are already-open listeners used in addition to Listen
	// (tests, socket activation).
	Listeners []net.Listener
	// UpstreamAddr is the upstream host:port, shown in messages.
	UpstreamAddr string
	// Trust describes the trust anchors in a few words for hints, e.g.
	// "the roots in --ca-file /etc/pg/root.crt".
	Trust string
	// RepinCommand is the command that replaces the upstream's pin, named in
	// hints; empty for a route that trusts a CA file rather than a pin.
	RepinCommand string
	// Dial opens a verified upstream connection. Required unless Hosts is
	// set (then it is Hosts[0]'s).
	Dial DialFunc
	// Hosts, when set, are the upstream's hosts in order (libpq's host
	// list), each dialled and verified under its own name; a session
	// takes the first that connects and has the role TargetSessionAttrs
	// asks for. Unset: the one host UpstreamAddr, Dial.
	Hosts []UpstreamHost
	// TargetSessionAttrs is libpq's target_session_attrs: any (the
	// default), read-write, read-only, primary, standby, prefer-standby.
	// The role is read from the ParameterStatus messages PostgreSQL 14
	// and later send at the end of the login (in_hot_standby,
	// default_transaction_read_only).
	TargetSessionAttrs string
	// LoadBalanceHosts is libpq's load_balance_hosts: disable (the
	// default, in order) or random.
	LoadBalanceHosts string
	// DNSRecheck, when positive, resolves the hosts given by name again
	// this often and ends the sessions (and pre-dialled connections) held
	// to an address the name no longer resolves to; a failed lookup
	// changes nothing. Zero: off.
	DNSRecheck time.Duration
	// Resolve resolves a host name for DNSRecheck; nil means the system
	// resolver.
	Resolve ResolveFunc
	// ClientTLS is the client-side TLS mode; "" means allow.
	ClientTLS ClientTLSMode
	// TLSConfig is the server-side TLS configuration for clients. Required
	// unless ClientTLS is disable.
	TLSConfig *tls.Config
	// ClientTLSGenerated tells that TLSConfig holds a generated certificate
	// clients cannot verify (relay mode refuses it off loopback).
	ClientTLSGenerated bool
	// StartupTimeout bounds the phases before the relay; zero means
	// DefaultStartupTimeout.
	StartupTimeout time.Duration
	// Auth is who logs in upstream; "" means AuthAuto.
	Auth AuthMode
	// ChannelBinding is the channel binding of the proxy's own logins
	// (AuthRelay, and AuthAuto where it logs in): prefer (the default),
	// require or disable.
	ChannelBinding string
	// StoredPassword, with AuthRelay or AuthAuto, supplies the password
	// for every login the server asks a password for, instead of the
	// client (local trust: loopback and unix listeners only). It is called
	// for each login, so a rotated password needs no restart.
	StoredPassword func() ([]byte, error)
	// StoredRejected, when set, is called when the server refused a login
	// made with the stored password (SQLSTATE class 28), so that a cached
	// one can be dropped; it reports whether it dropped one. When it did,
	// the session logs in once more with a fresh password, on a new
	// upstream connection, before the client sees anything.
	StoredRejected func() bool
	// AskPasswordFrom is where auth auto may ask a client for its password
	// (to log in for it with SCRAM-SHA-256-PLUS) when TLSConfig is the
	// generated certificate, which clients cannot verify: the keywords
	// loopback (loopback and unix sockets), link (the client is on the
	// network of the address it connected to, not through a default
	// gateway) and private (both addresses private), and CIDR prefixes. nil
	// means DefaultAskPasswordFrom; an empty list never asks. Elsewhere
	// the client's own login is relayed. With a certificate of the route's
	// own (clients verify it) auto may ask anywhere.
	AskPasswordFrom []string

	// MaxConnections caps the route's sessions past admission; beyond it a
	// client gets FATAL 53300 too_many_connections. Zero means no limit.
	// CancelRequests are never counted.
	MaxConnections int
	// KeepAlive configures TCP keepalive on accepted client connections
	// (the upstream's is set on its dialer); nil keeps Go's default (on,
	// 15 s), Enable false turns it off.
	KeepAlive *net.KeepAliveConfig

	// Prewarm keeps this many upstream connections already through TCP,
	// the TLS negotiation, the handshake and verify-full, with nothing
	// sent, so a new client skips those round trips. Zero turns it off.
	Prewarm int
	// PrewarmMaxAge replaces a pre-dialled connection after this long; it
	// must stay below the server's authentication_timeout. Zero means
	// DefaultPrewarmMaxAge; at most 50 s (maxPrewarmMaxAge).
	PrewarmMaxAge time.Duration
	// TrustGeneration returns a number that changes whenever what Dial
	// verifies the upstream against changes (its pin written, replaced or
	// removed). A pre-dialled connection is tagged with the number read
	// before its dial, and one from another generation is closed, never
	// handed out. It is called before each pre-dial and each time a client
	// takes one, so it must be cheap (a stat, no fetch). nil means the
	// route's trust never changes while it runs.
	TrustGeneration func() uint64

	pool  *prewarmPool // set by the Server when Prewarm > 0
	holds *hostHolds   // hosts on hold (wrong role for a relayed login)
	// preferred is the host that last served a session with the wanted
	// role: the pre-dial pool dials it.
	preferred *atomic.Int32
	dnsStop   context.CancelFunc // ends the DNS recheck (startDNS)
	cancel    *cancelKeys        // which host serves which session's cancel key
	ask       *askRule           // AskPasswordFrom, parsed by validate
}

// Config is the whole proxy.
type Config struct {
	// Routes to serve; at least one.
	Routes []Route
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Observer receives session, refusal and dial events (metrics and
	// health); nil means none.
	Observer Observer
	// Relay is how authenticated sessions are relayed: RelayLoop (the
	// default; on Linux, event loops), RelayGoroutine or RelayPortable.
	Relay RelayEngine
	// RelayLoops is how many event loops relay sessions; zero means one
	// per four of GOMAXPROCS, at least one. Outside Linux it has no
	// effect.
	RelayLoops int
	// MaxStartupConnections bounds the connections in their startup phase
	// (accepted, not yet admitted), over all routes: at the bound the
	// proxy stops accepting until one is admitted or times out, and logs
	// it. Zero means DefaultMaxStartupConnections.
	MaxStartupConnections int
}

func (r *Route) validate() error {
	if len(r.Hosts) == 0 {
		if r.Dial == nil {
			return fmt.Errorf("route %s: no upstream dialer", r.Name)
		}
		r.Hosts = []UpstreamHost{{Addr: r.UpstreamAddr, Dial: r.Dial}}
	}
	for i, h := range r.Hosts {
		if h.Dial == nil {
			return fmt.Errorf("route %s: host %d (%s): no upstream dialer", r.Name, i+1, h.Addr)
		}
	}
	if r.Dial == nil {
		r.Dial = r.Hosts[0].Dial
	}
	if r.UpstreamAddr == "" {
		addrs := make([]string, len(r.Hosts))
		for i, h := range r.Hosts {
			addrs[i] = h.Addr
		}
		r.UpstreamAddr = strings.Join(addrs, ",")
	}
	var err error
	if r.TargetSessionAttrs, err = ParseTargetSessionAttrs(r.TargetSessionAttrs); err != nil {
		return fmt.Errorf("route %s: %w", r.Name, err)
	}
	switch r.LoadBalanceHosts {
	case "":
		r.LoadBalanceHosts = "disable"
	case "disable", "random":
	default:
		return fmt.Errorf("route %s: load_balance_hosts must be disable or random, not %q", r.Name, r.LoadBalanceHosts)
	}
	r.holds, r.cancel, r.preferred = &hostHolds{}, &cancelKeys{}, new(atomic.Int32)
	if len(r.Listen) == 0 && len(r.Listeners) == 0 {
		return fmt.Errorf("route %s: no listen address", r.Name)
	}
	unix := false
	for _, a := range r.Listen {
		la, err := ParseListenAddr(a)
		if err != nil {
			return fmt.Errorf("route %s: %w", r.Name, err)
		}
		unix = unix || la.Network == "unix"
	}
	mode, err := ParseClientTLSMode(string(r.ClientTLS))
	if err != nil {
		return fmt.Errorf("route %s: %w", r.Name, err)
	}
	r.ClientTLS = mode
	if unix && mode == ClientTLSRequire {
		return fmt.Errorf("route %s: client_tls=require cannot serve a unix socket: libpq never asks for TLS over one; use client_tls allow for this route, or put the socket in a route of its own", r.Name)
	}
	if mode != ClientTLSDisable && r.TLSConfig == nil {
		return fmt.Errorf("route %s: client_tls=%s needs a TLS certificate", r.Name, mode)
	}
	if r.TLSConfig != nil {
		// Offer ALPN "postgresql" as PostgreSQL 17 does (direct TLS
		// requires it); set once here, not per connection.
		r.TLSConfig = r.TLSConfig.Clone()
		r.TLSConfig.NextProtos = []string{alpnPostgres}
	}
	if err := CheckLimits(r.MaxConnections, r.Prewarm); err != nil {
		return fmt.Errorf("route %s: %w", r.Name, err)
	}
	if r.UnixSocketMode&^0o777 != 0 {
		return fmt.Errorf("route %s: unix_socket_permissions %04o: only the permission bits (0000 to 0777)", r.Name, r.UnixSocketMode)
	}
	if r.PrewarmMaxAge != 0 {
		if err := CheckPrewarmMaxAge(r.PrewarmMaxAge); err != nil {
			return fmt.Errorf("route %s: %w", r.Name, err)
		}
	}
	if r.StartupTimeout <= 0 {
		r.StartupTimeout = DefaultStartupTimeout
	}
	if r.Auth, err = ParseAuthMode(string(r.Auth)); err != nil {
		return fmt.Errorf("route %s: %w", r.Name, err)
	}
	if r.ChannelBinding, err = ParseChannelBinding(r.ChannelBinding); err != nil {
		return fmt.Errorf("route %s: %w", r.Name, err)
	}
	if r.ask, err = parseAskPasswordFrom(r.AskPasswordFrom); err != nil {
		return fmt.Errorf("route %s: %w", r.Name, err)
	}
	switch {
	case r.Auth == AuthRelay:
		return r.checkRelayListeners()
	case r.StoredPassword == nil:
		return nil
	case r.Auth == AuthPassthrough:
		return fmt.Errorf("route %s: a stored password needs auth relay or auto: in passthrough the client logs in itself", r.Name)
	}
	// auth auto with a stored password: the local-trust rule of relay
	// mode. Without one, auto decides per connection (noAsk).
	return r.checkRelayListeners()
}

// CheckLimits checks a route's max_connections and prewarm (Route's
// MaxConnections and Prewarm).
func CheckLimits(maxConnections, prewarm int) error {
	if maxConnections < 0 {
		return fmt.Errorf("max_connections must be 0 (no limit) or more, not %d", maxConnections)
	}
	if prewarm < 0 || prewarm > 1000 {
		return fmt.Errorf("prewarm must be between 0 (off) and 1000, not %d", prewarm)
	}
	return nil
}

// CheckPrewarmMaxAge checks prewarm_max_age (Route.PrewarmMaxAge, where
// zero means DefaultPrewarmMaxAge): 1s to 50s (maxPrewarmMaxAge).
func CheckPrewarmMaxAge(d time.Duration) error {
	switch {
	case d <= 0:
		return fmt.Errorf("prewarm_max_age must be positive (1s to %s), not %s", maxPrewarmMaxAge, d)
	case d < time.Second:
		return fmt.Errorf("prewarm_max_age must be at least 1s (and below the server's authentication_timeout), not %s", d)
	case d > maxPrewarmMaxAge:
		return fmt.Errorf("prewarm_max_age must be at most %s, below PostgreSQL's authentication_timeout (60s by default), after which the server has closed a connection that has not logged in; not %s",
			maxPrewarmMaxAge, d)
	}
	return nil
}

// noAsk says why auth auto may not ask the client of a connection (its
// local and remote addresses) for its password, or "" when it may. Auto
// asks only inside the client's TLS: with a certificate of the route's own
// anywhere, with the generated one (which clients cannot verify, so anyone
// on their path could pose as the proxy) only where AskPasswordFrom allows.
func (r *Route) noAsk(local, remote net.Addr) string {
	if r.Auth != AuthAuto || !r.ClientTLSGenerated {
		return ""
	}
	rule := r.ask
	if rule == nil {
		rule, _ = parseAskPasswordFrom(nil)
	}
	if local != nil && remote != nil && rule.allows(local, remote) {
		return ""
	}
	where, from := "this listener", "the client"
	if local != nil && remote != nil {
		where, from = local.String(), remote.String()
	}
	return "the proxy asks for passwords with its generated certificate, which clients cannot verify, only from " + rule.describe() + " (ask_password_from), and the client " + from + " connected to " + where + " is not"
}

// checkRelayListeners enforces relay mode's rule: the client's password
// crosses the local hop in clear unless that hop is TLS, so a listener
// reachable from other machines must require TLS; stored credentials
// (local trust) are for loopback and unix sockets only.
func (r *Route) checkRelayListeners() error {
	var addrs []string
	for _, a := range r.Listen {
		la, _ := ParseListenAddr(a)
		if la.Network == "unix" || loopbackHost(la.Address) {
			continue
		}
		addrs = append(addrs, a)
	}
	for _, l := range r.Listeners {
		if !isLoopback(l.Addr()) {
			addrs = append(addrs, l.Addr().String())
		}
	}
	return r.relayExposure(addrs)
}

// relayExposure says why a relay route may not serve the given
// non-loopback addresses, or nil when it may.
func (r *Route) relayExposure(addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	where := strings.Join(addrs, ", ")
	if r.StoredPassword != nil {
		return fmt.Errorf("route %s: a stored password lets anyone who reaches the listener in, and %s is not loopback: listen on 127.0.0.1, ::1 or a unix socket for this route",
			r.Name, where)
	}
	if r.ClientTLS != ClientTLSRequire {
		return fmt.Errorf("route %s: auth relay asks clients for their password in clear on the local hop, and %s is not loopback: set client_tls: require (with client_tls_cert and client_tls_key) for this route, or listen on 127.0.0.1, ::1 or a unix socket",
			r.Name, where)
	}
	if r.ClientTLSGenerated {
		return fmt.Errorf("route %s: auth relay on %s, which is not loopback, with the generated client TLS certificate: clients cannot verify it, so anyone on their path could collect passwords; give this route client_tls_cert and client_tls_key and have clients use sslmode=verify-full, or listen on loopback or a unix socket",
			r.Name, where)
	}
	return nil
}

// loopbackHost reports whether a TCP listen address is on loopback only.
func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		// Checked again on the bound address: the name could resolve
		// elsewhere.
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
