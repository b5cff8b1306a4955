package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// The helpers that tests of several files share (a helper that one test
// file uses stays in it). First: clients, upstreams and servers of the
// session tests, and the messages they exchange.

// fakeUpstream is a scripted server reached through net.Pipe: Dial hands
// the proxy one end and runs script on the other.
type fakeUpstream struct {
	t      *testing.T
	script func(be *pgproto3.Backend, conn net.Conn)
	mu     sync.Mutex
	dials  int
	done   chan struct{}
}

func (f *fakeUpstream) dial(ctx context.Context) (net.Conn, error) {
	f.mu.Lock()
	f.dials++
	f.mu.Unlock()
	p, srv := net.Pipe()
	go func() {
		defer close(f.done)
		defer srv.Close()
		f.script(pgproto3.NewBackend(srv, srv), srv)
	}()
	return p, nil
}

func (f *fakeUpstream) dialCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dials
}

// startProxy runs a one-route proxy on 127.0.0.1:0 in front of up.
func startProxy(t *testing.T, mode ClientTLSMode, dial DialFunc) string {
	t.Helper()
	tcfg, err := SelfSignedTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{
		Routes: []Route{{
			Name: "test", Listen: []string{"127.0.0.1:0"}, UpstreamAddr: "upstream.test:5432",
			Dial: dial, ClientTLS: mode, TLSConfig: tcfg, StartupTimeout: 5 * time.Second,
		}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	t.Cleanup(func() { srv.Close() })
	return srv.Addrs()[0].String()
}

func dialProxy(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func startupBytes(t *testing.T, params map[string]string) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wireMessage is a pgproto3 message of either direction.
type wireMessage interface {
	Encode(dst []byte) ([]byte, error)
}

// encodeAll encodes msgs one after the other, as they go on the wire.
func encodeAll[M wireMessage](tb testing.TB, msgs ...M) []byte {
	tb.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			tb.Fatal(err)
		}
	}
	return b
}

func sslRequest() []byte {
	b, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	return b
}

// expectFatal reads messages until an ErrorResponse and checks it.
func expectFatal(t *testing.T, fe *pgproto3.Frontend, code, substr string) *pgproto3.ErrorResponse {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("want FATAL %s, got read error %v", code, err)
		}
		if er, ok := msg.(*pgproto3.ErrorResponse); ok {
			if er.Severity != "FATAL" || er.Code != code || !strings.Contains(er.Message, substr) {
				t.Fatalf("got %s %s %q, want FATAL %s containing %q", er.Severity, er.Code, er.Message, code, substr)
			}
			return er
		}
	}
}

func neverDial(t *testing.T) DialFunc {
	return func(context.Context) (net.Conn, error) {
		t.Error("upstream dialed, but the client should have been refused first")
		return nil, errors.New("no")
	}
}

// nextMessage splits the first complete typed message (type byte, length,
// body) off b; ok is false when b does not start with one.
func nextMessage(b []byte) (msg, rest []byte, ok bool) {
	if len(b) < 5 {
		return nil, b, false
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if n < 4 || len(b) < 1+n {
		return nil, b, false
	}
	return b[:1+n], b[1+n:], true
}

// recObserver records the Observer events.
type recObserver struct {
	mu      sync.Mutex
	routes  [][]string
	started map[string]int
	ended   map[string]int // route/result
	refused map[string]int // route/cause
	dials   map[string]int // route/ok|error
}

func newRecObserver() *recObserver {
	return &recObserver{started: map[string]int{}, ended: map[string]int{}, refused: map[string]int{}, dials: map[string]int{}}
}

func (o *recObserver) RoutesChanged(r []string) {
	o.mu.Lock()
	o.routes = append(o.routes, r)
	o.mu.Unlock()
}
func (o *recObserver) SessionStarted(r string) { o.mu.Lock(); o.started[r]++; o.mu.Unlock() }
func (o *recObserver) SessionEnded(r string, res SessionResult) {
	o.mu.Lock()
	o.ended[r+"/"+string(res)]++
	o.mu.Unlock()
}
func (o *recObserver) Refused(r string, cause chain.Reason) {
	o.mu.Lock()
	o.refused[r+"/"+cause.String()]++
	o.mu.Unlock()
}
func (o *recObserver) UpstreamDialed(r string, _ time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.dials[r+"/error"]++
		return
	}
	o.dials[r+"/ok"]++
}

