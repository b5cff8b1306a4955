package relay

// The relay's test rig: sessions over loopback TCP (or net.Pipe), with
// plaintext or TLS legs, relayed by a Pool of the engine under test.

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"reflect"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testEngines are the engines this system runs: on Linux all three.
func testEngines() []Engine {
	if runtime.GOOS != "linux" {
		return []Engine{Portable}
	}
	return []Engine{Loop, Goroutine, Portable}
}

// forEachEngine runs f as a subtest per engine, named after it.
func forEachEngine(t *testing.T, f func(t *testing.T, e Engine)) {
	for _, e := range testEngines() {
		t.Run(string(e), func(t *testing.T) { f(t, e) })
	}
}

// newTestPool returns a pool of engine e with o's other settings, stopped
// when the test ends.
func newTestPool(tb testing.TB, e Engine, o Options) *Pool {
	tb.Helper()
	o.Engine = e
	p, err := NewPool(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Stop)
	return p
}

var rigTLS struct {
	once sync.Once
	cfg  *tls.Config
	err  error
}

// rigServerTLS is the TLS server side of a leg: a leaf for localhost from
// a test root. Dynamic record sizing is off, as in OpenSSL (PostgreSQL's
// TLS library), so that the server's records are as large as its writes.
func rigServerTLS(tb testing.TB) *tls.Config {
	tb.Helper()
	rigTLS.once.Do(func() {
		root, err := testpki.NewRootCA("relay test root")
		if err != nil {
			rigTLS.err = err
			return
		}
		leaf, err := testpki.IssueLeaf(root, testpki.LeafOptions{CommonName: "localhost", DNSNames: []string{"localhost"}})
		if err != nil {
			rigTLS.err = err
			return
		}
		rigTLS.cfg = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}, DynamicRecordSizingDisabled: true}
	})
	if rigTLS.err != nil {
		tb.Fatal(rigTLS.err)
	}
	return rigTLS.cfg
}

// rigClientTLS is the TLS client side of a leg: like the proxy's upstream
// dial, Go's defaults (dynamic record sizing on).
var rigClientTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"} //nolint:gosec // test rig

func rigListener(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// tcpPair returns both ends of a loopback TCP connection accepted on ln.
func tcpPair(tb testing.TB, ln net.Listener) (dialed, accepted net.Conn) {
	tb.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		tb.Fatal(r.err)
	}
	return d, r.c
}

// legKind is how one leg of a test session is connected. The relay reads
// a plain socket through RawConn and anything else through its small idle
// buffer, so every kind is covered in both directions.
type legKind string

const (
	legTCP  legKind = "tcp"  // plaintext loopback TCP
	legTLS  legKind = "tls"  // TLS over loopback TCP
	legPipe legKind = "pipe" // net.Pipe: no socket, synchronous
)

// handshake completes a TLS handshake between a and b.
func handshake(tb testing.TB, a, b *tls.Conn) {
	tb.Helper()
	errc := make(chan error, 1)
	go func() { errc <- a.Handshake() }()
	if err := b.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
}

// connectLeg returns the outer end (the application's or the server's) and
// the relay's end of one leg.
func connectLeg(tb testing.TB, ln net.Listener, kind legKind, upstream bool) (outer, inner net.Conn) {
	tb.Helper()
	switch kind {
	case legPipe:
		outer, inner = net.Pipe()
	case legTCP:
		outer, inner = tcpPair(tb, ln)
	case legTLS:
		o, i := tcpPair(tb, ln)
		var to, ti *tls.Conn
		// The relay's end is on a rawsock.Conn, as in the proxy (chain's
		// dialer, the client TLS of admission), so that the loop can take
		// it over.
		if upstream { // the relay's side is the TLS client
			to, ti = tls.Server(o, rigServerTLS(tb)), tls.Client(rawsock.Wrap(i), rigClientTLS)
		} else {
			to, ti = tls.Client(o, rigClientTLS), tls.Server(rawsock.Wrap(i), rigServerTLS(tb))
		}
		handshake(tb, to, ti)
		outer, inner = to, ti
	}
	tb.Cleanup(func() {
		outer.Close()
		inner.Close()
	})
	return outer, inner
}

// stopHook is a Register for tests: it hands over at once and keeps the
// stop function, which closing the connections no longer reaches on the
// loop.
type stopHook struct {
	mu sync.Mutex
	f  func()
}

