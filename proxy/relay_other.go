//go:build !linux

package proxy

// portableRelayEnv names Linux's test switch (see relay_linux.go); there is
// nothing to switch here.
const portableRelayEnv = "PGVERIFYPROXY_TEST_PORTABLE_RELAY"

// portableRelaySwitch: outside Linux the portable relay is the only one.
const portableRelaySwitch = false

// defaultRelayMode is what Relay uses: the portable relay, the only one
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
