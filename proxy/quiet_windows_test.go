package proxy

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// waitReadable waits until c's socket has something to read (bytes or a
// FIN), without reading it: when its callback asks to wait, RawConn.Read
// on Windows issues a zero-byte receive, which completes once the socket
// is readable.
func waitReadable(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	waited := false
	err = rc.Read(func(uintptr) bool {
		done := waited
		waited = true
		return done
	})
	if err != nil {
		t.Fatalf("waiting for the socket to be readable: %v", err)
	}
}
