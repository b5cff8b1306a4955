package proxy

import (
	"fmt"

	"github.com/pgverifyproxy/pgverifyproxy/internal/relay"
)

// RelayEngine is the relay setting: how sessions are relayed once
// authenticated. internal/relay holds the engines; these are their names,
// the same in settings, logs and metrics.
type RelayEngine string

const (
	// RelayLoop (the default) hands each session's two sockets to an event
	// loop on Linux; elsewhere it is RelayPortable.
	RelayLoop RelayEngine = RelayEngine(relay.Loop)
	// RelayGoroutine relays each session with two goroutines, one per
	// direction: the loop's fallback. Elsewhere it is RelayPortable.
	RelayGoroutine RelayEngine = RelayEngine(relay.Goroutine)
	// RelayPortable relays with nothing but net.Conn: the engine of every
	// system but Linux, selectable on Linux too.
	RelayPortable RelayEngine = RelayEngine(relay.Portable)
)

// ParseRelayEngine checks a relay setting; empty means RelayLoop.
func ParseRelayEngine(s string) (RelayEngine, error) {
	e, err := relay.ParseEngine(s)
	if err != nil {
		return "", fmt.Errorf("relay %q: want loop, goroutine or portable", s)
	}
	return RelayEngine(e), nil
}

// OnThisSystem is the engine that runs for e on this system: e on Linux,
// RelayPortable elsewhere.
func (e RelayEngine) OnThisSystem() RelayEngine {
	return RelayEngine(relay.Engine(e).OnThisSystem())
}
