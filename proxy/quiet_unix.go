//go:build unix && !aix

package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// quiet reports whether nothing is waiting on c's socket: no EOF, no byte
// (a server that is about to hang up sends a TLS alert first). It peeks
// without blocking and without consuming.
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
	alive := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = errors.Is(err, syscall.EAGAIN) // a byte or EOF would return without error
		return true                            // never wait
	})
	return err == nil && alive
}
