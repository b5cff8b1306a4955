package proxy

import (
	"crypto/tls"
	"net"
	"syscall"
	"unsafe"
)

// fionread is Winsock's FIONREAD: the number of bytes a socket holds
// (_IOR('f', 127, u_long)). WSAIoctl takes it as ioctlsocket does.
const fionread = 0x4004667f

// quiet reports whether nothing is waiting on c's socket. Windows cannot
// peek at a socket without blocking (Go's sockets there are blocking
// sockets driven by overlapped I/O), so this asks how many bytes the socket
// holds: none is quiet. A server that is about to hang up sends a TLS alert
// first, which counts; what this cannot see is a bare FIN (or a reset) with
// no byte before it: such a pre-dialled connection is handed out, and the
// session that uses it fails at its first read or write of the upstream,
// as one would on a connection the server closes a moment after take.
func quiet(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var pending uint32
	var ioerr error
	err = rc.Control(func(fd uintptr) {
		var ret uint32
		ioerr = syscall.WSAIoctl(syscall.Handle(fd), fionread, nil, 0,
			(*byte)(unsafe.Pointer(&pending)), uint32(unsafe.Sizeof(pending)), &ret, nil, 0)
	})
	return err == nil && ioerr == nil && pending == 0
}
