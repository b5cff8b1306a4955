package relay

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

// legs are the leg combinations every test runs on: the proxy's usual one
// (plaintext client, TLS upstream) first.
var legs = [][2]legKind{
	{legTCP, legTLS},
	{legTLS, legTLS},
	{legTCP, legTCP},
	{legPipe, legPipe},
}

func legName(l [2]legKind) string { return string(l[0]) + "-" + string(l[1]) }

func TestParseEngine(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Engine
		ok   bool
	}{
		{"", Loop, true},
		{"loop", Loop, true},
		{"goroutine", Goroutine, true},
		{"portable", Portable, true},
		{"fast", "", false},
		{"Loop", "", false},
	} {
		got, err := ParseEngine(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseEngine(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	if _, err := NewPool(Options{Loops: -1}); err == nil {
		t.Error("NewPool took relay_loops -1")
	}
}

// TestEngineCarriesTheSession: each engine reports itself in Stats, and on
// socket legs it is the one that relayed; the loop falls back to the
// Goroutine engine on legs it cannot own, and says why.
func TestEngineCarriesTheSession(t *testing.T) {
	for _, e := range testEngines() {
		for _, l := range legs {
			t.Run(string(e)+"/"+legName(l), func(t *testing.T) {
				s := startSession(t, newTestPool(t, e, Options{}), l[0], l[1])
				echoThrough(t, s, []byte("ping"))
				s.app.Close()
				s.server.Close()
				st := s.wait(t)
				want := e
				if e == Loop && l[0] == legPipe {
					want = Goroutine
					if !errors.Is(st.Fallback, errNotSockets) {
						t.Errorf("fallback %v, want %v", st.Fallback, errNotSockets)
					}
				} else if st.Fallback != nil {
					t.Errorf("fallback %v on socket legs", st.Fallback)
				}
				if st.Engine != want {
					t.Errorf("engine %q, want %q", st.Engine, want)
				}
			})
		}
	}
}

// writeSizes returns the sizes of the writes of a pattern.
func writeSizes(pattern string, rng *rand.Rand) []int {
	const idle, big = idleBufferSize, bufferSize
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

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestByteExact streams random data both ways at once, in writes of many
// sizes (some sessions pausing now and then so that directions go idle
// between bursts), and checks every byte and the counters.
func TestByteExact(t *testing.T) {
	forEachEngine(t, testByteExact)
}

func testByteExact(t *testing.T, e Engine) {
	p := newTestPool(t, e, Options{})
	for _, l := range legs {
		for _, pattern := range []string{"boundaries", "small", "large", "mixed"} {
			for _, pauses := range []bool{false, true} {
				if pauses && pattern != "mixed" && pattern != "boundaries" {
					continue
				}
				name := fmt.Sprintf("%s/%s/pauses=%v", legName(l), pattern, pauses)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					s := startSession(t, p, l[0], l[1])
					seed := uint64(len(name))
					var wg sync.WaitGroup
					var sent [2]int64
					for dir, ends := range [2][2]net.Conn{{s.app, s.server}, {s.server, s.app}} {
						src, dst := ends[0], ends[1]
						rng := rand.New(rand.NewPCG(seed, uint64(dir)))
						sizes := writeSizes(pattern, rng)
						var total int
						for _, n := range sizes {
							total += n
						}
						data := randomBytes(rng, total)
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
							if i := firstDiff(got, data); i >= 0 {
								t.Errorf("direction %d: byte %d of %d differs", dir, i, total)
							}
						}()
					}
					wg.Wait()
					// The counters are live: they reach the totals while
					// the relay still runs (a Write may return just after
					// its reader has the bytes).
					waitCounter(t, "client→upstream", &s.counters.ClientToUpstream, sent[0])
					waitCounter(t, "upstream→client", &s.counters.UpstreamToClient, sent[1])
					s.app.Close()
					s.server.Close()
					st := s.wait(t)
					if st.ClientToUpstream != sent[0] || st.UpstreamToClient != sent[1] {
						t.Errorf("stats %d/%d, want %d/%d", st.ClientToUpstream, st.UpstreamToClient, sent[0], sent[1])
					}
				})
			}
		}
	}
}

func waitCounter(t *testing.T, name string, c *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Load() != want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := c.Load(); got != want {
		t.Errorf("live counter %s = %d, want %d", name, got, want)
	}
}

