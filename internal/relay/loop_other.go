//go:build !linux

package relay

import (
	"errors"
	"net"
	"time"
)

// loopPool stands for Linux's event loops: there are none here, and no
// Pool makes one (the Loop engine is Portable here).
type loopPool struct{}

func newLoopPool(int) *loopPool { return &loopPool{} }

func (*loopPool) start(time.Duration) error { return errors.New("relay: no event loop on this system") }

func (*loopPool) stop() {}

// Wrapper is implemented by a connection that wraps another: Underlying
// returns the wrapped connection once the wrapper no longer changes what
// passes through it, else nil. Only Linux's loop looks through it.
type Wrapper interface {
	Underlying() net.Conn
}

// relayOnLoop never takes a session here.
func (p *Pool) relayOnLoop(net.Conn, net.Conn, *Counters, Register) (Stats, bool, error) {
	return Stats{}, false, errors.New("relay: no event loop on this system")
}
