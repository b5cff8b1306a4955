package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// forEachRelayMode runs f as a subtest per relay implementation of this
// system (testRelayModes: on Linux the fast path and the portable relay,
// elsewhere the portable one), named after it.
func forEachRelayMode(t *testing.T, f func(t *testing.T, mode relayMode)) {
	for _, mode := range testRelayModes {
		t.Run(mode.String(), func(t *testing.T) { f(t, mode) })
	}
}

// isConnReset reports an error caused by a reset of the connection.
// Windows has its own numbers (syscall.ECONNRESET there is an invented
// value no socket returns): WSAECONNRESET, WSAECONNABORTED, and
// ERROR_NETNAME_DELETED, which an overlapped operation on a reset
// connection may return instead.
func isConnReset(err error) bool {
	if runtime.GOOS == "windows" {
		return errors.Is(err, syscall.Errno(10054)) || errors.Is(err, syscall.Errno(10053)) || errors.Is(err, syscall.Errno(64))
	}
	return errors.Is(err, syscall.ECONNRESET)
}

// testRelay is a running relay between app and server.
type testRelay struct {
	app, server net.Conn
	counters    byteCounters
	done        chan relayStats
}

func startTestRelay(t *testing.T, mode relayMode, client, upstream legKind) *testRelay {
	t.Helper()
	ln := rigListener(t)
	r := &testRelay{done: make(chan relayStats, 1)}
	var pc, pu net.Conn
	r.app, pc = connectLeg(t, ln, client, false)
	r.server, pu = connectLeg(t, ln, upstream, true)
	finished := make(chan struct{})
	var stop stopHook
	go func() {
		defer close(finished)
		r.done <- relay(pc, pu, &r.counters, mode, relayEnv{register: stop.register})
	}()
	// The relay must be gone before the test ends: a later test may change
	// relayLinger, which a straggling relay would read when it ends.
	t.Cleanup(func() {
		// An event-loop relay is stopped on its loop, and must be over
		// before anyone closes its TLS connections: the loop owns them.
		if stop.stop() {
			<-finished
		}
		pc.Close()
		pu.Close()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("Relay did not return after both legs were closed")
		}
	})
	return r
}

func (r *testRelay) wait(t *testing.T) relayStats {
	t.Helper()
	select {
	case st := <-r.done:
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("Relay did not return")
		return relayStats{}
	}
}

// relayLegs are the leg combinations every test runs on: production's
// (plaintext client, TLS upstream) first.
var relayLegs = [][2]legKind{
	{legTCP, legTLS},
	{legTLS, legTLS},
	{legTCP, legTCP},
	{legPipe, legPipe},
}

func relayLegName(l [2]legKind) string { return string(l[0]) + "-" + string(l[1]) }

// relayWriteSizes returns the sizes of the writes of a pattern.
func relayWriteSizes(pattern string, rng *rand.Rand) []int {
	const idle, big = relayIdleBufferSize, relayBufferSize
	switch pattern {
	case "boundaries": // around the idle buffer, a TLS record, the pooled buffer
		return []int{1, idle - 1, idle, idle + 1, 2 * idle, 16384, 16385, 16384 + idle, big - 1, big, big + 1, 2*big + 7, 1}
	case "small":
		s := make([]int, 300)
		for i := range s {
			s[i] = 1 + rng.IntN(200)
		}
		return s
	case "large":
		s := make([]int, 12)
		for i := range s {
			s[i] = big/2 + rng.IntN(3*big)
		}
		return s
	case "mixed":
		s := make([]int, 150)
		for i := range s {
			switch rng.IntN(4) {
			case 0:
				s[i] = 1 + rng.IntN(64)
			case 1:
				s[i] = idle - 8 + rng.IntN(16)
			case 2:
				s[i] = 1 + rng.IntN(20000)
			default:
				s[i] = 1 + rng.IntN(3*big)
			}
		}
		return s
	}
	panic(pattern)
}

// relayRandomBytes returns n deterministic pseudo-random bytes.
func relayRandomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestRelayByteExact streams random data both ways at once, in writes of
// many sizes (some sessions pausing now and then so that directions go idle
// between bursts), and checks every byte and the counters.
func TestRelayByteExact(t *testing.T) {
	forEachRelayMode(t, testRelayByteExact)
}

