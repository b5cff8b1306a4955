package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// The relay has two implementations of its copy loops, with the same
// semantics (half-close, linger, reset, byte counters, first error wins,
// idempotent close; relay_test.go runs every test on each): the Linux fast
// path (relay_linux.go: plaintext sockets read inside RawConn.Read with
// TCP_INQ, written with rawsock) and the portable relay (relayPortable:
// nothing but net.Conn), every other system's. How each copies, the
// measurements behind each choice and what was tried and dropped:
// docs/design/relay.md.

// relayLinger is how long the second direction may go on after the first has
// ended cleanly (EOF), so that a final message in flight is not cut off. It
// is a variable for tests.
var relayLinger = 2 * time.Second

// relayBufferSize is the size of the pooled buffers, used only while data is
// flowing: four full TLS records.
const relayBufferSize = 64 << 10

// relayIdleBufferSize is the per-direction buffer a waiting Read holds on a
// source that is not a plain socket (TLS). Typical query answers fit.
const relayIdleBufferSize = 2 << 10

var relayBufPool = sync.Pool{New: func() any { b := make([]byte, relayBufferSize); return &b }}

// aLongTimeAgo is a read deadline that makes Read return what the source
// has already buffered without waiting.
var aLongTimeAgo = time.Unix(1, 0)

// side names a relay endpoint.
type side string

const (
	// sideClient is the application's side.
	sideClient side = "client"
	// sideUpstream is the server's side.
	sideUpstream side = "upstream"
)

// relayStats are the byte counters of one session's relay.
type relayStats struct {
	// ClientToUpstream counts bytes copied from the client to the server.
	ClientToUpstream int64
	// UpstreamToClient counts bytes copied from the server to the client.
	UpstreamToClient int64
	// ClosedBy is the side whose end (EOF or error) stopped the relay.
	ClosedBy side
	// Err is the first error other than a clean EOF, if any.
	Err error
	// Relay names the relay that carried the session, for the log:
	// "loop", "goroutine" (the fast path) or "portable".
	Relay string
}

// closeOnce closes a connection exactly once.
type closeOnce struct {
	net.Conn
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Conn.Close() })
	return c.err
}

// closeWriter is implemented by *net.TCPConn, *net.UnixConn and *tls.Conn.
type closeWriter interface{ CloseWrite() error }

// relayMode selects the copy loops of a relay.
type relayMode uint8

const (
	// relayFast is the Linux goroutine relay's fast path (relay_linux.go).
	// Elsewhere there is none: it copies every source with copyBuffered,
	// and no relay uses it (defaultRelayMode is relayPortable there).
	relayFast relayMode = iota
	// relayPortable uses nothing but net.Conn: the relay of every system
	// but Linux, and Linux's under the test switch.
	relayPortable
	// relayLoop hands both sockets to an event loop (relay_loop_linux.go),
	// Linux's default; a session whose connections cannot be handed over
	// gets relayFast.
	relayLoop
)

// String names the mode in test names and logs: "loop", "fast" or
// "portable".
func (m relayMode) String() string {
	switch m {
	case relayPortable:
		return "portable"
	case relayLoop:
		return "loop"
	}
	return "fast"
}

// RelayEngine is the relay setting: how sessions are relayed once
// authenticated.
type RelayEngine string

const (
	// RelayEventLoop (the default) hands each authenticated session's two
	// sockets to an event loop on Linux; elsewhere it is RelayGoroutines.
	RelayEventLoop RelayEngine = "loop"
	// RelayGoroutines relays each session with two goroutines, one per
	// direction: the fallback, and every other system's relay.
	RelayGoroutines RelayEngine = "goroutine"
)

// ParseRelayEngine checks a relay setting; empty means RelayEventLoop.
func ParseRelayEngine(s string) (RelayEngine, error) {
	switch RelayEngine(s) {
	case "", RelayEventLoop:
		return RelayEventLoop, nil
	case RelayGoroutines:
		return RelayGoroutines, nil
	}
	return "", fmt.Errorf("relay %q: want loop or goroutine", s)
}

// mode is the relay mode the engine selects on this system.
func (e RelayEngine) mode() relayMode {
	if e == RelayGoroutines && defaultRelayMode == relayLoop {
		return relayFast
	}
	return defaultRelayMode
}

