package proxy

import (
	"errors"
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
// idempotent close; relay_test.go runs every test on each):
//
//   - the fast path, Linux only (relay_linux.go): plaintext sockets are
//     read inside RawConn.Read with TCP_INQ and written with rawsock, as
//     described below;
//   - the portable relay (relayPortable), every other system's: nothing but
//     net.Conn (copyStream for a plaintext socket source, copyBuffered for
//     TLS). On Linux the test switch PGVERIFYPROXY_TEST_PORTABLE_RELAY=1
//     makes the binary use it too (see relay_linux.go), so that the path
//     Windows and macOS use runs in the integration tests on every CI run.
//
// The portable relay reads a plaintext socket source with a blocking Read
// into the small idle buffer; a Read that fills it means more is probably
// waiting, so the next Read goes into a pooled buffer, and the first one
// that does not fill its buffer gives it back. Bulk data is then read 64
// KiB at a time (the TLS upstream leg gets full records), and a waiting
// direction holds the idle buffer only, except after a read that exactly
// filled the pooled buffer: that buffer is then held until the next data
// or the end. It cannot skip the read(2) that returns EAGAIN and it writes
// through net.Conn (an announced system call): more system calls and CPU
// per message than the fast path, same bytes.
//
// How the Linux fast path copies, and why (the TLS source's part, and
// sizes, hold for the portable relay too). Numbers are from bench_test.go
// (before → after this design, loopback, plaintext client leg, TLS upstream
// leg, a 2-core VM; syscalls/op count the whole process, harness included):
//
//   - An idle session must be cheap: a proxy holds thousands. The first
//     version held a 32 KiB pooled buffer per direction for the whole
//     session, since a blocked Read holds its buffer: 74 KiB of relay memory
//     per idle session (2×32 KiB, three goroutine stacks). Now no direction
//     holds a large buffer while it waits: 8-11 KiB (two goroutine stacks,
//     the 2 KiB idle buffer). crypto/tls's own input buffer is not the
//     relay's to shrink: about 3 KiB after small messages, 41 KiB once 16 KiB
//     records have come in (it never shrinks).
//
//   - A plaintext socket source (the client leg: *net.TCPConn or
//     *net.UnixConn) is copied inside one syscall.RawConn.Read call (see
//     rawPump): the callback takes a pooled buffer, reads, writes, and puts
//     the buffer back before the goroutine parks, so a waiting direction
//     holds no buffer at all, and data is read with one system call into a
//     large buffer. (Reading it with the small buffer instead splits bulk
//     data into small TLS records, one write each: 9.5x the system calls
//     per 64 KiB the client writes.) With TCP_INQ the kernel says when the
//     socket is empty, so the read(2) that would only return EAGAIN is
//     skipped: 7.4 -> 6.0 system calls per pgbench -S transaction.
//
//   - Writes to a plaintext socket (the client leg, and through
//     rawsock.Wrap in chain.Dialer, the socket under the upstream TLS) use
//     rawsock: a loopback write wakes the reader, the kernel often runs it
//     at once, the write returns late, and the Go runtime's monitor then
//     hands the processor to another thread and keeps polling every 20 µs.
//     perf (cpu-clock) on pgbench -S through the proxy: runtime.sysmon fell
//     from 15% to 7% of the proxy's CPU, and the proxy's CPU per
//     transaction by about 15%.
//
//   - Any other source (the TLS upstream leg, or a TLS client leg) is read
//     with a blocking Read into a small per-direction buffer
//     (relayIdleBufferSize), the only buffer a waiting direction holds. A
//     Read that fills it takes a pooled buffer and then also takes, without
//     waiting, what the source has already received: the rest of the
//     current TLS record (crypto/tls returns at most one record per Read)
//     and further complete records crypto/tls has already read from the
//     socket. A read deadline in the past makes Read return what is
//     buffered without a system call (crypto/tls treats the timeout as
//     temporary: the connection goes on), and the data goes out in one
//     Write. This coalesces about two records per write to the client:
//     -19..20% system calls for bulk data from the server, and -11% system
//     calls, -12% CPU for a 64 KiB answer, compared with the first version
//     (the system call savings hold against a record-sized idle buffer read
//     one record at a time too; CPU differences there are within noise).
//     The probe that finds nothing more costs under 1% CPU (profile) and
//     two small allocations inside net and crypto/tls (the timeout error),
//     once per coalesced write, never for a message that fits the idle
//     buffer.
//
//   - Sizes: small messages (queries, typical answers) fit the 2 KiB idle
//     buffer and cost what they did before: one read and one write per
//     message and direction, and no allocation by the relay (crypto/tls
//     allocates 24 bytes per socket read itself). The 64 KiB pooled
//     buffers, used only while data flows, read a client's bulk writes in
//     one system call and hold four full TLS records: -30% system calls for
//     bulk data from the client compared with 16 KiB; 128 KiB saved 6% more,
//     not worth the memory.
//
//   - One direction runs on the caller's goroutine (the session's, which
//     waits anyway): one goroutine stack less per session.
//
// Tried and dropped:
//
//   - Skipping the EAGAIN read after any short read: a FIN or a reset that
//     came with the data is then never signalled again, and the session
//     stalls (TestRelayHalfClose hung). TCP_INQ counts a FIN; a reset is
//     caught by relayRecheck.
//   - The same for the TLS leg (feeding crypto/tls from our own reads):
//     its reads are 5% of the proxy's CPU in the profile, the EAGAIN half
//     of that not worth a second TLS input path.
//   - GOMAXPROCS=1: with the changes above, no difference in CPU per
//     transaction beyond the noise of the machine.
//   - A record-sized idle buffer (16 KiB) with no coalescing: fewer
//     allocations, no measurable CPU difference, +11..24% system calls, and
//     14 KiB more per idle session.

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

// Side names a relay endpoint.
type Side string

const (
	// SideClient is the application's side.
	SideClient Side = "client"
	// SideUpstream is the server's side.
	SideUpstream Side = "upstream"
)

// RelayStats are the byte counters of one session's relay.
type RelayStats struct {
	// ClientToUpstream counts bytes copied from the client to the server.
	ClientToUpstream int64
	// UpstreamToClient counts bytes copied from the server to the client.
	UpstreamToClient int64
	// ClosedBy is the side whose end (EOF or error) stopped the relay.
	ClosedBy Side
	// Err is the first error other than a clean EOF, if any.
	Err error
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
	// relayFast is the Linux fast path (relay_linux.go). Elsewhere there
	// is none: it copies every source with copyBuffered, and no relay uses
	// it (defaultRelayMode is relayPortable there).
	relayFast relayMode = iota
	// relayPortable uses nothing but net.Conn: the relay of every system
	// but Linux, and Linux's under the test switch.
	relayPortable
)

// String names the mode in test names and logs: "fast" or "portable".
func (m relayMode) String() string {
	if m == relayPortable {
		return "portable"
	}
	return "fast"
}

// portableNoted logs, once, that the test switch is in effect.
var portableNoted sync.Once

// Relay copies bytes both ways between client and upstream until one side
// ends, then closes both (each exactly once). The first end wins: an error
// closes everything at once; a clean EOF half-closes the other side's write
// direction and lets the other copy finish for up to relayLinger. No message
// is parsed. counters, when non-nil, are updated while bytes flow. Relay
// owns the read deadlines of both connections while it runs.
func Relay(client, upstream net.Conn, counters *Counters) RelayStats {
	return relayWith(client, upstream, counters, defaultRelayMode)
}

// relayWith is Relay with the copy loops of mode.
func relayWith(client, upstream net.Conn, counters *Counters, mode relayMode) RelayStats {
	if mode == relayPortable && portableRelaySwitch {
		portableNoted.Do(func() {
			slog.Warn("relay: portable (test switch)", "env", portableRelayEnv+"=1")
		})
	}
	r := &relay{c: &closeOnce{Conn: client}, u: &closeOnce{Conn: upstream}}
	defer r.c.Close()
	defer r.u.Close()
	up := newCopier(r.u, client, counters.clientToUpstream(), mode)
	down := newCopier(r.c, upstream, counters.upstreamToClient(), mode)
	done := make(chan struct{})
	go func() {
		r.end(SideUpstream, down.run())
		close(done)
	}()
	r.end(SideClient, up.run())
	<-done
	return RelayStats{
		ClientToUpstream: up.n.Load(),
		UpstreamToClient: down.n.Load(),
		ClosedBy:         r.first,
		Err:              r.err,
	}
}

// relay is the state one Relay shares between its two directions.
type relay struct {
	c, u *closeOnce

	mu      sync.Mutex
	ended   int  // directions that have ended
	first   Side // the side whose end came first
	err     error
	linger  *time.Timer
	expired bool // the linger ran out before the second end
}

// closeBoth closes the upstream side first: on the fast path a client
// source's copy may be inside its read callback writing to the upstream,
// and closing the client waits for that write to end (see copySocket).
func (r *relay) closeBoth() {
	r.u.Close()
	r.c.Close()
}

// end records that the copy from side from ended with err (nil: clean EOF).
// The first end decides: an error closes both connections; a clean EOF
// passes the half-close on and gives the other direction relayLinger to
// finish. The second end's error is kept if the first was clean, it came in
// time and it is not caused by our own Close.
func (r *relay) end(from Side, err error) {
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
	if from == SideUpstream {
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
// that filled its buffer (see the top of this file).
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

// Counters are process-wide byte totals, kept for metrics.
type Counters struct {
	// ClientToUpstream counts bytes sent to servers.
	ClientToUpstream atomic.Int64
	// UpstreamToClient counts bytes sent to clients.
	UpstreamToClient atomic.Int64
}

func (c *Counters) clientToUpstream() *atomic.Int64 {
	if c == nil {
		return nil
	}
	return &c.ClientToUpstream
}

func (c *Counters) upstreamToClient() *atomic.Int64 {
	if c == nil {
		return nil
	}
	return &c.UpstreamToClient
}
