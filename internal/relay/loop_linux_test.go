package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// prefixed stands for the proxy's replaying wrapper: transparent once its
// prefix is read.
type prefixed struct {
	net.Conn
	prefix []byte
}

func (p *prefixed) Underlying() net.Conn {
	if len(p.prefix) == 0 {
		return p.Conn
	}
	return nil
}

// TestLoopLegs: what the loop takes over, and what stays with the
// Goroutine engine.
func TestLoopLegs(t *testing.T) {
	ln := rigListener(t)
	_, tcp := connectLeg(t, ln, legTCP, false)
	_, tlsLeg := connectLeg(t, ln, legTLS, true)
	_, pipe := connectLeg(t, ln, legPipe, false)
	o, i := tcpPair(t, ln)
	t.Cleanup(func() { o.Close(); i.Close() })
	plainTLS := tls.Client(i, rigClientTLS) // not on a rawsock.Conn: crypto/tls owns the socket
	o2, i2 := tcpPair(t, ln)
	t.Cleanup(func() { o2.Close(); i2.Close() })
	consumed := tls.Client(&prefixed{Conn: rawsock.Wrap(i2)}, rigClientTLS)
	pending := tls.Client(&prefixed{Conn: rawsock.Wrap(i2), prefix: []byte{0x16}}, rigClientTLS)
	hsDone := func(c *tls.Conn, peer net.Conn) {
		srv := tls.Server(peer, rigServerTLS(t))
		handshake(t, srv, c)
	}
	hsDone(consumed, o2)
	for _, tc := range []struct {
		name string
		c    net.Conn
		want bool
	}{
		{"plaintext TCP", tcp, true},
		{"TLS on rawsock.Conn", tlsLeg, true},
		{"TLS on a bare TCPConn", plainTLS, false},
		{"TLS on a wrapper with nothing left to replay", consumed, true},
		{"TLS on a wrapper with bytes to replay", pending, false},
		{"net.Pipe", pipe, false},
	} {
		if _, ok := legOf(tc.c); ok != tc.want {
			t.Errorf("%s: handed over = %v, want %v", tc.name, ok, tc.want)
		}
	}
}

// TestLoopHandOverKeepsTLSBuffered: what crypto/tls had read before the
// hand-over (the rest of a record the login read part of) reaches the
// client at once, though the socket holds nothing more, and before what
// the server sends next.
func TestLoopHandOverKeepsTLSBuffered(t *testing.T) {
	p := newTestPool(t, Loop, Options{})
	ln := rigListener(t)
	s := &session{done: make(chan Stats, 1), finished: make(chan struct{})}
	s.app, s.pc = connectLeg(t, ln, legTCP, false)
	s.server, s.pu = connectLeg(t, ln, legTLS, true)
	first := bytes.Repeat([]byte("a"), 3000) // one record
	if _, err := s.server.Write(first); err != nil {
		t.Fatal(err)
	}
	// The login reads the start of the record: crypto/tls reads all of it.
	head := make([]byte, 10)
	if _, err := io.ReadFull(s.pu, head); err != nil {
		t.Fatal(err)
	}
	s.start(p)
	t.Cleanup(func() { s.close(t) })
	got := make([]byte, len(first)-10)
	_ = s.app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.ReadFull(s.app, got); err != nil {
		t.Fatalf("app read %d of the %d bytes crypto/tls held: %v", n, len(got), err)
	}
	if !bytes.Equal(got, first[10:]) {
		t.Fatalf("app got different bytes, first difference at %d", firstDiff(got, first[10:]))
	}
	second := bytes.Repeat([]byte("b"), 40000) // three records
	if _, err := s.server.Write(second); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(second))
	if _, err := io.ReadFull(s.app, got); err != nil || !bytes.Equal(got, second) {
		t.Fatalf("app read %v after the buffered bytes (first difference at %d)", err, firstDiff(got, second))
	}
	s.app.Close()
	s.server.Close()
	if st := s.wait(t); st.Engine != Loop {
		t.Errorf("engine %q, want loop", st.Engine)
	}
}

