package rawsock

import (
	"errors"
	"net"
	"os"
	"syscall"
	"unsafe"
)

var (
	errNotSocket = errors.New("rawsock: not a socket connection")
	errDetached  = errors.New("rawsock: already detached")
)

// disabled is set by Disable.
var disabled bool

// Disable makes NewWriter return nil and Wrap return its connection
// unchanged, as on systems other than Linux. It is a test switch (the proxy
// package calls it when PGVERIFYPROXY_TEST_PORTABLE_RELAY=1, so that the
// Linux binary writes as the portable build does) and must be called before
// any connection is wrapped, from an init function: it is not synchronised.
func Disable() { disabled = true }

// NewWriter returns a Writer for a plaintext TCP or unix socket, or nil for
// any other connection (and for every connection after Disable).
func NewWriter(c net.Conn) *Writer {
	if disabled {
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
	for w.n < len(w.buf) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&w.buf[w.n])), uintptr(len(w.buf)-w.n))
		switch e {
		case 0:
			w.n += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			w.err = e
			return true
		}
	}
	return true
}

// DupClose takes a plaintext socket away from Go's poller: it duplicates
// the descriptor (close-on-exec, still non-blocking: the flag belongs to
// the shared open file) and closes c, which removes c from the poller and
// wakes any goroutine blocked on it with net.ErrClosed. The caller owns the
// returned descriptor. c must be a *net.TCPConn or *net.UnixConn.
func DupClose(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errNotSocket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = dupCloexec(int(fd))
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	if err := c.Close(); err != nil {
		syscall.Close(nfd)
		return -1, err
	}
	if err := syscall.SetNonblock(nfd, true); err != nil {
		syscall.Close(nfd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return nfd, nil
}

// dupCloexec is fcntl(fd, F_DUPFD_CLOEXEC, 0).
func dupCloexec(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// Detach hands c's socket to an event loop: it returns a duplicate of the
// descriptor for the loop to own and closes the *net.TCPConn, and from then
// on Read and Write go to t. No goroutine can be inside a Read or Write of
// c's socket afterwards: a Read already blocked in Go's poller returns
// net.ErrClosed, and Read and Write calls that start later go to t. The
// caller must make sure nothing reads c concurrently (the TLS layer above
// it included), or that read would take bytes meant for the loop.
func (c *Conn) Detach(t Transport) (int, error) {
	if c.Detached() {
		return -1, errDetached
	}
	fd, err := DupClose(c.TCPConn)
	if err != nil {
		return -1, err
	}
	c.t.Store(&transportRef{t})
	return fd, nil
}
