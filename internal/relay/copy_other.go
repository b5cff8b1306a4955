//go:build !linux

package relay

import "time"

// socketCopy is the Linux fast path's state; there is none here.
type socketCopy struct{}

// initFast takes no source: there is no fast path here (its state,
// socketCopy, is empty).
func (cp *copier) initFast(*closeOnce, time.Duration) bool {
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