// TestLoopHandOverEndsStrayReads: a goroutine still blocked in a Read of a
// connection when the loop takes it over (a library's background reader)
// gets net.ErrClosed and no byte: every byte the server sends after the
// hand-over reaches the client. The Read on the TLS connection cannot take
// bytes either: its transport's socket is closed under it.
func TestLoopHandOverEndsStrayReads(t *testing.T) {
	p := newTestPool(t, Loop, Options{})
	for _, l := range [][2]legKind{{legTCP, legTLS}, {legTCP, legTCP}} {
		t.Run(legName(l), func(t *testing.T) {
			ln := rigListener(t)
			s := &session{done: make(chan Stats, 1), finished: make(chan struct{})}
			s.app, s.pc = connectLeg(t, ln, l[0], false)
			s.server, s.pu = connectLeg(t, ln, l[1], true)
			stray := func(c net.Conn) chan error {
				ch := make(chan error, 1)
				go func() {
					b := make([]byte, 64)
					n, err := c.Read(b)
					if n > 0 {
						err = errors.New("stray read took " + string(b[:n]))
					}
					ch <- err
				}()
				return ch
			}
			var rawUp = s.pu
			if tc, ok := s.pu.(*tls.Conn); ok {
				rawUp = tc.NetConn()
			}
			upRead, clientRead := stray(rawUp), stray(s.pc)
			time.Sleep(20 * time.Millisecond) // both reads are parked in the poller
			s.start(p)
			t.Cleanup(func() { s.close(t) })
			for name, ch := range map[string]chan error{"upstream": upRead, "client": clientRead} {
				select {
				case err := <-ch:
					if !errors.Is(err, net.ErrClosed) {
						t.Errorf("stray read on the %s leg ended with %v, want net.ErrClosed", name, err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("stray read on the %s leg still blocked after the hand-over", name)
				}
			}
			echoThrough(t, s, []byte("after the hand-over"))
		})
	}
}

// TestLoopFairness: a session that streams without pause does not starve
// another on the same loop: small round trips go on while it streams.
func TestLoopFairness(t *testing.T) {
	p := newTestPool(t, Loop, Options{Loops: 1})
	bulk := startSession(t, p, legTCP, legTLS)
	s := startSession(t, p, legTCP, legTLS)
	quit := make(chan struct{})
	streamed := make(chan struct{})
	go func() { // the server streams to its app as fast as the loop relays
		defer close(streamed)
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for {
			select {
			case <-quit:
				return
			default:
			}
			if _, err := bulk.server.Write(chunk); err != nil {
				return
			}
		}
	}()
	drained := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, bulk.app); close(drained) }()
	for range 50 {
		echoThrough(t, s, []byte("small"))
	}
	close(quit)
	bulk.server.Close()
	<-streamed
	bulk.app.Close()
	<-drained
}

// TestLoopPoolStop: stopping a pool ends the sessions on its loops (as
// closing their connections would), the loops close their descriptors, a
// command posted late (a linger timer firing after the end) is dropped,
// and a session that comes after the stop goes to the Goroutine engine.
func TestLoopPoolStop(t *testing.T) {
	p := newTestPool(t, Loop, Options{Loops: 2})
	s := startSession(t, p, legTCP, legTLS)
	eventually(t, "the session is on a loop", s.stop.handedOver)
	echoThrough(t, s, []byte("on the loop"))
	p.Stop()
	st := s.wait(t)
	if st.Engine != Loop || st.ClosedBy != Upstream || !errors.Is(st.Err, net.ErrClosed) {
		t.Errorf("stopped session: %+v; want the loop, closed as if by the proxy", st)
	}
	_ = s.app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.app.Read(make([]byte, 1)); err == nil {
		t.Error("the stopped session's client leg is still open")
	}
	p.Stop()
	for i, l := range p.loops.loops {
		eventually(t, "loop ended", func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.closed
		})
		ran := false
		if l.post(func() { ran = true }) || ran || len(l.cmds) != 0 {
			t.Errorf("loop %d: a command posted after the end was queued or ran", i)
		}
	}
	after := startSession(t, p, legTCP, legTLS)
	echoThrough(t, after, []byte("after the stop"))
	after.app.Close()
	after.server.Close()
	if st := after.wait(t); st.Engine != Goroutine || !errors.Is(st.Fallback, errLoopsStopped) {
		t.Errorf("session after the stop: engine %q, fallback %v; want goroutine, %v", st.Engine, st.Fallback, errLoopsStopped)
	}
}

