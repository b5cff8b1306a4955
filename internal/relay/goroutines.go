package relay

import (
	"net"
	"sync"
	"time"
)

// relayGoroutines is the Goroutine engine (portable false: on Linux, with
// the fast path's copy loops) and the Portable engine: one goroutine per
// direction, the caller's for client → upstream.
func (p *Pool) relayGoroutines(client, upstream net.Conn, counters *Counters, portable bool) Stats {
	g := &goSession{c: &closeOnce{Conn: client}, u: &closeOnce{Conn: upstream}, linger: p.opts.Linger}
	defer g.closeBoth()
	toUpstream, toClient := newCounts(counters)
	up := newCopier(g.u, client, toUpstream, portable, p.opts.Recheck)
	down := newCopier(g.c, upstream, toClient, portable, p.opts.Recheck)
	done := make(chan struct{})
	go func() {
		g.end(Upstream, down.run())
		close(done)
	}()
	g.end(Client, up.run())
	<-done
	st := Stats{ClientToUpstream: toUpstream.n.Load(), UpstreamToClient: toClient.n.Load(), Engine: Goroutine}
	if portable {
		st.Engine = Portable
	}
	g.mu.Lock()
	g.ending.stats(&st)
	g.mu.Unlock()
	return st
}

// goSession is the state a goroutine-engine session shares between its
// two directions.
type goSession struct {
	c, u   *closeOnce
	linger time.Duration

	mu     sync.Mutex
	ending ending
}

func (g *goSession) closeBoth() { _ = CloseUpstreamFirst(g.c, g.u) }

// end records that the copy from side from ended with err (nil: a clean
// EOF) and does what the ending table says.
func (g *goSession) end(from Side, err error) {
	g.mu.Lock()
	s := g.ending.end(from, err, g.linger, g.expire)
	g.mu.Unlock()
	switch s {
	case stepCloseBoth:
		g.closeBoth()
	case stepPassEOF:
		dst := g.u
		if from == Upstream {
			dst = g.c
		}
		if cw, ok := dst.Conn.(closeWriter); ok {
			_ = cw.CloseWrite()
		}
	}
}

// expire is the linger timer.
func (g *goSession) expire() {
	g.mu.Lock()
	close := g.ending.expire()
	g.mu.Unlock()
	if close {
		g.closeBoth()
	}
}
