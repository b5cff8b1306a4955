//go:build unix && !aix

package proxy

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// waitReadable waits until c's socket has something to read (bytes or a
// FIN), without reading it: a peek that finds nothing (EAGAIN) makes
// RawConn.Read wait for the socket to become readable and peek again.
func waitReadable(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var perr error
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return !errors.Is(perr, syscall.EAGAIN) && !errors.Is(perr, syscall.EINTR)
	})
	if err != nil || perr != nil {
		t.Fatalf("waiting for the socket to be readable: %v %v", err, perr)
	}
}
