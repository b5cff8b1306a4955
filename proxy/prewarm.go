package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// DefaultPrewarmMaxAge is how long a pre-dialled upstream connection is
// kept before it is replaced: well under PostgreSQL's default
// authentication_timeout (60 s), after which the server closes a
// connection that has not sent its startup message.
const DefaultPrewarmMaxAge = 30 * time.Second

// prewarmRetry is the pause after a failed pre-dial: the pool never
// hammers an upstream that is down or cannot be trusted.
const prewarmRetry = 2 * time.Second

// warmConn is a verified upstream connection that has sent nothing yet.
type warmConn struct {
	conn   net.Conn
	dialed time.Time
}

// prewarmPool keeps up to size upstream connections of one route through
// TCP, the TLS negotiation, the handshake and verify-full, before any
// startup message: they carry no credentials, and a new client then pays
// only for its startup and authentication round trips.
type prewarmPool struct {
	route  *Route
	size   int
	maxAge time.Duration
	dial   func(context.Context) (net.Conn, error)
	now    func() time.Time

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
	return &prewarmPool{route: r, size: r.Prewarm, maxAge: maxAge, dial: dial, now: time.Now,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// start runs the filler until close.
func (p *prewarmPool) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	go p.fill(ctx)
}

// fill keeps the pool full and young.
func (p *prewarmPool) fill(ctx context.Context) {
	defer close(p.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		p.evictOld()
		for p.missing() > 0 && ctx.Err() == nil {
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
			if !p.put(c) {
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

func (p *prewarmPool) put(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns = append(p.conns, warmConn{conn: c, dialed: p.now()})
	return true
}

// evictOld closes connections older than maxAge.
func (p *prewarmPool) evictOld() {
	p.mu.Lock()
	var old []net.Conn
	keep := p.conns[:0]
	for _, w := range p.conns {
		if p.now().Sub(w.dialed) >= p.maxAge {
			old = append(old, w.conn)
			continue
		}
		keep = append(keep, w)
	}
	p.conns = keep
	p.mu.Unlock()
	for _, c := range old {
		c.Close()
	}
}

// take returns a live pre-dialled connection, or nil when none is ready.
// Connections the server has closed or written to meanwhile are dropped.
func (p *prewarmPool) take() net.Conn {
	defer func() {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}()
	for {
		p.mu.Lock()
		if len(p.conns) == 0 || p.closed {
			p.mu.Unlock()
			return nil
		}
		// Newest first: the oldest ones are nearest to the server's
		// authentication_timeout.
		w := p.conns[len(p.conns)-1]
		p.conns = p.conns[:len(p.conns)-1]
		p.mu.Unlock()
		if p.now().Sub(w.dialed) < p.maxAge && quiet(w.conn) {
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

// quiet reports whether nothing is waiting on c's socket: no EOF, no byte
// (a server that is about to hang up sends a TLS alert first). It peeks
// without blocking and without consuming.
func quiet(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = errors.Is(err, syscall.EAGAIN) // a byte or EOF would return without error
		return true                            // never wait
	})
	return err == nil && alive
}