func firstDiff(a, b []byte) int {
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

// TestPingPongSizes sends one message at a time and waits for it to
// arrive before the next: a message must never wait for more data,
// whatever its size relative to the buffers (one that exactly fills the
// idle buffer must not leave the relay blocked in a second Read).
func TestPingPongSizes(t *testing.T) {
	forEachEngine(t, testPingPongSizes)
}

func testPingPongSizes(t *testing.T, e Engine) {
	const idle, big = idleBufferSize, bufferSize
	sizes := []int{1, 30, idle - 1, idle, idle + 1, 16384 - 1, 16384, 16385, big - 1, big, big + 1, 3*big + 5, 200}
	p := newTestPool(t, e, Options{})
	for _, l := range legs {
		t.Run(legName(l), func(t *testing.T) {
			t.Parallel()
			s := startSession(t, p, l[0], l[1])
			rng := rand.New(rand.NewPCG(1, 2))
			for _, n := range sizes {
				for _, ends := range [2][2]net.Conn{{s.app, s.server}, {s.server, s.app}} {
					src, dst := ends[0], ends[1]
					msg := randomBytes(rng, n)
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
			case st := <-s.done:
				t.Fatalf("relay ended while idle: %+v", st)
			default:
			}
		})
	}
}

// halfClose shuts down the writing side of c (TLS: close_notify).
func halfClose(t *testing.T, c net.Conn) {
	t.Helper()
	cw, ok := c.(closeWriter)
	if !ok {
		t.Fatalf("%T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// TestHalfClose: a clean EOF from one side reaches the other as a
// half-close, and the other direction goes on until it ends too.
func TestHalfClose(t *testing.T) {
	forEachEngine(t, testHalfClose)
}

func testHalfClose(t *testing.T, e Engine) {
	p := newTestPool(t, e, Options{})
	for _, l := range legs[:3] { // net.Pipe cannot half-close
		for _, first := range []Side{Client, Upstream} {
			t.Run(legName(l)+"/"+string(first)+"-first", func(t *testing.T) {
				t.Parallel()
				s := startSession(t, p, l[0], l[1])
				a, b := s.app, s.server // a ends first
				if first == Upstream {
					a, b = b, a
				}
				req := bytes.Repeat([]byte("q"), 3*idleBufferSize+1)
				if _, err := a.Write(req); err != nil {
					t.Fatal(err)
				}
				halfClose(t, a)
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
				st := s.wait(t)
				if st.ClosedBy != first || st.Err != nil {
					t.Errorf("closed by %q with %v, want %q and no error", st.ClosedBy, st.Err, first)
				}
				up, down := int64(len(req)), int64(len(resp))
				if first == Upstream {
					up, down = down, up
				}
				if st.ClientToUpstream != up || st.UpstreamToClient != down {
					t.Errorf("stats %d/%d, want %d/%d", st.ClientToUpstream, st.UpstreamToClient, up, down)
				}
			})
		}
	}
}

// TestLinger: after a clean EOF the other direction gets Options.Linger,
// then both are closed; the stats tell who ended first, with no error.
func TestLinger(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		const linger = 100 * time.Millisecond
		p := newTestPool(t, e, Options{Linger: linger})
		for _, l := range legs[:3] {
			t.Run(legName(l), func(t *testing.T) {
				t.Parallel()
				s := startSession(t, p, l[0], l[1])
				start := time.Now() // the linger starts after this
				halfClose(t, s.server)
				if _, err := io.ReadAll(s.app); err != nil {
					t.Fatal(err)
				}
				st := s.wait(t) // the client never ends on its own
				if d := time.Since(start); d < linger {
					t.Errorf("relay ended %v after the half-close, want at least %v", d, linger)
				}
				if st.ClosedBy != Upstream || st.Err != nil {
					t.Errorf("closed by %q with %v, want upstream and no error", st.ClosedBy, st.Err)
				}
				// The client leg was closed: the application sees its end.
				_ = s.app.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := s.app.Read(make([]byte, 1)); err == nil {
					t.Error("client leg still open after the linger")
				}
			})
		}
	})
}

// resetConn closes the TCP connection under c with a reset.
func resetConn(t *testing.T, c net.Conn) {
	t.Helper()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestErrorEndsBoth: an error on one leg ends the relay at once, closes the
// other leg, and is reported as net.Conn.Read would report it.
func TestErrorEndsBoth(t *testing.T) {
	forEachEngine(t, testErrorEndsBoth)
}

func testErrorEndsBoth(t *testing.T, e Engine) {
	p := newTestPool(t, e, Options{})
	for _, l := range legs[:3] {
		for _, broken := range []Side{Client, Upstream} {
			t.Run(legName(l)+"/"+string(broken)+"-reset", func(t *testing.T) {
				t.Parallel()
				s := startSession(t, p, l[0], l[1])
				bad, other := s.app, s.server
				if broken == Upstream {
					bad, other = other, bad
				}
				// Traffic first, so that the reset hits a relay in use.
				if _, err := bad.Write([]byte("hello")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(other, make([]byte, 5)); err != nil {
					t.Fatal(err)
				}
				resetConn(t, bad)
				st := s.wait(t)
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

// TestResetRightAfterData: a client that sends a message and resets at
// once (the reset can reach the socket with the data, which TCP_INQ does
// not count) still ends its session, within Options.Recheck on the
// Goroutine engine (at once on the others), and the server gets the
// message first.
func TestResetRightAfterData(t *testing.T) {
	const recheck = 300 * time.Millisecond
	forEachEngine(t, func(t *testing.T, e Engine) {
		p := newTestPool(t, e, Options{Recheck: recheck})
		msg := []byte("X\x00\x00\x00\x04")
		for i := range 20 {
			s := startSession(t, p, legTCP, legTLS)
			if _, err := s.app.Write(msg); err != nil {
				t.Fatal(err)
			}
			resetConn(t, s.app)
			got := make([]byte, len(msg))
			_ = s.server.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(s.server, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("round %d: server read %q, %v; want %q", i, got, err, msg)
			}
			start := time.Now()
			st := s.wait(t)
			if d := time.Since(start); d > recheck+2*time.Second {
				t.Errorf("round %d: relay ended %v after the reset, want within %v", i, d, recheck)
			}
			if st.ClosedBy != Client {
				t.Errorf("round %d: closed by %q, want the client", i, st.ClosedBy)
			}
		}
	})
}

// TestIdleMemory checks the memory held by idle relayed sessions (see
// idleSessionMemory): the relay's own share must stay far below the 64 KiB
// its two pooled buffers alone took before.
func TestIdleMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 200 sessions")
	}
	forEachEngine(t, func(t *testing.T, e Engine) {
		m := idleSessionMemory(t, newTestPool(t, e, Options{}), 200, true)
		t.Logf("per idle session: relay %.0f B (stacks %.0f B), relay's upstream crypto/tls buffers %.0f B, everything (both ends of both legs) %.0f B",
			m.relay(), m.relayStack, m.tlsIn, m.all)
		if m.relay() > 32<<10 {
			t.Errorf("relay holds %.0f B per idle session, want at most 32 KiB", m.relay())
		}
	})
}