// portableNoted logs, once, that the test switch is in effect.
var portableNoted sync.Once

// relayEnv is what a relay takes from its Server.
type relayEnv struct {
	// loops are the event loops (nil: a pool shared by relays without a
	// Server).
	loops *loopPool
	// register, when set, runs the event loop's hand-over under the
	// Server's lock and keeps the stop function it returns (see
	// relayOnLoop).
	register func(handOver func() (stop func())) bool
}

// relay copies bytes both ways between client and upstream until one side
// ends, then closes both (each exactly once). The first end wins: an error
// closes everything at once; a clean EOF half-closes the other side's write
// direction and lets the other copy finish for up to relayLinger. No message
// is parsed. counters, when non-nil, are updated while bytes flow. relay
// owns the read deadlines of both connections while it runs.
func relay(client, upstream net.Conn, counters *byteCounters, mode relayMode, env relayEnv) relayStats {
	if mode == relayLoop {
		if st, ok := relayOnLoop(client, upstream, counters, env.loops, env.register); ok {
			return st
		}
		mode = relayFast
	}
	return relayWith(client, upstream, counters, mode)
}

// relayWith is the goroutine relay with the copy loops of mode (relayFast
// or relayPortable).
func relayWith(client, upstream net.Conn, counters *byteCounters, mode relayMode) relayStats {
	if mode == relayPortable && portableRelaySwitch {
		portableNoted.Do(func() {
			slog.Warn("relay: portable (test switch)", "env", portableRelayEnv+"=1")
		})
	}
	r := &relayState{c: &closeOnce{Conn: client}, u: &closeOnce{Conn: upstream}}
	defer r.c.Close()
	defer r.u.Close()
	up := newCopier(r.u, client, counters.clientToUpstream(), mode)
	down := newCopier(r.c, upstream, counters.upstreamToClient(), mode)
	done := make(chan struct{})
	go func() {
		r.end(sideUpstream, down.run())
		close(done)
	}()
	r.end(sideClient, up.run())
	<-done
	name := "goroutine"
	if mode == relayPortable {
		name = "portable"
	}
	return relayStats{
		ClientToUpstream: up.n.Load(),
		UpstreamToClient: down.n.Load(),
		ClosedBy:         r.first,
		Err:              r.err,
		Relay:            name,
	}
}

// relayState is the state one relay call shares between its two directions.
type relayState struct {
	c, u *closeOnce

	mu      sync.Mutex
	ended   int  // directions that have ended
	first   side // the side whose end came first
	err     error
	linger  *time.Timer
	expired bool // the linger ran out before the second end
}

// closeBoth closes the upstream side first: on the fast path a client
// source's copy may be inside its read callback writing to the upstream,
// and closing the client waits for that write to end (see copySocket).
func (r *relayState) closeBoth() {
	r.u.Close()
	r.c.Close()
}

// end records that the copy from side from ended with err (nil: clean EOF).
// The first end decides: an error closes both connections; a clean EOF
// passes the half-close on and gives the other direction relayLinger to
// finish. The second end's error is kept if the first was clean, it came in
// time and it is not caused by our own Close.
func (r *relayState) end(from side, err error) {
	r.mu.Lock()
	r.ended++
	if r.ended == 2 {
		if r.linger != nil {
			r.linger.Stop()
		}
		if r.err == nil && err != nil && !r.expired && !isClosedErr(err) {
			r.err = err
		}
		r.mu.Unlock()
		return
	}
	r.first, r.err = from, err
	if err != nil {
		r.mu.Unlock()
		r.closeBoth()
		return
	}
	r.linger = time.AfterFunc(relayLinger, func() {
		r.mu.Lock()
		r.expired = r.ended < 2
		r.mu.Unlock()
		r.closeBoth()
	})
	r.mu.Unlock()
	dst := r.u
	if from == sideUpstream {
		dst = r.c
	}
	if cw, ok := dst.Conn.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
}

