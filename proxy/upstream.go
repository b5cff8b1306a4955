package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// UpstreamHost is one host of a route's upstream list: dialled and verified
// under its own name (its Dial does verify-full against it).
type UpstreamHost struct {
	// Addr is host:port as configured, for messages and logs.
	Addr string
	// Dial opens a connection to this host that passed verify-full.
	Dial DialFunc
}

// Target session attributes (libpq's target_session_attrs).
const (
	AttrsAny           = "any"
	AttrsReadWrite     = "read-write"
	AttrsReadOnly      = "read-only"
	AttrsPrimary       = "primary"
	AttrsStandby       = "standby"
	AttrsPreferStandby = "prefer-standby"
)

// ParseTargetSessionAttrs checks target_session_attrs; "" means any.
func ParseTargetSessionAttrs(s string) (string, error) {
	switch s {
	case "":
		return AttrsAny, nil
	case AttrsAny, AttrsReadWrite, AttrsReadOnly, AttrsPrimary, AttrsStandby, AttrsPreferStandby:
		return s, nil
	}
	return "", fmt.Errorf("target_session_attrs must be any, read-write, read-only, primary, standby or prefer-standby, not %q", s)
}

// serverRole is what the server's ParameterStatus messages said of it.
type serverRole struct {
	// hotStandby is in_hot_standby; readOnly is
	// default_transaction_read_only. Both reported by PostgreSQL 14 and
	// later at the end of the login; known tells whether they were.
	hotStandby, readOnly bool
	knownStandby         bool
	knownReadOnly        bool
}

// matches tells whether the role satisfies attrs (libpq's rules; pass 0 of
// prefer-standby wants a standby, pass 1 takes anything), and whether the
// answer is known.
func (r serverRole) matches(attrs string, pass int) (ok, known bool) {
	switch attrs {
	case AttrsAny:
		return true, true
	case AttrsReadWrite:
		return !r.hotStandby && !r.readOnly, r.knownStandby && r.knownReadOnly
	case AttrsReadOnly:
		return r.hotStandby || r.readOnly, r.knownStandby && r.knownReadOnly
	case AttrsPrimary:
		return !r.hotStandby, r.knownStandby
	case AttrsStandby:
		return r.hotStandby, r.knownStandby
	case AttrsPreferStandby:
		if pass > 0 {
			return true, true
		}
		return r.hotStandby, r.knownStandby
	}
	return false, false
}

// describe says what the server is, for messages.
func (r serverRole) describe() string {
	switch {
	case r.hotStandby:
		return "a hot standby"
	case r.readOnly:
		return "a primary with default_transaction_read_only on"
	}
	return "a primary (read-write)"
}

// afterLogin is what the server sent between AuthenticationOk and the
// first ReadyForQuery: the raw messages (to forward), the role, and the
// cancel key.
type afterLogin struct {
	raw       []byte
	role      serverRole
	cancelKey []byte // BackendKeyData: process ID and secret key
}

// maxAfterLogin bounds the messages the proxy holds between
// AuthenticationOk and ReadyForQuery (ParameterStatus, BackendKeyData,
// notices): a few hundred bytes from a real server.
const maxAfterLogin = 1 << 20

// readAfterLogin reads the server's messages up to and including the
// first ReadyForQuery. An ErrorResponse there ends the login: it is
// returned in raw with errUpstreamRejected.
func readAfterLogin(up interface{ Read([]byte) (int, error) }) (*afterLogin, error) {
	al := &afterLogin{}
	for {
		m, err := readMessage(up, maxUpstreamAuthMessage)
		if err != nil {
			return nil, &upstreamIOError{err: fmt.Errorf("upstream: reading the messages after AuthenticationOk: %w", err)}
		}
		if len(al.raw)+len(m.raw) > maxAfterLogin {
			return nil, upstreamProtocol(fmt.Sprintf("upstream sent more than %d bytes between AuthenticationOk and ReadyForQuery", maxAfterLogin))
		}
		al.raw = append(al.raw, m.raw...)
		switch m.typ {
		case 'S':
			name, value, ok := parameterStatus(m.body())
			if !ok {
				return nil, upstreamProtocol("upstream sent a malformed ParameterStatus")
			}
			switch name {
			case "in_hot_standby":
				al.role.hotStandby, al.role.knownStandby = value == "on", true
			case "default_transaction_read_only":
				al.role.readOnly, al.role.knownReadOnly = value == "on", true
			}
		case 'K':
			al.cancelKey = slices.Clone(m.body())
		case 'E':
			return al, errUpstreamRejected
		case 'Z':
			return al, nil
		case 'N':
		default:
			return nil, upstreamProtocol(fmt.Sprintf("upstream sent unexpected message %q before ReadyForQuery", m.typ))
		}
	}
}