func (o *recObserver) get(m map[string]int, k string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return m[k]
}

// echoUpstream accepts any login, then echoes bytes until the proxy
// half-closes; a CancelRequest is read and the connection closed. It runs
// over loopback TCP so that half-closes pass as they do in production.
func echoUpstream(t *testing.T) DialFunc {
	addr := testpki.Serve(t, func(srv net.Conn) {
		be := pgproto3.NewBackend(srv, srv)
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return
		}
		if _, ok := msg.(*pgproto3.StartupMessage); !ok {
			return
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if be.Flush() != nil {
			return
		}
		_, _ = io.Copy(srv, srv)
	})
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startServer(t *testing.T, obs Observer, routes ...Route) *Server {
	t.Helper()
	srv, err := New(Config{Routes: routes, Observer: obs, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	t.Cleanup(func() { srv.Close() })
	return srv
}

// login connects in plaintext and reads AuthenticationOk and ReadyForQuery.
func login(t *testing.T, addr string) net.Conn {
	t.Helper()
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	fe := pgproto3.NewFrontend(c, c)
	for _, want := range []string{"*pgproto3.AuthenticationOk", "*pgproto3.ReadyForQuery"} {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("login via %s: %v", addr, err)
		}
		if got := fmt.Sprintf("%T", msg); got != want {
			t.Fatalf("login via %s: got %s, want %s", addr, got, want)
		}
	}
	return c
}

// echo checks that the session still relays both ways.
func echo(t *testing.T, c net.Conn, payload string) {
	t.Helper()
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("session write: %v", err)
	}
	buf := make([]byte, len(payload))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != payload {
		t.Fatalf("session echo: %q %v", buf, err)
	}
}

// eventually polls cond (no timing asserted: only that it becomes true).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !poll(cond) {
		t.Fatalf("never happened: %s", what)
	}
}

// poll reports whether cond became true within 5 s.
func poll(cond func() bool) bool {
	for i := 0; i < 500; i++ {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	c, err := SelfSignedTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The fuzz targets' in-memory connections and checks
// (admission_fuzz_test.go, auth_fuzz_test.go).

// fzWatchdog bounds one fuzz execution. Every connection a fuzz target uses
// is in memory and ends in EOF, so an execution that runs this long is an
// endless loop in the code under test, never slowness.
const fzWatchdog = 10 * time.Second

// fzConn is an in-memory net.Conn: reads return the scripted input, then
// io.EOF; writes are recorded. It never blocks, so nothing can hang on it.
type fzConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func newFzConn(in []byte) *fzConn { return &fzConn{in: bytes.NewReader(in)} }

func (c *fzConn) Read(b []byte) (int, error) {
	if c.in.Len() == 0 {
		return 0, io.EOF
	}
	return c.in.Read(b)
}
func (c *fzConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *fzConn) Close() error                     { return nil }
func (c *fzConn) LocalAddr() net.Addr              { return fzAddr }
func (c *fzConn) RemoteAddr() net.Addr             { return fzAddr }
func (c *fzConn) SetDeadline(time.Time) error      { return nil }
func (c *fzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fzConn) SetWriteDeadline(time.Time) error { return nil }

// consumed is how many input bytes were read.
func (c *fzConn) consumed() int { return int(c.in.Size()) - c.in.Len() }

var fzAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432}

// fzRun runs fn with the watchdog.
func fzRun(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	timer := time.NewTimer(fzWatchdog)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Fatalf("%s did not return within %s on in-memory connections that end in EOF: endless loop", what, fzWatchdog)
	}
}