func testRelayByteExact(t *testing.T, mode relayMode) {
	for _, legs := range relayLegs {
		for _, pattern := range []string{"boundaries", "small", "large", "mixed"} {
			for _, pauses := range []bool{false, true} {
				if pauses && pattern != "mixed" && pattern != "boundaries" {
					continue
				}
				name := fmt.Sprintf("%s/%s/pauses=%v", relayLegName(legs), pattern, pauses)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					r := startTestRelay(t, mode, legs[0], legs[1])
					seed := uint64(len(name))
					var wg sync.WaitGroup
					var sent [2]int64
					for dir, ends := range [2][2]net.Conn{{r.app, r.server}, {r.server, r.app}} {
						src, dst := ends[0], ends[1]
						rng := rand.New(rand.NewPCG(seed, uint64(dir)))
						sizes := relayWriteSizes(pattern, rng)
						var total int
						for _, n := range sizes {
							total += n
						}
						data := relayRandomBytes(rng, total)
						sent[dir] = int64(total)
						wg.Add(2)
						go func() {
							defer wg.Done()
							off := 0
							for i, n := range sizes {
								if _, err := src.Write(data[off : off+n]); err != nil {
									t.Errorf("write: %v", err)
									return
								}
								off += n
								if pauses && i%7 == 0 {
									time.Sleep(time.Millisecond)
								}
							}
						}()
						go func() {
							defer wg.Done()
							got := make([]byte, total)
							if _, err := io.ReadFull(dst, got); err != nil {
								t.Errorf("read after %d bytes: %v", total, err)
								return
							}
							if i := relayFirstDiff(got, data); i >= 0 {
								t.Errorf("direction %d: byte %d of %d differs", dir, i, total)
							}
						}()
					}
					wg.Wait()
					// The counters are live: they reach the totals while
					// the relay still runs (a Write may return just after
					// its reader has the bytes).
					waitRelayCounter(t, "client→upstream", &r.counters.ClientToUpstream, sent[0])
					waitRelayCounter(t, "upstream→client", &r.counters.UpstreamToClient, sent[1])
					r.app.Close()
					r.server.Close()
					st := r.wait(t)
					if st.ClientToUpstream != sent[0] || st.UpstreamToClient != sent[1] {
						t.Errorf("stats %d/%d, want %d/%d", st.ClientToUpstream, st.UpstreamToClient, sent[0], sent[1])
					}
				})
			}
		}
	}
}

func waitRelayCounter(t *testing.T, name string, c *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Load() != want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := c.Load(); got != want {
		t.Errorf("live counter %s = %d, want %d", name, got, want)
	}
}

func relayFirstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestRelayPingPongSizes sends one message at a time and waits for it to
// arrive before the next: a message must never wait for more data, whatever
// its size relative to the buffers (one that exactly fills the idle buffer
// must not leave the relay blocked in a second Read).
func TestRelayPingPongSizes(t *testing.T) {
	forEachRelayMode(t, testRelayPingPongSizes)
}

func testRelayPingPongSizes(t *testing.T, mode relayMode) {
	const idle, big = relayIdleBufferSize, relayBufferSize
	sizes := []int{1, 30, idle - 1, idle, idle + 1, 16384 - 1, 16384, 16385, big - 1, big, big + 1, 3*big + 5, 200}
	for _, legs := range relayLegs {
		t.Run(relayLegName(legs), func(t *testing.T) {
			t.Parallel()
			r := startTestRelay(t, mode, legs[0], legs[1])
			rng := rand.New(rand.NewPCG(1, 2))
			for _, n := range sizes {
				for _, ends := range [2][2]net.Conn{{r.app, r.server}, {r.server, r.app}} {
					src, dst := ends[0], ends[1]
					msg := relayRandomBytes(rng, n)
					errc := make(chan error, 1)
					go func() { _, err := src.Write(msg); errc <- err }()
					got := make([]byte, n)
					_ = dst.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := io.ReadFull(dst, got); err != nil {
						t.Fatalf("%d-byte message: %v", n, err)
					}
					_ = dst.SetReadDeadline(time.Time{})
					if err := <-errc; err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, msg) {
						t.Fatalf("%d-byte message differs", n)
					}
				}
			}
			// The relay still waits normally (no read deadline left
			// behind by the buffered path).
			time.Sleep(20 * time.Millisecond)
			select {
			case st := <-r.done:
				t.Fatalf("relay ended while idle: %+v", st)
			default:
			}
		})
	}
}

