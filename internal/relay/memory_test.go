package relay

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// idleMem is the result of idleSessionMemory, in bytes per session.
type idleMem struct {
	relayHeap, relayStack float64 // held by the relays
	tlsIn                 float64 // crypto/tls's buffers of the relay's upstream leg
	all                   float64 // everything, both ends of both legs included
}

func (m idleMem) relay() float64 { return m.relayHeap + m.relayStack }

// idleSessionMemory opens n sessions (plaintext client leg, TLS upstream
// leg) relayed by p, passes traffic through each (a small query and answer,
// then a 64 KiB burst each way and another small exchange), lets them go
// idle and returns the heap+stack bytes per session that the relays hold
// (the connections and their TLS state are measured before the relays
// start and excluded, and so is what the relayed traffic added to
// crypto/tls's own buffers), the capacity of crypto/tls's buffers of the
// relay's upstream leg, and the heap+stack bytes per session of everything
// (both ends of both legs included: an upper bound of a session's cost).
func idleSessionMemory(tb testing.TB, p *Pool, n int, bulk bool) idleMem {
	tb.Helper()
	ln := rigListener(tb)
	base := readMemInUse()
	sessions := make([]*session, n)
	small := bytes.Repeat([]byte{'s'}, 100)
	burst := bytes.Repeat([]byte{'b'}, 64<<10)
	// Grow both TLS ends' buffers as the relayed traffic will, so that the
	// relay's own cost is what remains.
	exchange := func(a, b net.Conn) {
		buf := make([]byte, len(burst))
		msgs := [][]byte{small}
		if bulk {
			msgs = append(msgs, burst, small)
		}
		for _, msg := range msgs {
			for _, pair := range [][2]net.Conn{{a, b}, {b, a}} {
				errc := make(chan error, 1)
				go func() { _, err := pair[0].Write(msg); errc <- err }()
				if _, err := io.ReadFull(pair[1], buf[:len(msg)]); err != nil {
					tb.Fatal(err)
				}
				if err := <-errc; err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
	tlsBufs := func() (relaySide, serverSide int64) {
		for _, s := range sessions {
			relaySide += tlsBufCap(s.pu.(*tls.Conn))
			serverSide += tlsBufCap(s.server.(*tls.Conn))
		}
		return relaySide, serverSide
	}
	for i := range sessions {
		s := &session{done: make(chan Stats, 1), finished: make(chan struct{})}
		s.app, s.pc = connectLeg(tb, ln, legTCP, false)
		s.server, s.pu = connectLeg(tb, ln, legTLS, true)
		exchange(s.pu, s.server)
		sessions[i] = s
	}
	tlsP0, tlsS0 := tlsBufs()
	before := readMemInUse()
	for _, s := range sessions {
		s.start(p)
		tb.Cleanup(func() { s.close(tb) })
		exchange(s.app, s.server)
	}
	time.Sleep(100 * time.Millisecond) // let every relay block
	after := readMemInUse()
	tlsP1, tlsS1 := tlsBufs()
	for _, s := range sessions {
		s.app.Close()
		s.server.Close()
	}
	for _, s := range sessions {
		s.wait(tb)
	}
	per := func(d int64) float64 { return float64(d) / float64(n) }
	return idleMem{
		// The relayed traffic may have grown crypto/tls's buffers (of
		// both ends) past what the direct exchange did: not the relay's.
		relayHeap:  per(after.heap - before.heap - (tlsP1 - tlsP0) - (tlsS1 - tlsS0)),
		tlsIn:      per(tlsP1),
		relayStack: per(after.stack - before.stack),
		all:        per(after.heap + after.stack - base.heap - base.stack),
	}
}
