package proxy

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"
)

// DefaultPrewarmMaxAge is how long a pre-dialled upstream connection is
// kept before it is replaced: well under PostgreSQL's default
// authentication_timeout (60 s), after which the server closes a
// connection that has not sent its startup message.
const DefaultPrewarmMaxAge = 30 * time.Second

// maxPrewarmMaxAge is the longest PrewarmMaxAge accepted: below
// PostgreSQL's default authentication_timeout (60 s) with room to spare, so
// a pre-dialled connection is replaced before the server hangs up on it,
// and one verified under a trust that has since changed cannot linger for
// long even where that change goes unnoticed.
const maxPrewarmMaxAge = 50 * time.Second

// prewarmRetry is the pause after a failed pre-dial: the pool never
// hammers an upstream that is down or cannot be trusted.
const prewarmRetry = 2 * time.Second

// warmConn is a verified upstream connection that has sent nothing yet.
type warmConn struct {
	conn   net.Conn
	dialed time.Time
	gen    uint64 // the route's trust generation read before the dial
}

// prewarmPool keeps up to size upstream connections of one route through
// TCP, the TLS negotiation, the handshake and verify-full, before any
// startup message: they carry no credentials, and a new client then pays
// only for its startup and authentication round trips. Each is tagged with
// the route's trust generation, and one from another generation (verified
// under a pin since replaced or removed) is closed, never handed out.
type prewarmPool struct {
	route    *Route
	size     int
	maxAge   time.Duration
	dial     func(context.Context) (net.Conn, error)
	now      func() time.Time
	trustGen func() uint64 // Route.TrustGeneration; nil: the trust never changes
	log      *slog.Logger  // nil: no log

	mu     sync.Mutex
	conns  []warmConn
	closed bool
	wake   chan struct{}
	stop   context.CancelFunc
	done   chan struct{}
}

func newPrewarmPool(r *Route, dial func(context.Context) (net.Conn, error)) *prewarmPool {
	maxAge := r.PrewarmMaxAge
	if maxAge <= 0 {
		maxAge = DefaultPrewarmMaxAge
	}
	return &prewarmPool{route: r, size: r.Prewarm, maxAge: maxAge, dial: dial, now: time.Now, trustGen: r.TrustGeneration,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// generation is the route's current trust generation (0 when its trust
// never changes).
func (p *prewarmPool) generation() uint64 {
	if p.trustGen == nil {
		return 0
	}
	return p.trustGen()
}

// start runs the filler until close.
func (p *prewarmPool) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	go p.fill(ctx)
}

// fill keeps the pool full, young and verified under the current trust.
func (p *prewarmPool) fill(ctx context.Context) {
	defer close(p.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		p.evict(p.generation())
		for p.missing() > 0 && ctx.Err() == nil {
			// Read before the dial: a pin replaced while it runs makes the
			// connection stale, never the reverse.
			gen := p.generation()
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			c, err := p.dial(dctx)
			cancel()
			if err != nil {
				// Clients dialling themselves get the reason; the pool
				// waits before trying again.
				select {
				case <-ctx.Done():
					return
				case <-time.After(prewarmRetry):
				}
				continue
			}
			if p.generation() != gen {
				// The trust changed during the dial: this connection may
				// have been verified under the old one.
				c.Close()
				continue
			}
			if !p.put(c, gen) {
				c.Close()
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-p.wake:
		}
	}
}

func (p *prewarmPool) missing() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size - len(p.conns)
}

// put adds c, dialled under trust generation gen.
func (p *prewarmPool) put(c net.Conn, gen uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns = append(p.conns, warmConn{conn: c, dialed: p.now(), gen: gen})
	return true
}

// evict closes the connections older than maxAge and those dialled under
// another trust generation than gen.
func (p *prewarmPool) evict(gen uint64) {
	p.mu.Lock()
	var drop []net.Conn
	stale := 0
	keep := p.conns[:0]
	for _, w := range p.conns {
		if w.gen != gen {
			stale++
		}
		if w.gen != gen || p.now().Sub(w.dialed) >= p.maxAge {
			drop = append(drop, w.conn)
			continue
		}
		keep = append(keep, w)
	}
	clear(p.conns[len(keep):])
	p.conns = keep
	p.mu.Unlock()
	if stale > 0 && p.log != nil {
		p.log.Info("dropped pre-dialled connections verified under the previous pin: the upstream's pin changed", "dropped", stale)
	}
	for _, c := range drop {
		c.Close()
	}
}

// take returns a live pre-dialled connection verified under the route's
// current trust, or nil when none is ready. Every connection of another
// trust generation is closed, and so are those the server has closed or
// written to meanwhile.
func (p *prewarmPool) take() net.Conn {
	defer func() {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}()
	p.mu.Lock()
	empty := len(p.conns) == 0 || p.closed
	p.mu.Unlock()
	if empty {
		return nil // no need to look at the trust
	}
	gen := p.generation()
	p.evict(gen)
	for {
		p.mu.Lock()
		if len(p.conns) == 0 || p.closed {
			p.mu.Unlock()
			return nil
		}
		// Newest first: the oldest ones are nearest to the server's
		// authentication_timeout.
		w := p.conns[len(p.conns)-1]
		p.conns[len(p.conns)-1] = warmConn{}
		p.conns = p.conns[:len(p.conns)-1]
		p.mu.Unlock()
		// The generation again: the filler may have put one since evict.
		// quiet is per system: quiet_unix.go, quiet_windows.go.
		if w.gen == gen && p.now().Sub(w.dialed) < p.maxAge && quiet(w.conn) {
			return w.conn
		}
		w.conn.Close()
	}
}

// close stops the filler and closes the idle connections.
func (p *prewarmPool) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	if p.stop != nil {
		p.stop()
		<-p.done
	}
	for _, w := range conns {
		w.conn.Close()
	}
}

// drop closes the pre-dialled connections for which stale reports true
// (the DNS recheck: an address the name no longer resolves to).
func (p *prewarmPool) drop(stale func(net.Conn) bool) {
	p.mu.Lock()
	var gone []net.Conn
	kept := p.conns[:0]
	for _, w := range p.conns {
		if stale(w.conn) {
			gone = append(gone, w.conn)
			continue
		}
		kept = append(kept, w)
	}
	p.conns = kept
	p.mu.Unlock()
	for _, c := range gone {
		c.Close()
	}
	if len(gone) > 0 {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}