// TestEndpointBackstop: an endpoint whose socket takes nothing keeps what
// it cannot write, up to MaxPending; the write that would pass it fails
// with the backstop's error, which sticks, and nothing more is kept.
func TestEndpointBackstop(t *testing.T) {
	l, err := newEvLoop(newLoopPool(1), DefaultLinger)
	if err != nil {
		t.Fatal(err)
	}
	// The parking epoll through the os.File that owns it: a descriptor
	// closed under it would be closed again by its finalizer, whoever holds
	// the number then.
	t.Cleanup(func() { l.park.Close(); syscall.Close(l.epfd); syscall.Close(l.evfd) })
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fds[1]) })
	s := l.newSession(nil)
	ep := s.c
	ep.fd = fds[0]
	t.Cleanup(func() { ep.Close() })
	chunk := bytes.Repeat([]byte("o"), 16<<10)
	var kept int
	for i := 0; ; i++ {
		n, err := ep.Write(chunk)
		if err != nil {
			var pl pendingLimitError
			if !errors.As(err, &pl) || pl.side != Client {
				t.Fatalf("write %d: %v, want the backstop's error for the client", i, err)
			}
			break
		}
		if n != len(chunk) {
			t.Fatalf("write %d took %d of %d bytes without an error", i, n, len(chunk))
		}
		kept = len(ep.out)
		if i > 10000 {
			t.Fatal("the socket never filled")
		}
	}
	if kept > MaxPending || len(ep.out) > MaxPending {
		t.Errorf("kept %d bytes pending, more than MaxPending (%d)", len(ep.out), MaxPending)
	}
	if _, err := ep.Write([]byte("x")); !errors.As(err, new(pendingLimitError)) {
		t.Errorf("a later write: %v, want the backstop's error again", err)
	}
	// A closed endpoint writes nowhere.
	ep.Close()
	if _, err := ep.Write([]byte("x")); err == nil {
		t.Error("a closed endpoint took a write")
	}
	if ep.fd != -1 {
		t.Errorf("a closed endpoint still names descriptor %d", ep.fd)
	}
}

// loopState reads a loop's wait state on its own goroutine.
func loopState(t *testing.T, l *evLoop) (parked, hold bool) {
	t.Helper()
	type st struct{ parked, hold bool }
	ch := make(chan st, 1)
	if !l.post(func() { ch <- st{l.parked, l.hold} }) {
		t.Fatal("the loop has ended")
	}
	select {
	case s := <-ch:
		return s.parked, s.hold
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not run a command")
		return false, false
	}
}

// TestLoopWaitModes: a loop holds its processor while traffic flows (with
// processors to spare), parks in Go's poller once quiet for holdWait, and
// wakes from the park for the next message; with one processor it never
// holds. Each way, the session relays and the GC can stop the world.
func TestLoopWaitModes(t *testing.T) {
	for _, procs := range []int{0, 1} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", procs), func(t *testing.T) {
			if procs > 0 {
				old := runtime.GOMAXPROCS(procs)
				t.Cleanup(func() { runtime.GOMAXPROCS(old) })
			}
			p := newTestPool(t, Loop, Options{Loops: 1})
			s := startSession(t, p, legTCP, legTLS)
			echoThrough(t, s, []byte("first"))
			if err := p.loops.start(p.opts.Linger); err != nil { // (its once orders the read below)
				t.Fatal(err)
			}
			l := p.loops.loops[0]
			wantHold := runtime.GOMAXPROCS(0) > 1
			// Traffic and collections at once: the world stops whatever
			// the loop waits in.
			stop := make(chan struct{})
			gcs := make(chan int, 1)
			go func() {
				n := 0
				for {
					select {
					case <-stop:
						gcs <- n
						return
					default:
					}
					runtime.GC()
					n++
				}
			}()
			for range 200 {
				echoThrough(t, s, []byte("ping"))
			}
			close(stop)
			if n := <-gcs; n == 0 {
				t.Error("no collection completed while the session relayed")
			}
			// Asking wakes the loop: ask once, after it was quiet for long.
			time.Sleep(10 * holdWait * time.Millisecond)
			parked, hold := loopState(t, l)
			if !parked {
				t.Error("the loop did not park after 10 × holdWait without an event")
			}
			if hold != wantHold {
				t.Errorf("hold = %v with GOMAXPROCS %d and 1 loop, want %v", hold, runtime.GOMAXPROCS(0), wantHold)
			}
			echoThrough(t, s, []byte("after the park"))
		})
	}
}