func (h *stopHook) register(handOver func() (stop func())) bool {
	f := handOver()
	h.mu.Lock()
	h.f = f
	h.mu.Unlock()
	return true
}

// stop ends a loop session as closing both connections would, and reports
// whether there was one to stop.
func (h *stopHook) stop() bool {
	h.mu.Lock()
	f := h.f
	h.mu.Unlock()
	if f != nil {
		f()
	}
	return f != nil
}

// handedOver reports whether the loop took the session.
func (h *stopHook) handedOver() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.f != nil
}

// session is one relayed test session: app ⇄ (pc | relay | pu) ⇄ server.
type session struct {
	app, server net.Conn // the outer ends
	pc, pu      net.Conn // the relay's ends
	counters    Counters
	done        chan Stats
	stop        stopHook
	finished    chan struct{}
}

// startSession connects both legs of the given kinds (on a listener of
// its own: parallel tests must not accept each other's connections) and
// relays them with p until the test ends; the cleanup stops it and waits
// for its end before the legs' own cleanups close them.
func startSession(tb testing.TB, p *Pool, client, upstream legKind) *session {
	tb.Helper()
	ln := rigListener(tb)
	s := &session{done: make(chan Stats, 1), finished: make(chan struct{})}
	s.app, s.pc = connectLeg(tb, ln, client, false)
	s.server, s.pu = connectLeg(tb, ln, upstream, true)
	s.start(p)
	tb.Cleanup(func() { s.close(tb) })
	return s
}

func (s *session) start(p *Pool) {
	go func() {
		defer close(s.finished)
		s.done <- p.Relay(s.pc, s.pu, &s.counters, s.stop.register)
	}()
}

// close ends the session (a loop session is stopped on its loop, and must
// be over before anyone closes its TLS connections: the loop owns them).
func (s *session) close(tb testing.TB) {
	if s.stop.stop() {
		<-s.finished
	}
	s.pc.Close()
	s.pu.Close()
	select {
	case <-s.finished:
	case <-time.After(10 * time.Second):
		tb.Error("Relay did not return after both legs were closed")
	}
}

func (s *session) wait(tb testing.TB) Stats {
	tb.Helper()
	select {
	case st := <-s.done:
		s.done <- st
		return st
	case <-time.After(10 * time.Second):
		tb.Fatal("Relay did not return")
		return Stats{}
	}
}

// echoThrough sends msg from the app to the server and back.
func echoThrough(tb testing.TB, s *session, msg []byte) {
	tb.Helper()
	got := make([]byte, len(msg))
	for _, pair := range [][2]net.Conn{{s.app, s.server}, {s.server, s.app}} {
		if _, err := pair[0].Write(msg); err != nil {
			tb.Fatal(err)
		}
		_ = pair[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(pair[1], got); err != nil || !bytes.Equal(got, msg) {
			tb.Fatalf("read %q, %v; want %q", got, err, msg)
		}
		_ = pair[1].SetReadDeadline(time.Time{})
	}
}

// eventually waits up to 10 s for cond.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// memInUse is heap and stack in use after a collection (heap: the spans in
// use, as the idle-memory figures have always been measured; live: the
// bytes of live objects, which spans fragmented by a burst of small
// allocations do not inflate).
type memInUse struct{ heap, stack, live int64 }

func readMemInUse() memInUse {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return memInUse{int64(ms.HeapInuse), int64(ms.StackInuse), int64(ms.HeapAlloc)}
}

// tlsBufCap is the capacity of a tls.Conn's internal buffers (raw input,
// handshake, send), read by reflection: crypto/tls grows its raw input
// buffer to the records it receives (and to how much arrives per read) and
// never shrinks it, whoever reads. It is measured apart so that the
// relay's own memory is what the tests report. It returns 0 if crypto/tls's
// fields are not found.
func tlsBufCap(c *tls.Conn) int64 {
	v := reflect.ValueOf(c).Elem()
	var n int64
	for _, f := range []string{"rawInput", "hand"} {
		if b := v.FieldByName(f); b.IsValid() {
			if buf := b.FieldByName("buf"); buf.IsValid() && buf.Kind() == reflect.Slice {
				n += int64(buf.Cap())
			}
		}
	}
	if b := v.FieldByName("sendBuf"); b.IsValid() && b.Kind() == reflect.Slice {
		n += int64(b.Cap())
	}
	return n
}