// checkClientError checks what the client is told: a SQLSTATE, a message
// that names the proxy, and a FATAL ErrorResponse that encodes and decodes.
func checkClientError(t *testing.T, ce *clientError) {
	t.Helper()
	if len(ce.Code()) != 5 {
		t.Fatalf("ClientError without a SQLSTATE: %q (%s)", ce.Code(), ce.Message)
	}
	if !strings.HasPrefix(ce.Message, "pgverifyproxy: ") {
		t.Fatalf("ClientError message does not name the proxy: %q", ce.Message)
	}
	if ce.Reason == chain.ReasonNone {
		t.Fatalf("ClientError without a Reason: %q", ce.Message)
	}
	b, err := ce.response()
	if err != nil {
		t.Fatalf("ClientError does not encode: %v (%q)", err, ce.Message)
	}
	er := decodeFatal(t, b)
	if strings.IndexByte(er.Message+er.Detail+er.Hint, 0) >= 0 || !utf8.ValidString(er.Message+er.Detail+er.Hint) {
		t.Fatalf("ErrorResponse text holds a NUL or invalid UTF-8: %q", b)
	}
	if er.Code != ce.Code() || er.Message != clientText(ce.Message) || er.Detail != clientText(ce.Detail) || er.Hint != clientText(ce.Hint) {
		t.Fatalf("ErrorResponse %q %q does not round-trip %q %q", er.Code, er.Message, ce.Code(), ce.Message)
	}
}

// writeSeeds writes seeds as corpus files of a fuzz target when
// PGVP_FUZZ_WRITE_SEEDS is set; each seed is the list of its arguments.
func writeSeeds(f *testing.F, seeds map[string][]any) {
	if os.Getenv("PGVP_FUZZ_WRITE_SEEDS") == "" {
		return
	}
	dir := filepath.Join("testdata", "fuzz", f.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.Fatal(err)
	}
	for name, args := range seeds {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch v := a.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", v)
			case byte:
				fmt.Fprintf(&b, "byte(%q)\n", v)
			case bool:
				fmt.Fprintf(&b, "bool(%v)\n", v)
			case string:
				fmt.Fprintf(&b, "string(%q)\n", v)
			default:
				f.Fatalf("seed %s: no corpus encoding for %T", name, a)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "seed_"+name), []byte(b.String()), 0o644); err != nil {
			f.Fatal(err)
		}
	}
}

