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
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
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
func (o *recObserver) UpstreamDialed(r, _ string, _ time.Duration, err error) {
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

// testSlot is a startup slot for a session run without an accept loop.
func testSlot() *startupSlot {
	g := newStartupGate(1, slog.New(slog.DiscardHandler))
	g.slots <- struct{}{}
	return &startupSlot{g: g, n: func(int64) {}}
}

// lockedBuffer is a log sink for tests.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// scriptedDial dials the scripted server at addr as the chain dialer
// would: SSLRequest, 'S', then TLS verified against pki's root for the
// name localhost.
func scriptedDial(pki *testpki.PKI, addr string) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(sslRequest()); err != nil {
			c.Close()
			return nil, err
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
			c.Close()
			return nil, fmt.Errorf("no TLS: %q %v", b, err)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "localhost", RootCAs: testpki.Pool(pki.Root), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
}
