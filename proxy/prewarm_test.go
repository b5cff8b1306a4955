package proxy

import (
	"context"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingDial wraps a dialer and counts the dials.
func countingDial(dial DialFunc, n *atomic.Int32) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		n.Add(1)
		return dial(ctx)
	}
}

func TestPrewarmServesClientsFromThePool(t *testing.T) {
	var dials atomic.Int32
	addr := freeAddr(t)
	obs := newRecObserver()
	srv := startServer(t, obs, Route{Name: "warm", Listen: []string{addr}, Dial: countingDial(echoUpstream(t), &dials),
		ClientTLS: ClientTLSDisable, Prewarm: 2})
	eventually(t, "the pool dials ahead of any client", func() bool { return dials.Load() == 2 })
	if obs.get(obs.started, "warm") != 0 {
		t.Fatal("a session started before any client")
	}
	c := login(t, addr)
	echo(t, c, "through a pre-dialled connection")
	// The client took a ready connection, and the pool made up for it.
	eventually(t, "the pool is refilled", func() bool { return dials.Load() == 3 })
	// The observer hears of a dial when it ends.
	eventually(t, "the three dials are reported", func() bool { return obs.get(obs.dials, "warm/ok") == 3 })
	// A reload replaces the route: its pool is closed and a new one fills.
	if err := srv.Reload([]Route{{Name: "warm", Listen: []string{addr}, Dial: countingDial(echoUpstream(t), &dials),
		ClientTLS: ClientTLSDisable, Prewarm: 1}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new pool fills", func() bool { return dials.Load() == 4 })
	echo(t, c, "the session survives the pool's replacement")
}

func TestPrewarmPoolDropsDeadAndOldConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", l.Addr().String())
	}
	now := time.Now()
	var clock atomic.Int64
	p := newPrewarmPool(&Route{Prewarm: 5, PrewarmMaxAge: 10 * time.Second}, dial)
	p.now = func() time.Time { return now.Add(time.Duration(clock.Load())) }
	// Five connections, oldest first; server[i] is the server's end of client[i].
	var client, server []net.Conn
	for i := 0; i < 5; i++ {
		c, err := dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		client = append(client, c)
		server = append(server, <-accepted)
		p.put(c, 0)
	}
	// On Windows quiet sees bytes, not a bare FIN (see quiet_windows.go):
	// the closed connection is handed out there.
	closed := 1
	if runtime.GOOS == "windows" {
		closed = 2
	}
	tests := []struct {
		name  string
		setup func()
		want  int // index of the connection handed out, -1 for none
	}{
		{"the server sent a byte on the newest: dropped, the next one is handed out", func() { server[4].Write([]byte{21}); waitReadable(t, client[4]) }, 3},
		{"the server closed the next: dropped", func() { server[2].Close(); waitReadable(t, client[2]) }, closed},
		{"past the maximum age, a live connection is not handed out", func() { clock.Store(int64(11 * time.Second)) }, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			c := p.take()
			if tc.want < 0 {
				if c != nil {
					t.Fatalf("got a connection, want none")
				}
				return
			}
			if c != client[tc.want] {
				t.Fatalf("got %v, want client %d (%v)", c.LocalAddr(), tc.want, client[tc.want].LocalAddr())
			}
		})
	}
	if n := p.missing(); n != 5 {
		t.Errorf("pool still holds %d connections", 5-n)
	}
	p.close()
}

// trackedConn is one end of an in-memory pipe that records its Close. It
// is no syscall.Conn, so quiet takes it for live.
type trackedConn struct {
	net.Conn
	closed atomic.Bool
}

func newTrackedConn(t *testing.T) *trackedConn {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return &trackedConn{Conn: a}
}

