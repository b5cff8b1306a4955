package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestDisable: after Disable nothing is wrapped, as outside Linux.
func TestDisable(t *testing.T) {
	a, _ := tcpPair(t)
	if _, ok := Wrap(a).(*Conn); !ok {
		t.Fatal("a TCP connection is not wrapped before Disable")
	}
	t.Cleanup(func() { disabled.Store(false) })
	Disable()
	if got := Wrap(a); got != net.Conn(a) {
		t.Fatalf("Wrap after Disable = %T, want the connection itself", got)
	}
	if NewWriter(a) != nil {
		t.Fatal("NewWriter after Disable is not nil")
	}
}

// fdWrite writes b to a raw descriptor.
func fdWrite(t *testing.T, fd int, b []byte) {
	t.Helper()
	if n, e := WriteNonblock(fd, b); e != 0 || n != len(b) {
		t.Fatalf("write to the claimed descriptor: %d, %v", n, e)
	}
}

// TestClaim: each way a hand-over can go, for a plain TCP connection and a
// rawsock.Conn. Abandoned: the connection is as it was. Committed: the
// descriptor carries the socket, a read parked on the connection ends with
// net.ErrClosed and takes no byte, and the connection (through Go) can no
// longer write.
func TestClaim(t *testing.T) {
	for _, wrap := range []bool{false, true} {
		for _, commit := range []bool{false, true} {
			name := map[bool]string{false: "TCPConn", true: "rawsock.Conn"}[wrap] + map[bool]string{false: "/abandoned", true: "/committed"}[commit]
			t.Run(name, func(t *testing.T) {
				a, b := tcpPair(t)
				var c net.Conn = a
				if wrap {
					c = Wrap(a)
				}
				parked := make(chan error, 1)
				if commit {
					go func() {
						n, err := c.Read(make([]byte, 8))
						if n > 0 {
							err = errors.New("a parked read took bytes meant for the new owner")
						}
						parked <- err
					}()
					time.Sleep(20 * time.Millisecond) // the read is parked in the poller
				}
				cl, err := Take(c)
				if err != nil {
					t.Fatal(err)
				}
				if !commit {
					cl.Abandon()
					cl.Abandon() // twice is harmless
					msg := []byte("still mine")
					if _, err := c.Write(msg); err != nil {
						t.Fatalf("write after Abandon: %v", err)
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, msg) {
						t.Fatalf("peer read %q, %v", got, err)
					}
					return
				}
				fd := cl.Commit(nil)
				t.Cleanup(func() { syscall.Close(fd) })
				select {
				case err := <-parked:
					if !errors.Is(err, net.ErrClosed) {
						t.Fatalf("parked read ended with %v, want net.ErrClosed", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("parked read still blocked after Commit")
				}
				if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("write through the connection after Commit: %v, want net.ErrClosed", err)
				}
				if wrap {
					if _, err := Take(c); err == nil {
						t.Fatal("a committed rawsock.Conn was claimed again")
					}
				}
				msg := []byte("through the new owner")
				fdWrite(t, fd, msg)
				got := make([]byte, len(msg))
				_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("peer read %q, %v", got, err)
				}
			})
		}
	}
}

// TestTakeRefuses: what cannot be claimed is refused with nothing changed.
func TestTakeRefuses(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if _, err := Take(p1); err == nil {
		t.Fatal("a net.Pipe was claimed")
	}
}
