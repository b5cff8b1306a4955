//go:build !linux

package proxy

import (
	"testing"
	"time"
)

// testRelayModes are the relays the tests run on: the portable relay, the
// only one here.
var testRelayModes = []relayMode{relayPortable}

// setRelayRecheck does nothing: relayRecheck belongs to Linux's fast path.
func setRelayRecheck(*testing.T, time.Duration) {}
