package proxy

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// portableRelayEnv names the test-only switch: with
// PGVERIFYPROXY_TEST_PORTABLE_RELAY=1 in its environment at start, the
// Linux binary relays with the portable relay (and writes to its upstream
// sockets through net.Conn, see rawsock.Disable), the one Windows and macOS
// use, so that the integration tests run it on Linux. It is read once, when
// the package is initialised, and logged at the first relay ("relay:
// portable (test switch)"). It is no setting: nothing but tests sets it.
const portableRelayEnv = "PGVERIFYPROXY_TEST_PORTABLE_RELAY"

// portableRelaySwitch is the test switch, read once.
var portableRelaySwitch = os.Getenv(portableRelayEnv) == "1"

// defaultRelayMode is what relay uses: the event loop, unless the test
// switch is on.
var defaultRelayMode = relayLoop

func init() {
	if portableRelaySwitch {
		defaultRelayMode = relayPortable
		rawsock.Disable()
	}
}

// socketCopy is the fast path's state for a plaintext socket source.
type socketCopy struct {
	// A plaintext socket source is copied by rawPump (bound once, so that
	// RawConn.Read allocates nothing), which leaves its outcome here.
	raw    syscall.RawConn
	readFn func(fd uintptr) bool
	rerr   error // the read error that ended the source
	werr   error // the write error that ended the copy

	// With TCP_INQ on the source, reads are recvmsg(2) calls with these.
	inq bool
	msg syscall.Msghdr
	iov syscall.Iovec
	oob [syscall.SizeofCmsghdr + 8]byte
}

// initFast sets cp up for the fast path: its writes to a plaintext socket
// go through rawsock, and a plaintext socket source is copied by rawPump.
// It reports whether it took the source; if not (TLS), copyBuffered copies
// it.
func (cp *copier) initFast(dst *closeOnce) bool {
	cp.rw = rawsock.NewWriter(dst.Conn)
	if sc, ok := cp.src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			cp.raw = rc
			cp.readFn = cp.rawPump
			if _, ok := cp.src.(*net.TCPConn); ok {
				_ = rc.Control(func(fd uintptr) {
					cp.inq = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpINQ, 1) == nil
				})
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

// tcpINQ is Linux's TCP_INQ socket option (and its control message type,
// TCP_CM_INQ): each recvmsg(2) then says how much the socket still holds,
// and a held FIN counts as one byte.
const tcpINQ = 36

// relayRecheck bounds how long a plaintext source waits without a read(2):
// see rawPump. It is a variable for tests.
var relayRecheck = 10 * time.Second

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
// (relayRecheck) makes it read again after a while, so a reset client's
// session ends then instead of never. Without TCP_INQ (a unix socket, an
// old kernel) it reads until EAGAIN.
func (cp *copier) rawPump(fd uintptr) bool {
	for {
		bp := relayBufPool.Get().(*[]byte)
		n, left, err := cp.recv(fd, *bp)
		switch {
		case err == syscall.EINTR:
			relayBufPool.Put(bp)
			continue
		case err == syscall.EAGAIN:
			relayBufPool.Put(bp)
			return false
		case err != nil || n <= 0:
			relayBufPool.Put(bp)
			cp.rerr = err
			return true
		}
		werr := cp.write((*bp)[:n])
		relayBufPool.Put(bp)
		if werr != nil {
			cp.werr = werr
			return true
		}
		if !left {
			return false
		}
	}
}

// recv reads once from fd into b. left reports whether the socket may hold
// more: always, unless TCP_INQ says it holds nothing.
func (cp *copier) recv(fd uintptr, b []byte) (n int, left bool, err error) {
	if !cp.inq {
		n, err = syscall.Read(int(fd), b)
		return n, true, err
	}
	cp.iov.Base = &b[0]
	cp.iov.SetLen(len(b))
	cp.msg.Iov = &cp.iov
	cp.msg.Iovlen = 1
	cp.msg.Control = &cp.oob[0]
	cp.msg.SetControllen(len(cp.oob))
	cp.msg.Flags = 0
	r, _, e := syscall.Syscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&cp.msg)), 0)
	cp.iov.Base = nil // hold no pooled buffer while parked
	if e != 0 {
		return 0, true, e
	}
	n, left = int(r), true
	if cp.msg.Controllen >= syscall.SizeofCmsghdr+4 {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&cp.oob[0]))
		if h.Level == syscall.IPPROTO_TCP && h.Type == tcpINQ {
			left = *(*int32)(unsafe.Pointer(&cp.oob[syscall.SizeofCmsghdr])) > 0
		}
	}
	return n, left, nil
}

// copySocket copies from a plaintext socket (see rawPump). While the
// callback writes to dst it holds the source's read lock, so closing the
// source waits for that write: the relay closes the upstream side first,
// and the server closes a relaying session's upstream before its client
// (Server.Close).
func (cp *copier) copySocket() error {
	for {
		var err error
		if cp.inq {
			err = cp.src.SetReadDeadline(time.Now().Add(relayRecheck))
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
			return rawsock.OpError("read", cp.src, os.NewSyscallError("recvmsg", cp.rerr))
		}
		return nil // EOF
	}
}
