package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// floodBound is what a hostile session may add to the heap in these tests:
// MaxPending per side, crypto/tls's own buffers, and room for the
// runtime's and the test's noise. Without the bound, the loop held 13.6 MiB
// per 16 MiB of KeyUpdates (issue 23).
const floodBound = 2*MaxPending + 512<<10

// floodTotal is how much a flooding peer sends at most; it stops earlier
// when a write has waited a second (the relay stopped reading it).
const floodTotal = 16 << 20

// TestHostilePeerMemoryIsBounded: a peer that never reads cannot make the
// relay hold more than the bound, on any engine, from either side:
//
//   - keyupdate: TLS 1.3 KeyUpdates asking for an answer (crypto/tls
//     answers each from inside Read), with an application byte after
//     every 15;
//   - echo: data that the other side answers in full (pipelined queries
//     whose answers are never read);
//   - stream: the other side streams to it (a COPY TO nobody reads).
//
// The live heap may grow by at most floodBound while the flood runs.
func TestHostilePeerMemoryIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("floods 16 MiB per case")
	}
	forEachEngine(t, func(t *testing.T, e Engine) {
		p := newTestPool(t, e, Options{})
		for _, hostile := range []Side{Client, Upstream} {
			for _, kind := range []string{"keyupdate", "echo", "stream"} {
				t.Run(string(hostile)+"/"+kind, func(t *testing.T) {
					testHostilePeer(t, p, hostile, kind)
				})
			}
		}
	})
}

func testHostilePeer(t *testing.T, p *Pool, hostile Side, kind string) {
	s := startSession(t, p, legTLS, legTLS)
	echoThrough(t, s, []byte("warm up"))
	attacker, other := s.app.(*tls.Conn), s.server.(*tls.Conn)
	if hostile == Upstream {
		attacker, other = other, attacker
	}
	before := readMemInUse()
	sent := make(chan int64, 1)
	stalled := func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
	switch kind {
	case "keyupdate":
		raw := attacker.NetConn()
		rw, err := testpki.TakeOver(attacker, raw)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = io.Copy(io.Discard, other) }()
		go func() {
			var n int64
			defer func() { sent <- n }()
			one := []byte{'x'}
			for n < floodTotal {
				m, err := rw.KeyUpdateBatch(2400, func() []byte { return one })
				if err != nil {
					t.Error(err)
					return
				}
				_ = raw.SetWriteDeadline(time.Now().Add(time.Second))
				if err := rw.Flush(); err != nil {
					if !stalled(err) {
						t.Errorf("flood: %v", err)
					}
					return
				}
				n += int64(m)
			}
		}()
	case "echo":
		go func() { _, _ = io.Copy(other, other) }()
		go func() {
			var n int64
			defer func() { sent <- n }()
			chunk := bytes.Repeat([]byte("Q"), 64<<10)
			for n < floodTotal {
				_ = attacker.SetWriteDeadline(time.Now().Add(time.Second))
				m, err := attacker.Write(chunk)
				n += int64(m)
				if err != nil {
					if !stalled(err) {
						t.Errorf("flood: %v", err)
					}
					return
				}
			}
		}()
	case "stream":
		go func() {
			var n int64
			defer func() { sent <- n }()
			chunk := bytes.Repeat([]byte("D"), 64<<10)
			for n < floodTotal {
				_ = other.SetWriteDeadline(time.Now().Add(time.Second))
				m, err := other.Write(chunk)
				n += int64(m)
				if err != nil {
					if !stalled(err) {
						t.Errorf("stream: %v", err)
					}
					return
				}
			}
		}()
	}
	var n int64
	select {
	case n = <-sent:
	case <-time.After(60 * time.Second):
		t.Fatal("the flood neither ended nor stalled in 60 s")
	}
	// A busy machine can stall the flood while the relay still works
	// through what the sockets hold; a collection that runs while it
	// allocates counts what it allocates as live. Measure once it is idle.
	waitQuiet(t, s)
	after := readMemInUse()
	grew := after.live - before.live
	t.Logf("%s sent %.1f MiB; heap grew by %d KiB (bound %d KiB)", kind, float64(n)/(1<<20), grew>>10, floodBound>>10)
	if grew > floodBound {
		t.Errorf("a peer that never reads grew the heap by %d KiB, more than the bound of %d KiB", grew>>10, floodBound>>10)
	}
	// The session still ends when the peers go.
	s.app.Close()
	s.server.Close()
	s.wait(t)
}

// pendingLimitTests: the backstop names the side that does not read.
func TestPendingLimitError(t *testing.T) {
	err := pendingLimitError{side: Client}
	if got := err.Error(); got != "relay: the client is not reading: more than 256 KiB waiting to be sent to it (the per-session bound)" {
		t.Errorf("error %q", got)
	}
	var ne net.Error
	if errors.As(error(err), &ne) {
		t.Error("the backstop error is a net.Error: crypto/tls could take it as temporary")
	}
}

// waitQuiet waits until the session's byte counters have not moved for
// half a second.
func waitQuiet(t *testing.T, s *session) {
	t.Helper()
	last := int64(-1)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		n := s.counters.ClientToUpstream.Load() + s.counters.UpstreamToClient.Load()
		if n == last {
			return
		}
		last = n
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatal("the relay was still busy 30 s after the flood stalled")
}
