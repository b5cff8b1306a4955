package rawsock

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	acc := <-ch
	if acc == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); acc.Close() })
	return d.(*net.TCPConn), acc.(*net.TCPConn)
}

func TestWrapKinds(t *testing.T) {
	a, _ := tcpPair(t)
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	tests := []struct {
		name string
		in   net.Conn
		want bool // wrapped in a *Conn
	}{
		{"tcp", a, runtime.GOOS == "linux"}, // elsewhere nothing is wrapped
		{"pipe", p1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Wrap(tc.in)
			c, ok := got.(*Conn)
			if ok != tc.want {
				t.Fatalf("Wrap(%T) = %T", tc.in, got)
			}
			if !ok && got != tc.in {
				t.Fatalf("Wrap(%T) changed the connection", tc.in)
			}
			if ok {
				// What callers use besides Write stays the TCP conn's.
				if _, ok := got.(syscall.Conn); !ok {
					t.Error("wrapped conn lost SyscallConn")
				}
				if _, ok := got.(interface{ CloseWrite() error }); !ok {
					t.Error("wrapped conn lost CloseWrite")
				}
				if c.TCPConn != tc.in {
					t.Error("wrapped conn is not the same socket")
				}
			}
		})
	}
}

// TestWriteBulkSlowReader writes more than the socket buffers hold to a
// reader that lags: Write must wait for room (EAGAIN) and deliver every
// byte in order.
func TestWriteBulkSlowReader(t *testing.T) {
	a, b := tcpPair(t)
	w := Wrap(a)
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	sum := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		buf := make([]byte, 4096)
		for {
			n, err := b.Read(buf)
			h.Write(buf[:n])
			if err != nil {
				break
			}
			time.Sleep(10 * time.Microsecond)
		}
		var s [32]byte
		copy(s[:], h.Sum(nil))
		sum <- s
	}()
	for off := 0; off < len(data); off += 1 << 20 {
		n, err := w.Write(data[off : off+1<<20])
		if err != nil || n != 1<<20 {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	a.CloseWrite()
	if got := <-sum; got != sha256.Sum256(data) {
		t.Fatal("the reader got different bytes")
	}
}

func TestWriteErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, a, b *net.TCPConn, w net.Conn)
		want  func(error) bool
	}{
		{"write deadline passed", func(t *testing.T, a, b *net.TCPConn, w net.Conn) {
			a.SetWriteDeadline(time.Unix(1, 0))
		}, func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }},
		{"write deadline while full", func(t *testing.T, a, b *net.TCPConn, w net.Conn) {
			a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		}, func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }},
		{"closed", func(t *testing.T, a, b *net.TCPConn, w net.Conn) {
			a.Close()
		}, func(err error) bool { return errors.Is(err, net.ErrClosed) }},
		{"closed while full", func(t *testing.T, a, b *net.TCPConn, w net.Conn) {
			time.AfterFunc(200*time.Millisecond, func() { a.Close() })
		}, func(err error) bool { return errors.Is(err, net.ErrClosed) }},
		{"peer reset", func(t *testing.T, a, b *net.TCPConn, w net.Conn) {
			b.SetLinger(0)
			b.Close()
		}, isResetOrPipe},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tcpPair(t)
			w := Wrap(a)
			tc.setup(t, a, b, w)
			// Nobody reads b: 64 MiB cannot fit in the socket buffers, so
			// the write waits and the setup's event ends it.
			var err error
			for i := 0; i < 64 && err == nil; i++ {
				_, err = w.Write(make([]byte, 1<<20))
				if tc.name == "peer reset" {
					time.Sleep(10 * time.Millisecond)
				}
			}
			if err == nil || !tc.want(err) {
				t.Fatalf("Write error = %v", err)
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "write" {
				t.Errorf("error %q is not a *net.OpError of a write", err)
			}
		})
	}
}

// TestWriteSmall: the common case, a message that fits, arrives whole.
func TestWriteSmall(t *testing.T) {
	a, b := tcpPair(t)
	w := Wrap(a)
	msg := []byte("Q\x00\x00\x00\x0dselect 1\x00")
	if n, err := w.Write(msg); err != nil || n != len(msg) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %q, %v", got, err)
	}
}

// isResetOrPipe reports a write error caused by the peer's reset. Windows
// has its own numbers (syscall.ECONNRESET there is an invented value no
// socket returns): WSAECONNRESET, WSAECONNABORTED, and ERROR_NETNAME_DELETED
// from an overlapped operation on a reset connection.
func isResetOrPipe(err error) bool {
	if runtime.GOOS == "windows" {
		return errors.Is(err, syscall.Errno(10054)) || errors.Is(err, syscall.Errno(10053)) || errors.Is(err, syscall.Errno(64))
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
