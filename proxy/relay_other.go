//go:build !linux

package proxy

import "net"

// portableRelayEnv names Linux's test switch (see relay_linux.go); there is
// nothing to switch here.
const portableRelayEnv = "PGVERIFYPROXY_TEST_PORTABLE_RELAY"

// portableRelaySwitch: outside Linux the portable relay is the only one.
const portableRelaySwitch = false

// defaultRelayMode is what relay uses: the portable relay, the only one
// outside Linux.
const defaultRelayMode = relayPortable

// socketCopy is the Linux fast path's state; there is none here.
type socketCopy struct{}

// initFast takes no source: there is no fast path here (its state,
// socketCopy, is empty).
func (cp *copier) initFast(*closeOnce) bool {
	_ = cp.socketCopy
	return false
}

// run copies until src ends or an error. It returns nil on a clean EOF
// from src, else the first error.
func (cp *copier) run() error {
	if cp.stream {
		return cp.copyStream()
	}
	return cp.copyBuffered()
}

// loopPool stands for Linux's event loops: there are none here.
type loopPool struct{}

func newLoopPool(int) *loopPool { return &loopPool{} }

func (*loopPool) stop() {}

// relayOnLoop never takes a session here: relayLoop is Linux's.
func relayOnLoop(net.Conn, net.Conn, *byteCounters, *loopPool, func(func() func()) bool) (relayStats, bool) {
	return relayStats{}, false
}