// decodeFatal decodes b, which must be exactly one FATAL ErrorResponse
// with a SQLSTATE.
func decodeFatal(t *testing.T, b []byte) *pgproto3.ErrorResponse {
	t.Helper()
	m, rest, ok := nextMessage(b)
	if !ok || len(rest) != 0 || m[0] != 'E' {
		t.Fatalf("not one ErrorResponse: %q", b)
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(m[5:]); err != nil {
		t.Fatalf("ErrorResponse does not decode: %v (%q)", err, b)
	}
	if er.Severity != "FATAL" || er.SeverityUnlocalized != "FATAL" || len(er.Code) != 5 {
		t.Fatalf("ErrorResponse is not FATAL with a SQLSTATE: severity %q, code %q", er.Severity, er.Code)
	}
	return &er
}

// The relay rig: relayed sessions over loopback TCP, with a TLS upstream
// leg (bench_test.go, relay_test.go, relay_linux_test.go).

var benchTLS struct {
	once sync.Once
	cfg  *tls.Config
	err  error
}

// rigServerTLS is the upstream server's TLS configuration. Dynamic record
// sizing is off, as in OpenSSL (PostgreSQL's TLS library), so that the
// server's records are as large as its writes.
func rigServerTLS(tb testing.TB) *tls.Config {
	tb.Helper()
	benchTLS.once.Do(func() {
		benchTLS.cfg, benchTLS.err = SelfSignedTLSConfig()
		if benchTLS.err == nil {
			benchTLS.cfg.DynamicRecordSizingDisabled = true
		}
	})
	if benchTLS.err != nil {
		tb.Fatal(benchTLS.err)
	}
	return benchTLS.cfg
}

// rigClientTLS is the proxy's upstream TLS configuration: like
// chain.Dialer.TLSConfig, Go's defaults (dynamic record sizing on).
var rigClientTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"} //nolint:gosec // test rig

// rigTCPPair returns both ends of a loopback TCP connection accepted on ln.
func rigTCPPair(tb testing.TB, ln net.Listener) (dialed, accepted net.Conn) {
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

// relayRig is one relayed session: app ⇄ (pc | relay | pu) ⇄ server.
type relayRig struct {
	app      net.Conn  // the application's end of the client leg (plaintext)
	server   *tls.Conn // the upstream server's end of the upstream leg
	pc       net.Conn  // the proxy's client leg
	pu       net.Conn  // the proxy's upstream leg (*tls.Conn)
	counters byteCounters
	done     chan relayStats
	mode     relayMode // the relay's implementation: defaultRelayMode unless a test sets it
	stop     stopHook  // ends an event-loop relay
	finished chan struct{}
}

func rigListener(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// newRig connects both legs (the upstream leg with a TLS handshake) on ln,
// without starting the relay.
func newRig(tb testing.TB, ln net.Listener) *relayRig {
	tb.Helper()
	r := &relayRig{done: make(chan relayStats, 1), mode: defaultRelayMode}
	r.app, r.pc = rigTCPPair(tb, ln)
	ut, st := rigTCPPair(tb, ln)
	r.server = tls.Server(st, rigServerTLS(tb))
	cli := tls.Client(rawsock.Wrap(ut), rigClientTLS)
	errc := make(chan error, 1)
	go func() { errc <- r.server.Handshake() }()
	if err := cli.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	r.pu = cli
	tb.Cleanup(r.close)
	return r
}

func (r *relayRig) start() {
	r.finished = make(chan struct{})
	go func() {
		defer close(r.finished)
		r.done <- relay(r.pc, r.pu, &r.counters, r.mode, relayEnv{register: r.stop.register})
	}()
}

func (r *relayRig) close() {
	r.app.Close()
	r.server.Close()
	if r.stop.stop() {
		<-r.finished
	}
	r.pc.Close()
	r.pu.Close()
}

// stopHook is a relay's register hook for tests: it hands over at once and
// keeps the stop function, which closing the connections no longer
// reaches on the event loop.
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

// stop ends an event-loop relay as closing both connections would, and
// reports whether there was one to stop.
func (h *stopHook) stop() bool {
	h.mu.Lock()
	f := h.f
	h.mu.Unlock()
	if f != nil {
		f()
	}
	return f != nil
}

// loopRelay runs relay on the event loop of pool (nil: the shared one)
// until the test ends; the cleanup stops it and waits for its end before
// the legs' own cleanups close them.
func loopRelay(t *testing.T, pc, pu net.Conn, pool *loopPool) <-chan relayStats {
	var stop stopHook
	done := make(chan relayStats, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- relay(pc, pu, nil, relayLoop, relayEnv{loops: pool, register: stop.register})
	}()
	t.Cleanup(func() {
		stop.stop()
		<-finished
	})
	return done
}

// idleSessionMemory opens n relayed sessions, passes traffic through each
// (a small query and answer; with bulk, then a 64 KiB burst each way and
// another small exchange), lets them go idle and returns the heap+stack
// bytes per session that the relays hold (the connections and their TLS
// state are measured before the relays start and excluded, and so is what
// the relayed traffic added to crypto/tls's own buffers), the capacity of
// crypto/tls's buffers of the proxy's upstream leg, and the heap+stack bytes
// per session of everything (both ends of both legs included: an upper
// bound of a session's cost). The relays use mode.
func idleSessionMemory(tb testing.TB, n int, bulk bool, mode relayMode) idleMem {
	tb.Helper()
	ln := rigListener(tb)
	base := relayMemInUse()
	rigs := make([]*relayRig, n)
	small := bytes.Repeat([]byte{'s'}, 100)
	burst := bytes.Repeat([]byte{'b'}, 64<<10)
	// Grow both TLS ends' buffers as the relayed traffic will, so that the
	// relay's own cost is what remains.
	exchange := func(a, b net.Conn) {
		buf := make([]byte, len(burst))
		msgs := [][]byte{small}
		if bulk {
			msgs = append(msgs, burst, small)
		}
		for _, msg := range msgs {
			for _, pair := range [][2]net.Conn{{a, b}, {b, a}} {
				errc := make(chan error, 1)
				go func() { _, err := pair[0].Write(msg); errc <- err }()
				if _, err := io.ReadFull(pair[1], buf[:len(msg)]); err != nil {
					tb.Fatal(err)
				}
				if err := <-errc; err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
	for i := range rigs {
		rigs[i] = newRig(tb, ln)
		rigs[i].mode = mode
		exchange(rigs[i].pu, rigs[i].server)
	}
	tlsP0, tlsS0 := tlsBufs(rigs)
	before := relayMemInUse()
	for _, r := range rigs {
		r.start()
		exchange(r.app, r.server)
	}
	time.Sleep(100 * time.Millisecond) // let every relay block in Read
	after := relayMemInUse()
	tlsP1, tlsS1 := tlsBufs(rigs)
	for _, r := range rigs {
		r.app.Close()
		r.server.Close()
	}
	for _, r := range rigs {
		<-r.done
	}
	per := func(d int64) float64 { return float64(d) / float64(n) }
	return idleMem{
		// The relayed traffic may have grown crypto/tls's buffers (of
		// both ends) past what the direct exchange did: not the relay's.
		relayHeap:  per(after.heap - before.heap - (tlsP1 - tlsP0) - (tlsS1 - tlsS0)),
		tlsIn:      per(tlsP1),
		relayStack: per(after.stack - before.stack),
		all:        per(after.heap + after.stack - base.heap - base.stack),
	}
}

// relayMemUse is heap and stack in use after a collection.
type relayMemUse struct{ heap, stack int64 }

func relayMemInUse() relayMemUse {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return relayMemUse{int64(ms.HeapInuse), int64(ms.StackInuse)}
}

// idleMem is the result of idleSessionMemory, in bytes per session.
type idleMem struct {
	relayHeap, relayStack float64 // held by the relays
	tlsIn                 float64 // crypto/tls's buffers of the proxy's upstream leg
	all                   float64 // everything, both ends of both legs included
}

func (m idleMem) relay() float64 { return m.relayHeap + m.relayStack }

// tlsBufCap is the capacity of a tls.Conn's internal buffers (raw input,
// handshake, send), read by reflection: crypto/tls grows its raw input
// buffer to the records it receives (and to how much arrives per read) and
// never shrinks it, whoever reads. It is measured apart so that the relay's
// own memory is what the benchmark reports. It returns 0 if crypto/tls's
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

// tlsBufs sums tlsBufCap over the rigs' TLS conns: the proxy's upstream leg
// and the server's end.
func tlsBufs(rigs []*relayRig) (proxy, server int64) {
	for _, r := range rigs {
		proxy += tlsBufCap(r.pu.(*tls.Conn))
		server += tlsBufCap(r.server)
	}
	return proxy, server
}

// legKind is how one leg of a test relay is connected. The relay reads a
// plain socket through RawConn and anything else through its small idle
// buffer, so every kind is covered in both directions.
type legKind string

const (
	legTCP  legKind = "tcp"  // plaintext loopback TCP
	legTLS  legKind = "tls"  // TLS over loopback TCP
	legPipe legKind = "pipe" // net.Pipe: no socket, synchronous
)

// connectLeg returns the outer end (the application's or the server's) and
// the proxy's end of one leg.
func connectLeg(t *testing.T, ln net.Listener, kind legKind, upstream bool) (outer, inner net.Conn) {
	t.Helper()
	switch kind {
	case legPipe:
		outer, inner = net.Pipe()
	case legTCP:
		outer, inner = rigTCPPair(t, ln)
	case legTLS:
		o, i := rigTCPPair(t, ln)
		var to, ti *tls.Conn
		// The proxy's end is on a rawsock.Conn, as in production (chain's
		// dialer, the client TLS of admission.go), so that the event loop
		// can take it over.
		if upstream { // the proxy is the TLS client
			to, ti = tls.Server(o, rigServerTLS(t)), tls.Client(rawsock.Wrap(i), rigClientTLS)
		} else {
			to, ti = tls.Client(o, rigClientTLS), tls.Server(rawsock.Wrap(i), rigServerTLS(t))
		}
		errc := make(chan error, 1)
		go func() { errc <- to.Handshake() }()
		if err := ti.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		outer, inner = to, ti
	}
	t.Cleanup(func() {
		outer.Close()
		inner.Close()
	})
	return outer, inner
}
