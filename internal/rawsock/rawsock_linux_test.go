package rawsock

import (
	"net"
	"testing"
)

// TestDisable: after Disable nothing is wrapped, as outside Linux.
func TestDisable(t *testing.T) {
	a, _ := tcpPair(t)
	if _, ok := Wrap(a).(*Conn); !ok {
		t.Fatal("a TCP connection is not wrapped before Disable")
	}
	t.Cleanup(func() { disabled = false })
	Disable()
	if got := Wrap(a); got != net.Conn(a) {
		t.Fatalf("Wrap after Disable = %T, want the connection itself", got)
	}
	if NewWriter(a) != nil {
		t.Fatal("NewWriter after Disable is not nil")
	}
}
