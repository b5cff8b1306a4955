package proxy

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// The bound on connections before admission: accepted, and not yet past
// the StartupMessage and max_connections (a TLS handshake, the startup
// packets, a CancelRequest being forwarded). Nothing else bounds them, so
// without it a local flood of connections that never send a startup
// message could drive the process to its descriptor limit (EMFILE), where
// even a relay's hand-over fails. At the bound the accept loops wait: new
// connections stay in the kernel's listen queue until a connection in
// startup is admitted, refused, or times out (startup_timeout).

// maxStartupCap caps the default bound: each connection in startup holds a
// goroutine and, with TLS, a handshake's state.
const maxStartupCap = 4096

// minStartupDefault is the smallest default bound.
const minStartupDefault = 64

// DefaultMaxStartupConnections is the bound on connections in startup when
// the setting is zero: a quarter of the descriptor limit (RLIMIT_NOFILE,
// which the Go runtime raises to its hard limit at start), at least 64 and
// at most 4096, so that three quarters of the descriptors stay for
// admitted sessions (two each) and everything else.
func DefaultMaxStartupConnections() int {
	n := openFilesLimit() / 4
	return min(max(n, minStartupDefault), maxStartupCap)
}

// startupGate hands out the slots of connections in startup, over every
// route of a Server.
type startupGate struct {
	slots chan struct{}
	log   *slog.Logger

	mu         sync.Mutex
	lastWarned time.Time
}

func newStartupGate(limit int, log *slog.Logger) *startupGate {
	return &startupGate{slots: make(chan struct{}, limit), log: log}
}

// startupWarnEvery spaces the log lines of a gate that keeps biting.
const startupWarnEvery = 30 * time.Second

// acquire takes a slot for the next connection of route, waiting while
// every slot is taken (the wait is counted in waits, and logged) until a
// slot frees or done ends. It reports whether it got a slot.
func (g *startupGate) acquire(done <-chan struct{}, route string, waits func()) bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	waits()
	g.mu.Lock()
	if time.Since(g.lastWarned) >= startupWarnEvery {
		g.lastWarned = time.Now()
		g.log.Warn(fmt.Sprintf("%d connections are in their startup phase, the most max_startup_connections allows: new connections wait in the listen queue until one is admitted or its startup_timeout runs out", cap(g.slots)),
			"route", route, "max_startup_connections", cap(g.slots),
			"hint", "look for clients that connect and send no startup message; raise max_startup_connections (and the open-files limit) if this many legitimate clients connect at once")
	}
	g.mu.Unlock()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-done:
		return false
	}
}

// release gives a slot back.
func (g *startupGate) release() { <-g.slots }

// startupSlot is one connection's slot: released once, when the
// connection is admitted (or refused) or ends, whichever comes first.
type startupSlot struct {
	once sync.Once
	g    *startupGate
	n    func(int64) // the route's count of connections in startup
}

func (s *startupSlot) release() {
	s.once.Do(func() {
		s.n(-1)
		s.g.release()
	})
}