// copier copies one direction, src to dst.
type copier struct {
	dst   net.Conn        // the closeOnce of the other side
	rw    *rawsock.Writer // writes to dst when it is a plaintext socket (fast path)
	src   net.Conn
	n     atomic.Int64  // bytes written to dst
	total *atomic.Int64 // process-wide counter, or nil

	// The fast path's state for a plaintext socket source (relay_linux.go;
	// empty elsewhere).
	socketCopy

	// Any other source is read into idle while waiting.
	idle []byte
	// stream: the portable relay reads src, a plaintext socket, with
	// copyStream.
	stream bool
}

func newCopier(dst *closeOnce, src net.Conn, total *atomic.Int64, mode relayMode) *copier {
	cp := &copier{dst: dst, src: src, total: total}
	switch mode {
	case relayFast:
		if cp.initFast(dst) {
			return cp
		}
	case relayPortable:
		// No buffer in user space: copyBuffered's look at what src has
		// already received would never find anything.
		_, cp.stream = src.(syscall.Conn)
	}
	cp.idle = make([]byte, relayIdleBufferSize)
	return cp
}

// write writes b to dst and counts what was written.
func (cp *copier) write(b []byte) error {
	var nw int
	var err error
	if cp.rw != nil {
		nw, err = cp.rw.Write(b)
	} else {
		nw, err = cp.dst.Write(b)
	}
	cp.n.Add(int64(nw))
	if cp.total != nil {
		cp.total.Add(int64(nw))
	}
	return err
}

// copyStream copies from a plaintext socket on the portable relay: a
// blocking Read into the idle buffer, or into a pooled buffer after a Read
// that filled its buffer (see docs/design/relay.md).
func (cp *copier) copyStream() error {
	var bp *[]byte
	buf := cp.idle
	defer func() {
		if bp != nil {
			relayBufPool.Put(bp)
		}
	}()
	for {
		nr, rerr := cp.src.Read(buf)
		if nr > 0 {
			if werr := cp.write(buf[:nr]); werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
		switch full := nr == len(buf); {
		case full && bp == nil:
			bp = relayBufPool.Get().(*[]byte)
			buf = *bp
		case !full && bp != nil:
			relayBufPool.Put(bp)
			bp, buf = nil, cp.idle
		}
	}
}

// copyBuffered copies from any other source (TLS).
func (cp *copier) copyBuffered() error {
	for {
		nr, rerr := cp.src.Read(cp.idle)
		buf := cp.idle[:nr]
		var bp *[]byte
		if nr == len(cp.idle) && rerr == nil {
			// More may be buffered: take it too, and write it at once.
			bp = relayBufPool.Get().(*[]byte)
			big := *bp
			copy(big, buf)
			nr, rerr = cp.takeBuffered(big, nr)
			buf = big[:nr]
		}
		var werr error
		if len(buf) > 0 {
			werr = cp.write(buf)
		}
		if bp != nil {
			relayBufPool.Put(bp)
		}
		if werr != nil {
			return werr
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}

// takeBuffered reads into buf[n:] what src has already received, without
// waiting, and returns the new length and the error that ended the source,
// if any. A source whose SetReadDeadline fails gives nothing more (net.Conn
// requires deadlines; every connection the proxy relays has them).
func (cp *copier) takeBuffered(buf []byte, n int) (int, error) {
	if cp.src.SetReadDeadline(aLongTimeAgo) != nil {
		return n, nil
	}
	var rerr error
	for n < len(buf) {
		m, err := cp.src.Read(buf[n:])
		n += m
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				rerr = err
			}
			break
		}
		if m == 0 {
			break
		}
	}
	// Failing to clear the deadline must end the copy: every Read would
	// time out at once.
	if err := cp.src.SetReadDeadline(time.Time{}); err != nil && rerr == nil {
		rerr = err
	}
	return n, rerr
}

// isClosedErr reports errors caused by our own Close.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed)
}

// byteCounters are process-wide byte totals, kept for metrics.
type byteCounters struct {
	// ClientToUpstream counts bytes sent to servers.
	ClientToUpstream atomic.Int64
	// UpstreamToClient counts bytes sent to clients.
	UpstreamToClient atomic.Int64
}

func (c *byteCounters) clientToUpstream() *atomic.Int64 {
	if c == nil {
		return nil
	}
	return &c.ClientToUpstream
}

func (c *byteCounters) upstreamToClient() *atomic.Int64 {
	if c == nil {
		return nil
	}
	return &c.UpstreamToClient
}
