package relay

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// socketCopy is the fast path's state for a plaintext socket source.
type socketCopy struct {
	// A plaintext socket source is copied by rawPump (bound once, so that
	// RawConn.Read allocates nothing), which leaves its outcome here.
	raw    syscall.RawConn
	readFn func(fd uintptr) bool
	rerr   error // the read error that ended the source
	werr   error // the write error that ended the copy

	// inq: TCP_INQ is on, and recv says when the socket is empty.
	inq     bool
	recv    inqReader
	recheck time.Duration
}

// initFast sets cp up for the fast path: its writes to a plaintext socket
// go through rawsock, and a plaintext socket source is copied by rawPump.
// It reports whether it took the source; if not (TLS), copyBuffered copies
// it.
func (cp *copier) initFast(dst *closeOnce, recheck time.Duration) bool {
	cp.rw = rawsock.NewWriter(dst.Conn)
	if sc, ok := cp.src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			cp.raw = rc
			cp.readFn = cp.rawPump
			cp.recheck = recheck
			if _, ok := cp.src.(*net.TCPConn); ok {
				_ = rc.Control(func(fd uintptr) { cp.inq = enableINQ(int(fd)) })
			}
			return true
		}
	}
	return false
}

// run copies until src ends or an error. It returns nil on a clean EOF
// from src, else the first error.
func (cp *copier) run() error {
	switch {
	case cp.raw != nil:
		return cp.copySocket()
	case cp.stream:
		return cp.copyStream()
	}
	return cp.copyBuffered()
}

// rawPump is the RawConn.Read callback, and the whole copy loop: it reads
// into a pooled buffer and writes what it read to dst before reading again.
// The pooled buffer goes back before the goroutine parks. It returns true
// when the copy is over: the source ended (EOF, or an error in rerr) or the
// write failed (werr).
//
// With TCP_INQ, when the socket holds nothing more (no data, no FIN) it
// returns false at once, so that the goroutine parks until the socket is
// readable again, without the read(2) that would only return EAGAIN: one
// system call less per message. That is sound because the copy stays inside
// one RawConn.Read, which resets the poller's readiness when it is called
// and only then, so data that arrives while the callback writes is
// signalled to the wait that follows. One thing TCP_INQ does not count is a
// reset that came with the last data: copySocket's read deadline
// (Options.Recheck) makes it read again after a while, so a reset client's
// session ends then instead of never. Without TCP_INQ (a unix socket, an
// old kernel) it reads until EAGAIN.
func (cp *copier) rawPump(fd uintptr) bool {
	for {
		bp := bufPool.Get().(*[]byte)
		n, left, e := cp.recv.recv(int(fd), *bp, cp.inq)
		switch {
		case e == syscall.EAGAIN:
			bufPool.Put(bp)
			return false
		case e != 0:
			bufPool.Put(bp)
			cp.rerr = e
			return true
		case n == 0:
			bufPool.Put(bp)
			return true // EOF
		}
		werr := cp.write((*bp)[:n])
		bufPool.Put(bp)
		if werr != nil {
			cp.werr = werr
			return true
		}
		if !left {
			return false
		}
	}
}

// copySocket copies from a plaintext socket (see rawPump). While the
// callback writes to dst it holds the source's read lock, so closing the
// source waits for that write: sessions are closed upstream first
// (CloseUpstreamFirst).
func (cp *copier) copySocket() error {
	for {
		var err error
		if cp.inq {
			err = cp.src.SetReadDeadline(time.Now().Add(cp.recheck))
		}
		if err == nil {
			err = cp.raw.Read(cp.readFn)
		}
		switch {
		case cp.werr != nil:
			return cp.werr
		case cp.inq && errors.Is(err, os.ErrDeadlineExceeded):
			continue // read again: see rawPump
		case err != nil:
			return rawsock.OpError("read", cp.src, err)
		case cp.rerr != nil:
			return rawsock.OpError("read", cp.src, os.NewSyscallError(cp.recv.call(cp.inq), cp.rerr))
		}
		return nil // EOF
	}
}
