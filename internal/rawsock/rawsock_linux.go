package rawsock

import (
	"net"
	"syscall"
	"unsafe"
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
