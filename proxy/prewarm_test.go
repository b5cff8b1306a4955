package proxy

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
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
		p.put(c)
	}
	tests := []struct {
		name  string
		setup func()
		want  int // index of the connection handed out, -1 for none
	}{
		{"the server sent a byte on the newest: dropped, the next one is handed out", func() { server[4].Write([]byte{21}); waitReadable(t, client[4]) }, 3},
		{"the server closed the next: dropped", func() { server[2].Close(); waitReadable(t, client[2]) }, 1},
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

// waitReadable waits until c's socket has something to read (bytes or a
// FIN), without reading it.
func waitReadable(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var serr error
	err = rc.Control(func(fd uintptr) {
		for {
			var set syscall.FdSet
			set.Bits[fd/64] |= 1 << (fd % 64)
			tv := syscall.Timeval{Sec: 10}
			n, serr = syscall.Select(int(fd)+1, &set, nil, nil, &tv)
			if serr != syscall.EINTR {
				return
			}
		}
	})
	if err != nil || serr != nil || n != 1 {
		t.Fatalf("waiting for the socket to be readable: %d %v %v", n, err, serr)
	}
}
