package delayproxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// startEcho runs a TCP echo server on loopback until the test ends.
func startEcho(t *testing.T) string {
	t.Helper()
	return testpki.Serve(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// startProxy starts a delay proxy in front of target until the test ends.
func startProxy(t *testing.T, target string, oneWay time.Duration, handshake bool) *Proxy {
	t.Helper()
	p, err := Start("127.0.0.1:0", target, oneWay, handshake)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestRoundTripIsDelayed checks that a round trip takes about twice the one-way delay.
func TestRoundTripIsDelayed(t *testing.T) {
	const oneWay = 10 * time.Millisecond
	p := startProxy(t, startEcho(t), oneWay, false)
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	var fastest time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		rtt := time.Since(start)
		if rtt < 2*oneWay {
			t.Fatalf("round trip %v, want at least %v", rtt, 2*oneWay)
		}
		if fastest == 0 || rtt < fastest {
			fastest = rtt
		}
	}
	// A loaded machine can stretch any one round trip; the fastest of five
	// must still be far from a doubled delay.
	if fastest >= 4*oneWay {
		t.Fatalf("fastest round trip %v, want about %v", fastest, 2*oneWay)
	}
}

// TestHandshakeCostsOneRoundTrip checks the simulated TCP handshake adds a round trip.
func TestHandshakeCostsOneRoundTrip(t *testing.T) {
	const oneWay = 10 * time.Millisecond
	p := startProxy(t, startEcho(t), oneWay, true)
	start := time.Now()
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if got := time.Since(start); got < 4*oneWay {
		t.Fatalf("first byte back after %v, want at least two round trips (%v)", got, 4*oneWay)
	}
}

// TestOrderAndBandwidth checks that many chunks arrive in order and are not delayed one after the other.
func TestOrderAndBandwidth(t *testing.T) {
	p := startProxy(t, startEcho(t), 50*time.Millisecond, false)
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 16<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	go func() {
		// Small writes: hundreds of chunks, each delayed on its own.
		for off := 0; off < len(data); off += 32 << 10 {
			if _, err := c.Write(data[off : off+32<<10]); err != nil {
				return
			}
		}
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echoed %d bytes, not the %d sent in order", len(got), len(data))
	}
	// 512 chunks at 100ms each would take over 51s if delays serialized.
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("16 MiB took %v through a 100ms-RTT proxy: delays serialize bandwidth", el)
	}
}

// TestCloseEndsConnections checks that Close returns and closes forwarded connections.
func TestCloseEndsConnections(t *testing.T) {
	p, err := Start("127.0.0.1:0", startEcho(t), time.Millisecond, false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after Close")
	}
}
