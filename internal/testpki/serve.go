package testpki

import (
	"net"
	"strconv"
	"testing"
)

// Serve runs handle on every connection accepted by a new loopback TCP
// listener, each in its own goroutine, until the test ends; it closes each
// connection when handle returns and gives the listener's address.
func Serve(t testing.TB, handle func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().String()
}

// PortOf is the port of a "host:port" address such as Serve returns, or 0.
func PortOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
