package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// How the relay copies, and why. Numbers are from bench_test.go (before →
// after this design, loopback, plaintext client leg, TLS upstream leg, a
// 2-core VM; syscalls/op count the whole process, harness included):
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
//     *net.UnixConn) is read through syscall.RawConn: the callback takes a
//     pooled buffer, reads, and on EAGAIN puts the buffer back before the
//     goroutine parks, so a waiting direction holds no buffer at all, and
//     data is read with one read(2) into a large buffer. (Reading it with
//     the small buffer instead splits bulk data into small TLS records, one
//     write each: 9.5× the system calls per 64 KiB the client writes.)
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
//   - Skipping the read(2) that returns EAGAIN after a short read on the
//     plaintext leg (the socket was drained, so park at once): unsound.
//     RawConn.Read resets the poller's readiness before calling back, so
//     data that arrived in between is never signalled again and the session
//     stalls (the ping-pong benchmark hung). Writing from inside the
//     callback keeps the readiness, but then closing the source waits for a
//     write blocked on the other leg: a deadlock when a peer stops reading.
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

// Relay copies bytes both ways between client and upstream until one side
// ends, then closes both (each exactly once). The first end wins: an error
// closes everything at once; a clean EOF half-closes the other side's write
// direction and lets the other copy finish for up to relayLinger. No message
// is parsed. counters, when non-nil, are updated while bytes flow. Relay
// owns the read deadlines of both connections while it runs.
func Relay(client, upstream net.Conn, counters *Counters) RelayStats {
	r := &relay{c: &closeOnce{Conn: client}, u: &closeOnce{Conn: upstream}}
	defer r.c.Close()
	defer r.u.Close()
	up := newCopier(r.u, client, counters.clientToUpstream())
	down := newCopier(r.c, upstream, counters.upstreamToClient())
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

func (r *relay) closeBoth() {
	r.c.Close()
	r.u.Close()
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
	dst   net.Conn // the closeOnce of the other side
	src   net.Conn
	n     atomic.Int64  // bytes written to dst
	total *atomic.Int64 // process-wide counter, or nil

	// A plaintext socket source is read in rawRead (bound once, so that
	// RawConn.Read allocates nothing), which leaves its result here.
	raw    syscall.RawConn
	readFn func(fd uintptr) bool
	bp     *[]byte
	nr     int
	rerr   error

	// Any other source is read into idle while waiting.
	idle []byte
}

func newCopier(dst *closeOnce, src net.Conn, total *atomic.Int64) *copier {
	cp := &copier{dst: dst, src: src, total: total}
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			cp.raw = rc
			cp.readFn = cp.rawRead
			return cp
		}
	}
	cp.idle = make([]byte, relayIdleBufferSize)
	return cp
}

// run copies until src ends or an error. It returns nil on a clean EOF
// from src, else the first error.
func (cp *copier) run() error {
	if cp.raw != nil {
		return cp.copySocket()
	}
	return cp.copyBuffered()
}

// write writes b to dst and counts what was written.
func (cp *copier) write(b []byte) error {
	nw, err := cp.dst.Write(b)
	cp.n.Add(int64(nw))
	if cp.total != nil {
		cp.total.Add(int64(nw))
	}
	return err
}

// rawRead is the RawConn.Read callback: one read(2) into a pooled buffer.
// On EAGAIN the buffer goes back to the pool before the goroutine parks.
func (cp *copier) rawRead(fd uintptr) bool {
	bp := relayBufPool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *bp)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			relayBufPool.Put(bp)
			return false
		}
		if n < 0 {
			n = 0
		}
		cp.bp, cp.nr, cp.rerr = bp, n, err
		return true
	}
}

// copySocket copies from a plaintext socket.
func (cp *copier) copySocket() error {
	for {
		if err := cp.raw.Read(cp.readFn); err != nil {
			return cp.readError(err)
		}
		bp, nr, rerr := cp.bp, cp.nr, cp.rerr
		cp.bp, cp.rerr = nil, nil
		if rerr != nil || nr == 0 {
			relayBufPool.Put(bp)
			if rerr != nil {
				return cp.readError(os.NewSyscallError("read", rerr))
			}
			return nil // EOF
		}
		err := cp.write((*bp)[:nr])
		relayBufPool.Put(bp)
		if err != nil {
			return err
		}
	}
}

// readError words a read error as net.Conn.Read does.
func (cp *copier) readError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "raw-read" {
		err = oe.Err
	}
	la := cp.src.LocalAddr()
	return &net.OpError{Op: "read", Net: la.Network(), Source: la, Addr: cp.src.RemoteAddr(), Err: err}
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
