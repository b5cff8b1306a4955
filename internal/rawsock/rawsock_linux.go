package rawsock

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

var (
	errNotSocket = errors.New("rawsock: not a socket connection")
	errDetached  = errors.New("rawsock: already detached")
)

// disabled is set by Disable.
var disabled atomic.Bool

// Disable makes NewWriter return nil and Wrap return its connection
// unchanged, as on systems other than Linux: the binary calls it at start
// when its relay is the portable one, so that the Linux binary writes as
// the portable build does. Connections wrapped before keep their Writer.
func Disable() { disabled.Store(true) }

// NewWriter returns a Writer for a plaintext TCP or unix socket, or nil for
// any other connection (and for every connection after Disable).
func NewWriter(c net.Conn) *Writer {
	if disabled.Load() {
		return nil
	}
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil
	}
	w := &Writer{rc: rc, c: c}
	w.fn = w.write
	return w
}

// write is the RawConn.Write callback.
func (w *Writer) write(fd uintptr) bool {
	n, e := WriteNonblock(int(fd), w.buf[w.n:])
	w.n += n
	switch e {
	case 0:
		return true
	case syscall.EAGAIN:
		return false
	}
	w.err = e
	return true
}

// WriteNonblock is the one non-blocking write loop of the relay: it writes
// b to the non-blocking socket fd with write(2) through RawSyscall (see
// Writer for why the scheduler need not hear of it) until all of b is
// written (e is 0), the socket is full (syscall.EAGAIN) or the write fails
// (any other errno). n is what was written in every case.
func WriteNonblock(fd int, b []byte) (n int, e syscall.Errno) {
	for n < len(b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
		switch e {
		case 0:
			n += int(r)
		case syscall.EINTR:
		default:
			return n, e
		}
	}
	return n, 0
}

// Claim is a socket's descriptor duplicated for a new owner while the
// connection it came from is still open and unchanged: the first half of a
// hand-over. Commit completes it; Abandon undoes it, leaving nothing
// changed. A hand-over of several sockets claims them all before it
// commits any, so that a failure leaves nothing to undo.
type Claim struct {
	c  net.Conn // *net.TCPConn, *net.UnixConn, or *Conn
	fd int      // the duplicate, -1 once committed or abandoned
}

// Take claims c's socket: it duplicates the descriptor (close-on-exec,
// still non-blocking: the flag belongs to the shared open file). c must be
// a *net.TCPConn, a *net.UnixConn or a *Conn not yet detached. The caller
// must make sure nothing reads or writes c from Take to Commit (the TLS
// layer above it included).
func Take(c net.Conn) (*Claim, error) {
	if rc, ok := c.(*Conn); ok && rc.Detached() {
		return nil, errDetached
	}
	var sc syscall.Conn
	switch cc := c.(type) {
	case *Conn:
		sc = cc.TCPConn
	case *net.TCPConn, *net.UnixConn:
		sc = cc.(syscall.Conn)
	default:
		return nil, errNotSocket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = dupCloexec(int(fd))
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	if err := syscall.SetNonblock(nfd, true); err != nil {
		syscall.Close(nfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	return &Claim{c: c, fd: nfd}, nil
}

// Commit completes the hand-over and returns the descriptor, which the
// caller owns from then on. It closes the connection, which removes it from
// Go's poller and wakes any goroutine blocked on it with net.ErrClosed, so
// no goroutine can read or write the socket through it afterwards. A *Conn
// sends its Read and Write to t from then on (t may be nil for other
// connections). Commit cannot fail: closing a connection already closed by
// someone else leaves the duplicate as good as ever.
func (cl *Claim) Commit(t Transport) int {
	fd := cl.fd
	cl.fd = -1
	if rc, ok := cl.c.(*Conn); ok {
		_ = rc.TCPConn.Close()
		if t == nil {
			t = closedTransport{}
		}
		rc.t.Store(&transportRef{t})
		return fd
	}
	_ = cl.c.Close()
	return fd
}

// FD is the duplicate's number (-1 once committed or abandoned), for tests
// and logs.
func (cl *Claim) FD() int { return cl.fd }

// Abandon closes the duplicate: the connection stays as it was, and the
// descriptor number is given back before anyone else learnt it.
func (cl *Claim) Abandon() {
	if cl.fd >= 0 {
		syscall.Close(cl.fd)
		cl.fd = -1
	}
}

// dupCloexec is fcntl(fd, F_DUPFD_CLOEXEC, 0).
func dupCloexec(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}