// relayHalfClose shuts down the writing side of c (TLS: close_notify).
func relayHalfClose(t *testing.T, c net.Conn) {
	t.Helper()
	cw, ok := c.(closeWriter)
	if !ok {
		t.Fatalf("%T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// TestRelayHalfClose: a clean EOF from one side reaches the other as a
// half-close, and the other direction goes on until it ends too.
func TestRelayHalfClose(t *testing.T) {
	forEachRelayMode(t, testRelayHalfClose)
}

func testRelayHalfClose(t *testing.T, mode relayMode) {
	for _, legs := range relayLegs[:3] { // net.Pipe cannot half-close
		for _, first := range []side{sideClient, sideUpstream} {
			t.Run(relayLegName(legs)+"/"+string(first)+"-first", func(t *testing.T) {
				t.Parallel()
				r := startTestRelay(t, mode, legs[0], legs[1])
				a, b := r.app, r.server // a ends first
				if first == sideUpstream {
					a, b = b, a
				}
				req := bytes.Repeat([]byte("q"), 3*relayIdleBufferSize+1)
				if _, err := a.Write(req); err != nil {
					t.Fatal(err)
				}
				relayHalfClose(t, a)
				got, err := io.ReadAll(b) // up to the passed-on EOF
				if err != nil || !bytes.Equal(got, req) {
					t.Fatalf("other side read %d bytes, %v; want %d then EOF", len(got), err, len(req))
				}
				// The answer still flows after the half-close.
				resp := bytes.Repeat([]byte("r"), 100000)
				go func() {
					b.Write(resp)
					b.Close()
				}()
				got, err = io.ReadAll(a)
				if err != nil || !bytes.Equal(got, resp) {
					t.Fatalf("first side read %d bytes after its half-close, %v; want %d", len(got), err, len(resp))
				}
				st := r.wait(t)
				if st.ClosedBy != first || st.Err != nil {
					t.Errorf("closed by %q with %v, want %q and no error", st.ClosedBy, st.Err, first)
				}
				up, down := int64(len(req)), int64(len(resp))
				if first == sideUpstream {
					up, down = down, up
				}
				if st.ClientToUpstream != up || st.UpstreamToClient != down {
					t.Errorf("stats %d/%d, want %d/%d", st.ClientToUpstream, st.UpstreamToClient, up, down)
				}
			})
		}
	}
}

// TestRelayLinger: after a clean EOF the other direction gets relayLinger,
// then both are closed; the stats tell who ended first, with no error.
func TestRelayLinger(t *testing.T) {
	old := relayLinger
	relayLinger = 100 * time.Millisecond
	t.Cleanup(func() { relayLinger = old })
	forEachRelayMode(t, testRelayLinger)
}

func testRelayLinger(t *testing.T, mode relayMode) {
	for _, legs := range relayLegs[:3] {
		t.Run(relayLegName(legs), func(t *testing.T) {
			r := startTestRelay(t, mode, legs[0], legs[1])
			start := time.Now() // the linger starts after this
			relayHalfClose(t, r.server)
			if _, err := io.ReadAll(r.app); err != nil {
				t.Fatal(err)
			}
			st := r.wait(t) // the client never ends on its own
			if d := time.Since(start); d < relayLinger {
				t.Errorf("relay ended %v after the half-close, want at least %v", d, relayLinger)
			}
			if st.ClosedBy != sideUpstream || st.Err != nil {
				t.Errorf("closed by %q with %v, want upstream and no error", st.ClosedBy, st.Err)
			}
			// The client leg was closed: the application sees its end.
			_ = r.app.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := r.app.Read(make([]byte, 1)); err == nil {
				t.Error("client leg still open after the linger")
			}
		})
	}
}

// relayResetConn closes the TCP connection under c with a reset.
func relayResetConn(t *testing.T, c net.Conn) {
	t.Helper()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestRelayErrorEndsBoth: an error on one leg ends the relay at once,
// closes the other leg, and is reported as net.Conn.Read would report it.
func TestRelayErrorEndsBoth(t *testing.T) {
	forEachRelayMode(t, testRelayErrorEndsBoth)
}

func testRelayErrorEndsBoth(t *testing.T, mode relayMode) {
	for _, legs := range relayLegs[:3] {
		for _, broken := range []side{sideClient, sideUpstream} {
			t.Run(relayLegName(legs)+"/"+string(broken)+"-reset", func(t *testing.T) {
				t.Parallel()
				r := startTestRelay(t, mode, legs[0], legs[1])
				bad, other := r.app, r.server
				if broken == sideUpstream {
					bad, other = other, bad
				}
				// Traffic first, so that the reset hits a relay in use.
				if _, err := bad.Write([]byte("hello")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(other, make([]byte, 5)); err != nil {
					t.Fatal(err)
				}
				relayResetConn(t, bad)
				st := r.wait(t)
				if st.ClosedBy != broken {
					t.Errorf("closed by %q, want %q", st.ClosedBy, broken)
				}
				if !isConnReset(st.Err) {
					t.Errorf("err = %v, want a connection reset", st.Err)
				}
				var oe *net.OpError
				if !errors.As(st.Err, &oe) || oe.Op != "read" || !strings.HasPrefix(st.Err.Error(), "read tcp ") {
					t.Errorf("err = %q, want a *net.OpError of a read", st.Err)
				}
				_ = other.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadAll(other); err != nil && !isConnReset(err) {
					t.Errorf("other leg: %v, want it closed", err)
				}
			})
		}
	}
}

// TestRelayIdleMemory checks the memory held by idle relayed sessions (see
// idleSessionMemory): the relay's own share must stay far below the 64 KiB
// its two pooled buffers alone took before.
func TestRelayIdleMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 200 sessions")
	}
	forEachRelayMode(t, func(t *testing.T, mode relayMode) {
		testRelayIdleMemory(t, mode)
	})
}

func testRelayIdleMemory(t *testing.T, mode relayMode) {
	m := idleSessionMemory(t, 200, true, mode)
	t.Logf("per idle session: relay %.0f B (stacks %.0f B), proxy's upstream crypto/tls buffers %.0f B, everything (both ends of both legs) %.0f B",
		m.relay(), m.relayStack, m.tlsIn, m.all)
	if m.relay() > 32<<10 {
		t.Errorf("relay holds %.0f B per idle session, want at most 32 KiB", m.relay())
	}
}

// TestRelayResetRightAfterData: a client that sends a message and resets
// at once (the reset can reach the socket with the data, which TCP_INQ
// does not count) still ends its session, within relayRecheck, and the
// server gets the message first.
func TestRelayResetRightAfterData(t *testing.T) {
	const recheck = 300 * time.Millisecond
	setRelayRecheck(t, recheck)
	forEachRelayMode(t, func(t *testing.T, mode relayMode) {
		testRelayResetRightAfterData(t, mode, recheck)
	})
}

func testRelayResetRightAfterData(t *testing.T, mode relayMode, recheck time.Duration) {
	msg := []byte("X\x00\x00\x00\x04")
	for i := range 20 {
		r := startTestRelay(t, mode, legTCP, legTLS)
		if _, err := r.app.Write(msg); err != nil {
			t.Fatal(err)
		}
		relayResetConn(t, r.app)
		got := make([]byte, len(msg))
		_ = r.server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(r.server, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round %d: server read %q, %v; want %q", i, got, err, msg)
		}
		start := time.Now()
		st := r.wait(t)
		if d := time.Since(start); d > recheck+2*time.Second {
			t.Errorf("round %d: relay ended %v after the reset, want within %v", i, d, recheck)
		}
		if st.ClosedBy != sideClient {
			t.Errorf("round %d: closed by %q, want the client", i, st.ClosedBy)
		}
	}
}
