// Package rawsock writes to plaintext sockets without announcing a system
// call to the Go scheduler: see Writer. That is Linux only (rawsock_linux.go);
// on every other system NewWriter returns nil and Wrap returns its
// connection unchanged, so callers write through net.Conn as usual.
package rawsock

import (
	"net"
	"os"
	"syscall"
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
// else is the *net.TCPConn's.
type Conn struct {
	*net.TCPConn
	w *Writer
}

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

// Write writes all of b (see Writer). It must not be called concurrently
// with itself, as for any writer the TLS layer drives.
func (c *Conn) Write(b []byte) (int, error) { return c.w.Write(b) }
