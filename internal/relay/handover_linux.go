package relay

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// Wrapper is implemented by a connection that wraps another (the proxy's
// connection that replays the bytes admission read first): Underlying
// returns the wrapped connection once the wrapper no longer changes what
// passes through it, else nil. The loop looks through such a wrapper.
type Wrapper interface {
	Underlying() net.Conn
}

// leg is one connection ready to be handed over: the socket connection to
// claim and, for TLS, the connection whose transport it is.
type leg struct {
	conn net.Conn
	tls  *tls.Conn
	sock net.Conn // *rawsock.Conn, *net.TCPConn or *net.UnixConn
}

// legOf says whether c can be handed to a loop, and how.
func legOf(c net.Conn) (leg, bool) {
	under := func(c net.Conn) net.Conn {
		if w, ok := c.(Wrapper); ok {
			if u := w.Underlying(); u != nil {
				return u
			}
		}
		return c
	}
	switch cc := under(c).(type) {
	case *tls.Conn:
		rc, ok := under(cc.NetConn()).(*rawsock.Conn)
		if !ok || rc.Detached() || !cc.ConnectionState().HandshakeComplete {
			return leg{}, false
		}
		return leg{conn: c, tls: cc, sock: rc}, true
	case *rawsock.Conn:
		if cc.Detached() {
			return leg{}, false
		}
		return leg{conn: c, sock: cc}, true
	case *net.TCPConn, *net.UnixConn:
		return leg{conn: c, sock: cc}, true
	}
	return leg{}, false
}

// attach gives ep the leg's socket: commit completes the claim, after
// which nothing reaches the socket but through ep.
func (lg leg) attach(ep *endpoint, cl *rawsock.Claim) {
	ep.addr = [2]net.Addr{lg.conn.LocalAddr(), lg.conn.RemoteAddr()}
	if lg.tls != nil {
		ep.tls = lg.tls
		ep.fd = cl.Commit(ep)
	} else {
		ep.fd = cl.Commit(nil)
	}
	if _, ok := ep.addr[0].(*net.TCPAddr); ok {
		ep.inq = enableINQ(ep.fd)
	}
}

// relayOnLoop relays client and upstream on an event loop, if both can be
// handed over; ok false means the loop did not take the session and its
// connections are as they were (err says why).
//
// The hand-over leaves nothing to undo: both descriptors are claimed
// (duplicated) first, upstream then client, and only when both claims
// hold, and the loop still takes sessions, are both committed (the
// connections closed, a TLS connection's transport switched to its
// endpoint) and the session queued, in one step under the loop's lock. A
// claim that fails abandons the other; a loop that stops between the
// claims and the commit takes nothing. Either way the claimed duplicates
// are closed before anyone learnt their numbers, and the session goes to
// the Goroutine engine on its untouched connections.
func (p *Pool) relayOnLoop(client, upstream net.Conn, counters *Counters, register Register) (st Stats, ok bool, err error) {
	cl, ok1 := legOf(client)
	ul, ok2 := legOf(upstream)
	if !ok1 || !ok2 {
		return Stats{}, false, errNotSockets
	}
	if err := p.loops.start(p.opts.Linger); err != nil {
		return Stats{}, false, err
	}
	uc, err := p.opts.take(ul.sock)
	if err != nil {
		return Stats{}, false, fmt.Errorf("relay: claiming the upstream socket for the event loop: %w", err)
	}
	cc, err := p.opts.take(cl.sock)
	if err != nil {
		uc.Abandon()
		return Stats{}, false, fmt.Errorf("relay: claiming the client socket for the event loop: %w", err)
	}
	l := p.loops.pick()
	s := l.newSession(counters)
	handed := false
	handOver := func() func() {
		handed = l.admit(s, func() {
			ul.attach(s.u, uc)
			cl.attach(s.c, cc)
		})
		if !handed {
			return nil
		}
		return func() { l.post(func() { l.abort(s) }) }
	}
	if register == nil {
		handOver()
	} else if !register(handOver) {
		uc.Abandon()
		cc.Abandon()
		_ = CloseUpstreamFirst(client, upstream)
		return Stats{ClosedBy: Upstream, Err: net.ErrClosed, Engine: Loop}, true, nil
	}
	if !handed {
		uc.Abandon()
		cc.Abandon()
		return Stats{}, false, errLoopsStopped
	}
	<-s.done
	st = Stats{ClientToUpstream: s.c.count.n.Load(), UpstreamToClient: s.u.count.n.Load(), Engine: Loop}
	s.ending.stats(&st)
	return st, true, nil
}
