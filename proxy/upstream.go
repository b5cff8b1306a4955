package proxy

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
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
