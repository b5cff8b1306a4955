// Package rawsock has two jobs, both Linux only (rawsock_linux.go):
//
//   - writing to plaintext sockets without announcing a system call to the
//     Go scheduler (Writer, Conn, and WriteNonblock, the one non-blocking
//     write loop every relay engine uses);
//   - handing a socket over from Go's poller to an event loop (Take, then
//     Claim.Commit or Claim.Abandon): the descriptor is duplicated before
//     anything is closed, so a hand-over that fails leaves the connection
//     as it was, and a committed one leaves no goroutine that can still
//     read or write the socket through Go.
//
// On every other system NewWriter returns nil, Wrap returns its connection
// unchanged and Take refuses, so callers write through net.Conn as usual.
package rawsock

import (
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// Writer writes to a plaintext socket with syscall.RawSyscall, through
// the connection's RawConn (so deadlines, Close and waiting for the socket
// to become writable work as for net.Conn.Write). NewWriter makes one on
// Linux only.
//
// Why: a write to a loopback socket wakes the reader, and on a small
// machine the kernel often runs the reader at once, so the write returns
// late. net.Conn.Write tells the Go scheduler it entered a system call;
// when one lasts longer than a scheduler tick, the runtime's monitor hands
// the processor to another thread (a futex wake-up and a context switch)
// and keeps polling every 20 µs. A write to a non-blocking socket never
// waits for anything but the CPU, so it need not be announced. Profiled on
// a 2-core VM (perf, cpu-clock, pgbench -S through the proxy): the
// runtime's monitor fell from 15% to 7% of the proxy's CPU, and the CPU per
// transaction by about 15%.
type Writer struct {
	rc  syscall.RawConn
	fn  func(fd uintptr) bool // w.write, bound once
	c   net.Conn
	buf []byte
	n   int
	err error
}

// Write writes all of b, waiting while the socket is full.
func (w *Writer) Write(b []byte) (int, error) {
	w.buf, w.n, w.err = b, 0, nil
	err := w.rc.Write(w.fn)
	n := w.n
	w.buf = nil
	if err == nil && w.err != nil {
		err = os.NewSyscallError("write", w.err)
	}
	if err != nil {
		return n, OpError("write", w.c, err)
	}
	return n, nil
}

// OpError words err, from a RawConn operation on c or from the system
// call inside it, as net.Conn's Read or Write (op) would: a *net.OpError
// with c's addresses whose cause is the RawConn error's own.
func OpError(op string, c net.Conn, err error) error {
	if oe, ok := err.(*net.OpError); ok && (oe.Op == "raw-write" || oe.Op == "raw-read") {
		err = oe.Err
	}
	la := c.LocalAddr()
	return &net.OpError{Op: op, Net: la.Network(), Source: la, Addr: c.RemoteAddr(), Err: err}
}

// Conn is a TCP connection whose Write goes through a Writer; everything
// else is the *net.TCPConn's, until a hand-over (Take, then Claim.Commit)
// gives its socket to an event loop (Linux): from then on Read and Write go
// to that loop's Transport, and nothing reaches the socket through Go.
type Conn struct {
	*net.TCPConn
	w *Writer
	t atomic.Pointer[transportRef] // set once, by Claim.Commit
}

// Transport is what a detached Conn reads from and writes to: an event
// loop's end of the socket. Read returns a temporary net.Error (Timeout
// true) when nothing is buffered, which crypto/tls passes up without
// failing the connection; Write takes everything or fails for good.
type Transport interface {
	Read(b []byte) (int, error)
	Write(b []byte) (int, error)
}

// transportRef boxes a Transport for an atomic pointer.
type transportRef struct{ Transport }

// closedTransport is the Transport of a Conn handed over to no one
// (Claim.Commit with a nil Transport): every call fails.
type closedTransport struct{}

func (closedTransport) Read([]byte) (int, error)  { return 0, net.ErrClosed }
func (closedTransport) Write([]byte) (int, error) { return 0, net.ErrClosed }

// Wrap returns c as a Conn when it is a *net.TCPConn and NewWriter makes a
// Writer for it (on Linux), else c itself.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	w := NewWriter(tc)
	if w == nil {
		return c
	}
	return &Conn{TCPConn: tc, w: w}
}

// Read reads from the socket, or from the Transport once detached.
func (c *Conn) Read(b []byte) (int, error) {
	if t := c.t.Load(); t != nil {
		return t.Read(b)
	}
	return c.TCPConn.Read(b)
}

// Write writes all of b (see Writer), or hands it to the Transport once
// detached. It must not be called concurrently with itself, as for any
// writer the TLS layer drives.
func (c *Conn) Write(b []byte) (int, error) {
	if t := c.t.Load(); t != nil {
		return t.Write(b)
	}
	return c.w.Write(b)
}

// Detached reports whether a hand-over has given the socket away.
func (c *Conn) Detached() bool { return c.t.Load() != nil }

// Close closes the socket; once detached, the event loop owns the socket
// and Close does nothing.
func (c *Conn) Close() error {
	if c.Detached() {
		return nil
	}
	return c.TCPConn.Close()
}

// CloseWrite shuts the write side; once detached it does nothing (the loop
// does that).
func (c *Conn) CloseWrite() error {
	if c.Detached() {
		return nil
	}
	return c.TCPConn.CloseWrite()
}

// SetDeadline sets both deadlines; once detached there are none, and it
// does nothing (crypto/tls sets a write deadline around its close_notify).
func (c *Conn) SetDeadline(t time.Time) error {
	if c.Detached() {
		return nil
	}
	return c.TCPConn.SetDeadline(t)
}

// SetReadDeadline is as SetDeadline, for reads.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.Detached() {
		return nil
	}
	return c.TCPConn.SetReadDeadline(t)
}

// SetWriteDeadline is as SetDeadline, for writes.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.Detached() {
		return nil
	}
	return c.TCPConn.SetWriteDeadline(t)
}