func (c *trackedConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// TestPrewarmTakeDropsConnectionsOfAnotherTrustGeneration: a client is
// never handed a connection verified under a trust (a pin) that has since
// changed, and take closes every such connection, not only the ones it
// looks at on its way to a good one.
func TestPrewarmTakeDropsConnectionsOfAnotherTrustGeneration(t *testing.T) {
	tests := []struct {
		name    string
		gens    []uint64 // the generation each warm connection was dialled under, oldest first
		fixed   bool     // no TrustGeneration: the route's trust never changes
		current uint64
		want    int   // index of the connection handed out, -1 for none
		closed  []int // indexes of the connections closed by take
	}{
		{name: "trust unchanged: the newest is handed out", gens: []uint64{3, 3}, current: 3, want: 1},
		{name: "a route whose trust never changes: the newest is handed out", gens: []uint64{0, 0}, fixed: true, want: 1},
		{name: "trust changed: every connection is closed, none handed out", gens: []uint64{3, 3, 3}, current: 4, want: -1, closed: []int{0, 1, 2}},
		{name: "only one of the current generation is handed out; the stale ones, older and newer, are closed",
			gens: []uint64{3, 4, 3}, current: 4, want: 1, closed: []int{0, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Route{Prewarm: len(tc.gens)}
			if !tc.fixed {
				current := tc.current
				r.TrustGeneration = func() uint64 { return current }
			}
			p := newPrewarmPool(r, nil)
			var conns []*trackedConn
			for _, g := range tc.gens {
				c := newTrackedConn(t)
				conns = append(conns, c)
				p.put(c, g)
			}
			got := p.take()
			switch {
			case tc.want < 0 && got != nil:
				t.Errorf("got connection %d, want none", slices.IndexFunc(conns, func(c *trackedConn) bool { return net.Conn(c) == got }))
			case tc.want >= 0 && got != net.Conn(conns[tc.want]):
				t.Errorf("got %v, want connection %d", got, tc.want)
			}
			var closed []int
			for i, c := range conns {
				if c.closed.Load() {
					closed = append(closed, i)
				}
			}
			if !slices.Equal(closed, tc.closed) {
				t.Errorf("closed connections %v, want %v", closed, tc.closed)
			}
			kept := len(tc.gens) - len(tc.closed)
			if tc.want >= 0 {
				kept--
			}
			if n := len(tc.gens) - p.missing(); n != kept {
				t.Errorf("the pool holds %d connections, want %d", n, kept)
			}
			p.close()
		})
	}
}

// TestPrewarmFillerFollowsTheTrustGeneration runs the filler with a fake
// dial and a generation the test changes: connections dialled before the
// change are never handed out (take drops them; so does the filler on its
// tick, without any client), and those dialled after it are.
func TestPrewarmFillerFollowsTheTrustGeneration(t *testing.T) {
	var gen atomic.Uint64
	var mu sync.Mutex
	var dialled []*trackedConn
	dial := func(ctx context.Context) (net.Conn, error) {
		c := newTrackedConn(t)
		mu.Lock()
		dialled = append(dialled, c)
		mu.Unlock()
		return c, nil
	}
	snapshot := func() []*trackedConn {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(dialled)
	}
	allClosed := func(cs []*trackedConn) bool {
		for _, c := range cs {
			if !c.closed.Load() {
				return false
			}
		}
		return true
	}
	p := newPrewarmPool(&Route{Prewarm: 2, TrustGeneration: gen.Load}, dial)
	p.start()
	defer p.close()
	eventually(t, "the pool fills", func() bool { return p.missing() == 0 })

	// A repin, then a client at once.
	old := snapshot()
	gen.Add(1)
	if c := p.take(); c != nil && slices.ContainsFunc(old, func(o *trackedConn) bool { return net.Conn(o) == c }) {
		t.Fatal("a connection dialled before the trust changed was handed out")
	}
	eventually(t, "the connections of the old generation are closed", func() bool { return allClosed(old) })
	var got net.Conn
	eventually(t, "a connection dialled after the change is handed out", func() bool {
		got = p.take()
		return got != nil
	})
	if slices.ContainsFunc(old, func(o *trackedConn) bool { return net.Conn(o) == got }) || got.(*trackedConn).closed.Load() {
		t.Fatal("the connection handed out after the change is an old or closed one")
	}

	// A repin with no client: the filler's tick replaces the pool.
	eventually(t, "the pool fills again", func() bool { return p.missing() == 0 })
	p.mu.Lock()
	var pooled []*trackedConn
	for _, w := range p.conns {
		pooled = append(pooled, w.conn.(*trackedConn))
	}
	p.mu.Unlock()
	dials := len(snapshot())
	gen.Add(1)
	eventually(t, "the filler closes the connections of the old generation", func() bool { return allClosed(pooled) })
	eventually(t, "and dials new ones", func() bool { return p.missing() == 0 && len(snapshot()) >= dials+2 })
}

// TestPrewarmDialRacingATrustChange: a connection whose dial started under
// one generation and ended under another may have been verified under the
// old pin: it is closed, and the filler dials again.
func TestPrewarmDialRacingATrustChange(t *testing.T) {
	var gen atomic.Uint64
	started := make(chan *trackedConn, 16)
	release := make(chan struct{})
	dial := func(ctx context.Context) (net.Conn, error) {
		c := newTrackedConn(t)
		started <- c
		select {
		case <-release:
			return c, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	p := newPrewarmPool(&Route{Prewarm: 1, TrustGeneration: gen.Load}, dial)
	p.start()
	defer p.close()
	first := <-started
	gen.Add(1) // the pin is replaced while the dial runs
	release <- struct{}{}
	var second *trackedConn
	select {
	case second = <-started:
	case <-time.After(5 * time.Second):
		if c := p.take(); c == net.Conn(first) {
			t.Fatal("the connection dialled across the trust change was handed out")
		}
		t.Fatal("the filler did not dial again after the trust changed during its dial")
	}
	if !first.closed.Load() {
		t.Error("the connection dialled across the trust change was not closed")
	}
	if c := p.take(); c != nil {
		t.Fatalf("take returned %v while the only good dial is still running", c)
	}
	release <- struct{}{}
	var got net.Conn
	eventually(t, "the next dial is handed out", func() bool {
		got = p.take()
		return got != nil
	})
	if got != net.Conn(second) {
		t.Fatalf("got %v, want the connection dialled after the change", got)
	}
}

func TestPrewarmMaxAgeIsCapped(t *testing.T) {
	tests := []struct {
		age  time.Duration
		want string // "" means valid
	}{
		{0, ""},
		{maxPrewarmMaxAge, ""},
		{maxPrewarmMaxAge + time.Second, "prewarm_max_age must be at most 50s, below PostgreSQL's authentication_timeout"},
		{-time.Second, "prewarm_max_age must be positive"},
	}
	for _, tc := range tests {
		r := Route{Name: "r", Listen: []string{"127.0.0.1:0"}, Dial: func(context.Context) (net.Conn, error) { return nil, nil },
			ClientTLS: ClientTLSDisable, Prewarm: 1, PrewarmMaxAge: tc.age}
		err := r.validate()
		if tc.want == "" && err != nil {
			t.Errorf("prewarm_max_age %s refused: %v", tc.age, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("prewarm_max_age %s: got %v, want an error containing %q", tc.age, err, tc.want)
		}
	}
}