// parameterStatus splits a ParameterStatus body: name NUL value NUL.
func parameterStatus(b []byte) (name, value string, ok bool) {
	parts := strings.Split(string(b), "\x00")
	if len(parts) != 3 || parts[2] != "" {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// hostOrder returns the order in which to try a route's hosts: as
// configured, or shuffled with load_balance_hosts random; hosts on hold
// go last.
func (r *Route) hostOrder(holds *hostHolds) []int {
	order := make([]int, len(r.Hosts))
	for i := range order {
		order[i] = i
	}
	if r.LoadBalanceHosts == "random" {
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	if holds != nil && len(order) > 1 {
		slices.SortStableFunc(order, func(a, b int) int {
			ha, hb := holds.held(r.Hosts[a].Addr), holds.held(r.Hosts[b].Addr)
			switch {
			case ha == hb:
				return 0
			case ha:
				return 1
			}
			return -1
		})
	}
	return order
}

// hostHoldTime is how long a host that had the wrong role for a relayed
// login goes to the back of the order.
const hostHoldTime = 10 * time.Second

// hostHolds are the hosts of a route on hold: they answered with the
// wrong role to a login the proxy could not move to another host.
type hostHolds struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (h *hostHolds) hold(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.until == nil {
		h.until = map[string]time.Time{}
	}
	h.until[addr] = time.Now().Add(hostHoldTime)
}

func (h *hostHolds) held(addr string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return time.Now().Before(h.until[addr])
}

// cancelKeys maps a session's BackendKeyData to the host that serves it,
// so that a CancelRequest reaches that host.
type cancelKeys struct {
	mu   sync.Mutex
	host map[string]int
}

func (c *cancelKeys) add(key []byte, host int) {
	if len(key) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.host == nil {
		c.host = map[string]int{}
	}
	c.host[string(key)] = host
}

func (c *cancelKeys) remove(key []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.host, string(key))
}

// lookup returns the host of a CancelRequest's key (the request's body
// after its code: process ID and secret).
func (c *cancelKeys) lookup(cancelBody []byte) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.host[string(cancelBody)]
	return h, ok
}

// cancelBody returns a CancelRequest's process ID and secret key: what
// BackendKeyData carried.
func cancelBody(raw []byte) []byte {
	if len(raw) < 8 || binary.BigEndian.Uint32(raw[0:4]) != uint32(len(raw)) {
		return nil
	}
	return raw[8:]
}

// host returns a copy of r that names host hi alone, for the messages of
// an error on that host.
func (r *Route) host(hi int) *Route {
	h := *r
	h.UpstreamAddr = r.Hosts[hi].Addr
	return &h
}

// connect logs the session in on the first of the route's hosts that
// connects and has the role the route wants (target_session_attrs), as
// libpq goes through its host list: in order (or shuffled with
// load_balance_hosts random), hosts on hold last, and with prefer-standby
// a second pass that takes any host. It answers the client itself when it
// fails (ok false). key is the session's cancel key when the route has
// several hosts (the caller removes it at the end).
func (ss *session) connect(dctx context.Context, r *Route, pkt *startupPacket, params map[string]string, deadline time.Time, clientPW *[]byte) (up net.Conn, ax *authExchange, key []byte, ok bool) {
	if len(r.Hosts) == 0 {
		// A route that did not go through validate (tests): its one host.
		rc := *r
		rc.Hosts = []UpstreamHost{{Addr: r.UpstreamAddr, Dial: r.Dial}}
		if rc.TargetSessionAttrs == "" {
			rc.TargetSessionAttrs = AttrsAny
		}
		r = &rc
	}
	order := r.hostOrder(r.holds)
	passes := 1
	if r.TargetSessionAttrs == AttrsPreferStandby {
		passes = 2
	}
	var last *clientError
	// With prewarm, a pre-dialled connection to the host that served last
	// goes first (a topology unchanged since, the host libpq's order
	// picks).
	var warm *hostConn
	if len(r.Hosts) > 1 {
		if warm = takeWarm(r); warm != nil {
			order = append([]int{warm.host}, slices.DeleteFunc(slices.Clone(order), func(h int) bool { return h == warm.host })...)
			defer func() {
				if warm != nil {
					warm.Conn.Close()
				}
			}()
		}
	}
	for pass := 0; pass < passes; pass++ {
		for _, hi := range order {
			for attempt := 0; ; attempt++ {
				a := loginAttempt{host: hi, pass: pass, mayRetry: attempt == 0, clientPW: clientPW}
				if warm != nil && hi == warm.host {
					a.conn, warm = warm.Conn, nil
				}
				var next loginOutcome
				var why *clientError
				up, ax, key, next, why = ss.login(dctx, r, pkt, params, deadline, a)
				switch next {
				case loginOK:
					ss.s.upstreamChosen(ss.conn, r, hi, up)
					return up, ax, key, true
				case loginDone:
					return nil, nil, nil, false
				case loginRetry:
					ss.log.Info("the server refused the cached stored password: logging in once more with a fresh one")
					continue
				}
				last = why
				if len(r.Hosts) > 1 {
					ss.log.Info("upstream host skipped", "host", r.Hosts[hi].Addr, "why", why.Message)
				}
				break
			}
		}
	}
	if last == nil {
		last = &clientError{Reason: chain.ReasonUpstreamProtocol, Message: "pgverifyproxy: no upstream host"}
	}
	if len(r.Hosts) > 1 {
		last = &clientError{Reason: last.Reason, Cause: last.Cause,
			Message: fmt.Sprintf("pgverifyproxy: no host of upstream %s could serve this session (target_session_attrs=%s); the last: %s",
				r.UpstreamAddr, r.TargetSessionAttrs, strings.TrimPrefix(last.Message, "pgverifyproxy: ")),
			Hint: last.Hint}
	}
	ss.refuse(last)
	return nil, nil, nil, false
}

// loginAttempt is one login on one host.
type loginAttempt struct {
	host     int  // index in Route.Hosts
	pass     int  // prefer-standby's second pass takes any role
	mayRetry bool // a refused cached stored password may be retried
	clientPW *[]byte
	conn     net.Conn // a pre-dialled connection to the host, or nil
}

// hostConn is a pre-dialled connection of a host list, with the host it
// goes to.
type hostConn struct {
	net.Conn
	host int
}

// dialPreferred pre-dials the host of r that last served a session with
// the wanted role (the prewarm pool's dialer for a host list).
func (s *Server) dialPreferred(ctx context.Context, r *Route) (net.Conn, error) {
	h := int(r.preferred.Load())
	c, err := s.dialReported(ctx, r, r.Hosts[h].Addr, r.Hosts[h].Dial)
	if err != nil {
		return nil, err
	}
	return &hostConn{Conn: c, host: h}, nil
}

// takeWarm returns a pre-dialled connection of a host list to its
// preferred host, closing those to a host that is no longer preferred;
// nil when the pool has none.
func takeWarm(r *Route) *hostConn {
	if r.pool == nil {
		return nil
	}
	for {
		c := r.pool.take()
		if c == nil {
			return nil
		}
		hc, ok := c.(*hostConn)
		if ok && hc.host == int(r.preferred.Load()) {
			return hc
		}
		c.Close()
	}
}

// dialHost opens a verified connection to host hi of r: the attempt's
// pre-dialled one, the route pool's when it has one host, else a dial.
func (ss *session) dialHost(ctx context.Context, r *Route, hi int) (net.Conn, bool, error) {
	if len(r.Hosts) == 1 {
		return ss.s.upstreamConn(ctx, r)
	}
	c, err := ss.s.dialReported(ctx, r, r.Hosts[hi].Addr, r.Hosts[hi].Dial)
	return c, false, err
}

// checkRole reads what the server sends after AuthenticationOk up to
// ReadyForQuery, and decides whether this host serves the session. On
// loginOK the client has everything the server sent; on loginNext nothing
// reached the client and up is closed by the caller.
func (ss *session) checkRole(r *Route, a loginAttempt, up net.Conn, ax *authExchange) (key []byte, next loginOutcome, why *clientError) {
	al, err := readAfterLogin(up)
	switch {
	case errors.Is(err, errUpstreamRejected):
		if ferr := ax.flushHeld(); ferr == nil {
			_, _ = ss.client.Write(al.raw)
		}
		ss.result = ResultAuthFailed
		ss.log.Info("session refused by upstream after authentication (its error was forwarded to the client)", "host", r.Hosts[a.host].Addr)
		return nil, loginDone, nil
	case err != nil:
		var ce *clientError
		if !errors.As(err, &ce) {
			ce = upstreamLost(r.host(a.host), err)
		}
		if ax.hold {
			return nil, loginNext, ce
		}
		ss.refuse(ce)
		return nil, loginDone, nil
	}
	ok, known := al.role.matches(r.TargetSessionAttrs, a.pass)
	if !known && ax.hold {
		// A server older than PostgreSQL 14 reports no role: where the
		// proxy logged in itself, ask it, as libpq does, before the
		// client sees anything.
		if role, err := queryRole(up); err == nil {
			al.role = role
			ok, known = al.role.matches(r.TargetSessionAttrs, a.pass)
		} else {
			var ce *clientError
			if !errors.As(err, &ce) {
				ce = upstreamLost(r.host(a.host), err)
			}
			return nil, loginNext, ce
		}
	}
	if ok && known {
		if err := ax.flushHeld(); err != nil {
			ss.log.Info("client left", "error", err.Error())
			return nil, loginDone, nil
		}
		if _, err := ss.client.Write(al.raw); err != nil {
			ss.log.Info("client left", "error", err.Error())
			return nil, loginDone, nil
		}
		if r.cancel != nil {
			r.cancel.add(al.cancelKey, a.host)
		}
		if r.preferred != nil {
			r.preferred.Store(int32(a.host))
		}
		if len(r.Hosts) > 1 {
			ss.log = ss.log.With("host", r.Hosts[a.host].Addr, "upstream_addr", up.RemoteAddr().String())
		}
		return al.cancelKey, loginOK, nil
	}
	what := al.role.describe()
	if !known {
		what = "a server that does not report in_hot_standby and default_transaction_read_only (PostgreSQL 13 or older)"
	}
	why = &clientError{Reason: chain.ReasonUpstreamRole,
		Message: fmt.Sprintf("pgverifyproxy: upstream host %s is %s, and this route wants target_session_attrs=%s", r.Hosts[a.host].Addr, what, r.TargetSessionAttrs),
		Hint:    "connect again: the proxy tries the route's next host (this one is put last for a few seconds)"}
	if ax.hold {
		return nil, loginNext, why
	}
	// The client answered this server itself: the login cannot move to
	// another host unseen. As a server shutting down would, refuse with
	// a SQLSTATE drivers and pools take for "reconnect".
	if r.holds != nil {
		r.holds.hold(r.Hosts[a.host].Addr)
	}
	ss.refuse(why)
	return nil, loginDone, nil
}

// roleQuery asks a server that does not report its role (PostgreSQL 13 and
// older) what libpq asks it.
const roleQuery = "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')"

// queryRole runs roleQuery on an idle session (after its first
// ReadyForQuery) and reads the answer up to the next ReadyForQuery; none of
// it reaches the client.
func queryRole(up net.Conn) (serverRole, error) {
	q, _ := (&pgproto3.Query{String: roleQuery}).Encode(nil)
	if _, err := up.Write(q); err != nil {
		return serverRole{}, &upstreamIOError{err: fmt.Errorf("upstream: asking the server's role: %w", err)}
	}
	var role serverRole
	got := false
	for {
		m, err := readMessage(up, maxUpstreamAuthMessage)
		if err != nil {
			return serverRole{}, &upstreamIOError{err: fmt.Errorf("upstream: reading the server's role: %w", err)}
		}
		switch m.typ {
		case 'D':
			var row pgproto3.DataRow
			if err := row.Decode(m.body()); err != nil || len(row.Values) != 2 {
				return serverRole{}, upstreamProtocol("upstream answered the role query with a malformed row")
			}
			role = serverRole{hotStandby: string(row.Values[0]) == "t", readOnly: string(row.Values[1]) == "on",
				knownStandby: true, knownReadOnly: true}
			got = true
		case 'T', 'C', 'N', 'S':
		case 'E':
			return serverRole{}, upstreamProtocol("upstream refused the role query")
		case 'Z':
			if !got {
				return serverRole{}, upstreamProtocol("upstream answered the role query with no row")
			}
			return role, nil
		default:
			return serverRole{}, upstreamProtocol(fmt.Sprintf("upstream sent unexpected message %q in answer to the role query", m.typ))
		}
	}
}
