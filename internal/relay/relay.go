package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// Engine names how sessions are relayed.
type Engine string

const (
	// Loop hands each session's two sockets to an event loop: Linux's
	// default. Elsewhere it is Portable.
	Loop Engine = "loop"
	// Goroutine relays each session with two goroutines, one per
	// direction, reading and writing plaintext sockets without the
	// scheduler's help on Linux: the loop's fallback. Elsewhere it is
	// Portable.
	Goroutine Engine = "goroutine"
	// Portable relays with nothing but net.Conn: the engine of every
	// system but Linux.
	Portable Engine = "portable"
)

// ParseEngine checks a relay setting; "" means Loop.
func ParseEngine(s string) (Engine, error) {
	switch e := Engine(s); e {
	case "":
		return Loop, nil
	case Loop, Goroutine, Portable:
		return e, nil
	}
	return "", fmt.Errorf("relay %q: want loop, goroutine or portable", s)
}

// OnThisSystem is the engine that runs for e here: e on Linux, Portable on
// every other system.
func (e Engine) OnThisSystem() Engine {
	if runtime.GOOS != "linux" {
		return Portable
	}
	if e == "" {
		return Loop
	}
	return e
}

// Side names one of a session's two connections.
type Side string

const (
	// Client is the application's side.
	Client Side = "client"
	// Upstream is the server's side.
	Upstream Side = "upstream"
)

// Counters are byte totals that sessions add to while bytes flow (a
// route's, for metrics).
type Counters struct {
	// ClientToUpstream counts bytes sent to servers.
	ClientToUpstream atomic.Int64
	// UpstreamToClient counts bytes sent to clients.
	UpstreamToClient atomic.Int64
}

// Stats is how one session's relay went.
type Stats struct {
	// ClientToUpstream counts bytes copied from the client to the server.
	ClientToUpstream int64
	// UpstreamToClient counts bytes copied from the server to the client.
	UpstreamToClient int64
	// ClosedBy is the side whose end (EOF or error) stopped the relay.
	ClosedBy Side
	// Err is the first error other than a clean EOF, if any.
	Err error
	// Engine is the engine that carried the session.
	Engine Engine
	// Fallback, when not nil, says why the loop did not take a session
	// that the Loop engine was asked to relay (Engine is then Goroutine).
	Fallback error
}

// errNotSockets says why a session stayed off the loop: a connection is not
// a socket the loop can own.
var errNotSockets = errors.New("relay: a connection is no socket the event loop can take (not TCP or unix, or TLS not on a rawsock.Conn)")

// DefaultLinger is Options.Linger's default.
const DefaultLinger = 2 * time.Second

// DefaultRecheck is Options.Recheck's default.
const DefaultRecheck = 10 * time.Second

// Options configure a Pool.
type Options struct {
	// Engine relays the sessions; "" means Loop (on this system, see
	// Engine.OnThisSystem).
	Engine Engine
	// Loops is how many event loops the Loop engine runs; zero means one
	// per four of GOMAXPROCS, at least one.
	Loops int
	// Linger is how long the second direction may go on after the first
	// ended cleanly (EOF), so that a final message in flight is not cut
	// off; zero means DefaultLinger.
	Linger time.Duration
	// Recheck bounds how long the Goroutine engine waits on a plaintext
	// TCP source without a read(2) (a reset that came with the last data
	// is not counted by TCP_INQ); zero means DefaultRecheck.
	Recheck time.Duration
	// Logger gets the pool's few lines (none per session); nil means
	// slog.Default().
	Logger *slog.Logger

	// take claims a socket for the loop (rawsock.Take); tests replace it
	// to make hand-overs fail.
	take func(net.Conn) (*rawsock.Claim, error)
}

// Register runs a loop hand-over, handOver, where nothing can close the
// session's connections meanwhile (the proxy runs it under the lock its
// shutdown takes), and keeps the function handOver returns: from then on
// closing the connections no longer reaches the sockets, and that function
// ends the session instead, as closing both would. handOver returns nil
// when the loop did not take the session: its connections are untouched.
// Register reports false, without running handOver, when the session is
// being closed already.
type Register func(handOver func() (stop func())) bool

// Pool relays sessions with one engine; for Loop it owns the event loops,
// which start with the first session they get.
type Pool struct {
	opts   Options
	engine Engine // on this system
	loops  *loopPool
	log    *slog.Logger
}

// NewPool checks o and returns a Pool.
func NewPool(o Options) (*Pool, error) {
	e, err := ParseEngine(string(o.Engine))
	if err != nil {
		return nil, err
	}
	if o.Loops < 0 {
		return nil, fmt.Errorf("relay_loops %d: want 0 (from GOMAXPROCS) or more", o.Loops)
	}
	if o.Linger <= 0 {
		o.Linger = DefaultLinger
	}
	if o.Recheck <= 0 {
		o.Recheck = DefaultRecheck
	}
	if o.take == nil {
		o.take = rawsock.Take
	}
	p := &Pool{opts: o, engine: e.OnThisSystem(), log: o.Logger}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.engine == Loop {
		p.loops = newLoopPool(o.Loops)
	}
	return p, nil
}

// Engine is the engine the pool relays with on this system.
func (p *Pool) Engine() Engine { return p.engine }

// Relay copies bytes both ways between client and upstream until one side
// ends, then closes both (each exactly once, the upstream first). The first
// end wins: an error closes everything at once; a clean EOF half-closes the
// other side's write direction and lets the other direction finish for up
// to Options.Linger. No message is parsed. counters, when not nil, grow
// while bytes flow. register, when not nil, runs a loop hand-over (see
// Register). Relay owns both connections, their deadlines included, until
// it returns; on the Loop engine, their sockets are the loop's from the
// hand-over on.
func (p *Pool) Relay(client, upstream net.Conn, counters *Counters, register Register) Stats {
	var fallback error
	if p.engine == Loop {
		st, ok, err := p.relayOnLoop(client, upstream, counters, register)
		if ok {
			return st
		}
		fallback = err
	}
	st := p.relayGoroutines(client, upstream, counters, p.engine == Portable)
	st.Fallback = fallback
	return st
}

// Stop ends the event loops after their sessions: a session still on a
// loop is ended as closing both of its connections would. A session that
// comes after Stop goes to the Goroutine engine. Stop may be called more
// than once.
func (p *Pool) Stop() {
	if p.loops != nil {
		p.loops.stop()
	}
}
