package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// The event-loop relay (relayLoop), Linux's default. Once a session is
// authenticated, both of its sockets leave Go's poller (rawsock.DupClose,
// rawsock.Conn.Detach) for one loop that owns them: a goroutine blocked in
// epoll_wait(2) on level-triggered sockets. It reads and writes with
// non-blocking system calls the Go scheduler never hears of, so relaying a
// message costs no goroutine wake-up, no netpoll and no handoff between
// threads: the scheduler work that the goroutine relay pays per message.
// TLS stays crypto/tls: a detached rawsock.Conn reads from and writes to
// its endpoint here (Read returns what the socket holds now, or a
// temporary error that crypto/tls passes up; Write never fails part-way
// through a record: what the socket does not take waits in the endpoint's
// output buffer). The session's goroutine waits for the end and reports
// it, as with the goroutine relay. docs/design/relay.md has the design
// and the measurements.

// loopBudget bounds how much one source may relay per wake-up before the
// loop serves the others: one busy session cannot starve the rest.
const loopBudget = 256 << 10

// loopBufferSize is the loop's one read buffer, shared by its sessions.
const loopBufferSize = 64 << 10

// loopMaxEvents is how many events one epoll_wait returns at most.
const loopMaxEvents = 256

// errWouldBlock is what an endpoint's Read returns when the socket holds
// nothing now. crypto/tls keeps a temporary net.Error from its transport
// out of its sticky error state and returns it, so the loop can come back
// when the socket is readable.
var errWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "relay: would block" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

// loopPool is a set of event loops; each session goes to the loop with the
// fewest sessions. Loops start with the first session they get.
type loopPool struct {
	loops   []*evLoop
	once    sync.Once
	err     error
	stopped sync.Once
	down    atomic.Bool // stop was called: sessions go to the goroutine relay
}

// defaultLoops is how many loops a pool has when the setting is zero: one
// per four of GOMAXPROCS, at least one.
func defaultLoops() int {
	return max(1, (runtime.GOMAXPROCS(0)+3)/4)
}

// newLoopPool returns a pool of n loops (n ≤ 0: defaultLoops).
func newLoopPool(n int) *loopPool {
	if n <= 0 {
		n = defaultLoops()
	}
	p := &loopPool{loops: make([]*evLoop, n)}
	return p
}

// sharedLoops serves relays started without a Server (tests).
var sharedLoops = newLoopPool(0)

// loopHandOvers counts the sessions handed to a loop, process-wide (tests
// check that a relay ran on the loop and did not fall back).
var loopHandOvers atomic.Int64

// errLoopsStopped is start's answer after stop.
var errLoopsStopped = errors.New("relay: event loops stopped")

// start opens every loop's epoll and eventfd descriptors and starts its
// goroutine, once.
func (p *loopPool) start() error {
	if p.down.Load() {
		return errLoopsStopped
	}
	p.once.Do(func() {
		for i := range p.loops {
			l, err := newEvLoop()
			if err != nil {
				p.err = err
				return
			}
			p.loops[i] = l
			go l.run()
		}
	})
	return p.err
}

// pick returns the loop with the fewest sessions.
func (p *loopPool) pick() *evLoop {
	best := p.loops[0]
	for _, l := range p.loops[1:] {
		if l.sessions.Load() < best.sessions.Load() {
			best = l
		}
	}
	return best
}

// stop ends every loop that started, after its sessions have ended (the
// Server stops its pool in Close, once every session is over).
func (p *loopPool) stop() {
	p.down.Store(true)
	p.once.Do(func() {}) // a pool that never started stays so
	p.stopped.Do(func() {
		for _, l := range p.loops {
			if l != nil {
				l.post(func() { l.quit = true })
			}
		}
	})
}

// evLoop is one event loop. Everything but the command queue belongs to
// its goroutine.
type evLoop struct {
	epfd, evfd int
	sessions   atomic.Int64

	mu     sync.Mutex
	cmds   []func()
	closed bool // the loop has ended: its descriptors are closed

	eps    []*endpoint // by descriptor
	gen    int32       // the last generation given to an endpoint
	buf    []byte
	ready  []*endpoint // sources to serve without waiting: budget used up, or resumed
	events []unix.EpollEvent
	quit   bool

	// recvmsg's arguments, reused for every read.
	msg syscall.Msghdr
	iov syscall.Iovec
	oob [syscall.SizeofCmsghdr + 8]byte
}

func newEvLoop() (*evLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("relay: epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("relay: eventfd", err)
	}
	l := &evLoop{epfd: epfd, evfd: evfd, buf: make([]byte, loopBufferSize), events: make([]unix.EpollEvent, loopMaxEvents)}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd), Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("relay: epoll_ctl", err)
	}
	return l, nil
}

// post runs f on the loop's goroutine; after the loop has ended it drops
// f (a linger timer that fires late).
func (l *evLoop) post(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.cmds = append(l.cmds, f)
	var one = [8]byte{1}
	for {
		// Under l.mu, so that the loop cannot close evfd meanwhile.
		_, err := unix.Write(l.evfd, one[:])
		if err != unix.EINTR {
			return // EAGAIN: the counter is already non-zero, the loop will look
		}
	}
}

// run is the loop: wait for events (without blocking while sources are
// still ready), serve them, then the sources still ready. Polling first
// without blocking, to keep a busy loop out of the scheduler, cost an
// epoll_pwait per wake-up more and measured worse at 1 client
// (docs/design/relay.md).
func (l *evLoop) run() {
	for !l.quit {
		var n int
		if len(l.ready) == 0 {
			n = l.wait(-1, false)
		} else {
			n = l.wait(0, true)
		}
		for i := 0; i < n; i++ {
			ev := &l.events[i]
			if ev.Pad == -1 {
				l.runCommands()
				continue
			}
			fd := int(ev.Fd)
			if fd >= len(l.eps) {
				continue
			}
			ep := l.eps[fd]
			if ep == nil || ep.gen != ev.Pad {
				continue // stale: that endpoint is gone
			}
			l.serve(ep, ev.Events)
		}
		if len(l.ready) > 0 {
			ready := l.ready
			l.ready = nil
			for _, ep := range ready {
				l.pump(ep)
			}
			if l.ready == nil {
				l.ready = ready[:0]
			}
		}
	}
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	unix.Close(l.evfd)
	unix.Close(l.epfd)
}

// wait is epoll_pwait(2): with raw, a RawSyscall the scheduler does not
// see (timeout 0 only: it must not block); else a Syscall, so that the
// runtime may give the loop's processor to other goroutines while it
// waits.
func (l *evLoop) wait(timeout int, raw bool) int {
	for {
		var r uintptr
		var e syscall.Errno
		if raw {
			r, _, e = syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), uintptr(timeout), 0, 0)
		} else {
			r, _, e = syscall.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), uintptr(timeout), 0, 0)
		}
		if e == 0 {
			return int(r)
		}
		if e != syscall.EINTR {
			// Only a bad descriptor or address: nothing to wait for.
			panic(os.NewSyscallError("relay: epoll_pwait", e))
		}
	}
}

// runCommands drains the eventfd and runs the queued commands.
func (l *evLoop) runCommands() {
	var b [8]byte
	_, _ = unix.Read(l.evfd, b[:])
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	for _, f := range cmds {
		f()
	}
}

// serve handles one endpoint's events.
func (l *evLoop) serve(ep *endpoint, events uint32) {
	if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && ep.wantOut {
		l.flush(ep)
	}
	if ep.closed {
		return
	}
	if events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) != 0 && ep.wantIn {
		ep.readable = true
		l.pump(ep)
	}
}

// endpoint is one socket of a session on the loop: the source of one
// direction and the destination of the other.
type endpoint struct {
	l    *evLoop
	s    *loopSession
	peer *endpoint
	side side
	fd   int
	gen  int32
	tls  *tls.Conn // nil: plaintext
	addr [2]net.Addr
	inq  bool // TCP_INQ is on: a read says whether the socket holds more

	readable bool // the socket may hold data (or EOF, or an error)
	srcDone  bool // the direction from this endpoint has ended
	closed   bool

	// Output that the socket did not take yet, and what to do once it has.
	out    []byte
	outBuf *[]byte
	shutWr bool
	werr   error

	wantIn, wantOut bool
	events          uint32 // registered with epoll (0: not registered)
}

// Read is the detached TLS connection's transport read: what the socket
// holds now, or errWouldBlock.
func (ep *endpoint) Read(b []byte) (int, error) {
	if ep.closed {
		return 0, net.ErrClosed
	}
	if !ep.readable || len(b) == 0 {
		return 0, errWouldBlock
	}
	l := ep.l
	for {
		var r uintptr
		var e syscall.Errno
		if ep.inq {
			l.iov.Base = &b[0]
			l.iov.SetLen(len(b))
			l.msg.Iov = &l.iov
			l.msg.Iovlen = 1
			l.msg.Control = &l.oob[0]
			l.msg.SetControllen(len(l.oob))
			l.msg.Flags = 0
			r, _, e = syscall.RawSyscall(syscall.SYS_RECVMSG, uintptr(ep.fd), uintptr(unsafe.Pointer(&l.msg)), 0)
			l.iov.Base = nil
		} else {
			r, _, e = syscall.RawSyscall(syscall.SYS_READ, uintptr(ep.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		}
		switch e {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			ep.readable = false
			return 0, errWouldBlock
		default:
			ep.readable = false
			call := "read"
			if ep.inq {
				call = "recvmsg"
			}
			return 0, ep.opError("read", os.NewSyscallError(call, e))
		}
		n := int(r)
		if n == 0 {
			return 0, io.EOF
		}
		if ep.inq && l.msg.Controllen >= syscall.SizeofCmsghdr+4 {
			h := (*syscall.Cmsghdr)(unsafe.Pointer(&l.oob[0]))
			if h.Level == syscall.IPPROTO_TCP && h.Type == tcpINQ {
				ep.readable = *(*int32)(unsafe.Pointer(&l.oob[syscall.SizeofCmsghdr])) > 0
			}
		}
		return n, nil
	}
}

// Write is the transport write: it writes what the socket takes now and
// keeps the rest, in order, for when the socket is writable again. It
// fails only for good.
func (ep *endpoint) Write(b []byte) (int, error) {
	if ep.werr != nil {
		return 0, ep.werr
	}
	if ep.closed {
		return 0, net.ErrClosed
	}
	n := len(b)
	if len(ep.out) == 0 {
		for len(b) > 0 {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(ep.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			switch e {
			case 0:
				b = b[r:]
				continue
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
			default:
				ep.werr = ep.opError("write", os.NewSyscallError("write", e))
				return n - len(b), ep.werr
			}
			break
		}
		if len(b) == 0 {
			return n, nil
		}
		ep.outBuf = relayBufPool.Get().(*[]byte)
		ep.out = (*ep.outBuf)[:0]
		ep.wantOut = true
		ep.update()
	}
	ep.out = append(ep.out, b...)
	return n, nil
}

func (ep *endpoint) opError(op string, err error) error {
	la, ra := ep.addr[0], ep.addr[1]
	var nw string
	if la != nil {
		nw = la.Network()
	}
	return &net.OpError{Op: op, Net: nw, Source: la, Addr: ra, Err: err}
}

// send writes b (plaintext) to the endpoint, through TLS if it has it.
func (ep *endpoint) send(b []byte) error {
	if ep.tls != nil {
		_, err := ep.tls.Write(b)
		return err
	}
	_, err := ep.Write(b)
	return err
}

// update makes the epoll registration match wantIn and wantOut.
func (ep *endpoint) update() {
	var want uint32
	if ep.wantIn {
		want |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if ep.wantOut {
		want |= unix.EPOLLOUT
	}
	if want == ep.events || ep.closed {
		return
	}
	op := unix.EPOLL_CTL_MOD
	switch {
	case want == 0:
		op = unix.EPOLL_CTL_DEL
	case ep.events == 0:
		op = unix.EPOLL_CTL_ADD
	}
	ev := unix.EpollEvent{Events: want, Fd: int32(ep.fd), Pad: ep.gen}
	if _, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep.l.epfd), uintptr(op), uintptr(ep.fd), uintptr(unsafe.Pointer(&ev)), 0, 0); e != 0 {
		// Only ENOMEM or ENOSPC (max_user_watches) on a valid socket: the
		// session cannot go on.
		ep.l.end(ep, ep.opError("read", os.NewSyscallError("epoll_ctl", e)))
		return
	}
	ep.events = want
}

// pump relays from src to its peer until src would block, ends, or has
// used its budget (then it goes on the ready list), or until the peer's
// socket is full (then src waits for it).
func (l *evLoop) pump(src *endpoint) {
	if src.closed || src.srcDone {
		return
	}
	dst := src.peer
	s := src.s
	budget := loopBudget
	for {
		if len(dst.out) > 0 {
			if src.wantIn {
				src.wantIn = false
				src.update()
			}
			return
		}
		var n int
		var err error
		if src.tls != nil {
			n, err = src.tls.Read(l.buf)
		} else {
			n, err = src.Read(l.buf)
		}
		if n > 0 {
			if werr := dst.send(l.buf[:n]); werr != nil {
				l.end(src, werr)
				return
			}
			s.count(src.side, n)
			budget -= n
		}
		if err != nil {
			if err == errWouldBlock {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !errors.Is(err, os.ErrDeadlineExceeded) {
				return // errWouldBlock, as crypto/tls passed it up
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
			l.end(src, err)
			return
		}
		if budget <= 0 {
			l.ready = append(l.ready, src)
			return
		}
	}
}

// flush writes the endpoint's pending output; once it is all written, the
// source that feeds it reads again.
func (l *evLoop) flush(ep *endpoint) {
	for len(ep.out) > 0 {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(ep.fd), uintptr(unsafe.Pointer(&ep.out[0])), uintptr(len(ep.out)))
		switch e {
		case 0:
			ep.out = ep.out[r:]
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return
		}
		ep.werr = ep.opError("write", os.NewSyscallError("write", e))
		l.end(ep.peer, ep.werr)
		return
	}
	ep.releaseOut()
	ep.wantOut = false
	ep.update()
	if ep.shutWr {
		ep.shutWr = false
		_ = unix.Shutdown(ep.fd, unix.SHUT_WR)
	}
	if src := ep.peer; !src.srcDone && !src.closed {
		if !src.wantIn {
			src.wantIn = true
			src.update()
		}
		l.ready = append(l.ready, src)
	}
}

func (ep *endpoint) releaseOut() {
	if ep.outBuf != nil {
		relayBufPool.Put(ep.outBuf)
	}
	ep.out, ep.outBuf = nil, nil
}

// closeWrite passes a clean end on: close_notify on TLS, a FIN (once the
// pending output is out) on a plaintext socket.
func (ep *endpoint) closeWrite() {
	if ep.tls != nil {
		_ = ep.tls.CloseWrite()
		return
	}
	if len(ep.out) > 0 {
		ep.shutWr = true
		return
	}
	_ = unix.Shutdown(ep.fd, unix.SHUT_WR)
}

// close sends what TLS sends at a close (close_notify) as far as the
// socket takes it now, and closes the descriptor.
func (ep *endpoint) close() {
	if ep.closed {
		return
	}
	if ep.tls != nil {
		_ = ep.tls.Close()
	}
	ep.closed = true
	ep.releaseOut()
	if ep.events != 0 {
		ev := unix.EpollEvent{}
		_, _, _ = syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep.l.epfd), unix.EPOLL_CTL_DEL, uintptr(ep.fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
		ep.events = 0
	}
	if ep.fd < len(ep.l.eps) && ep.l.eps[ep.fd] == ep {
		ep.l.eps[ep.fd] = nil
	}
	unix.Close(ep.fd)
}

// loopSession is one relay on a loop: the loop's version of relayState.
type loopSession struct {
	l        *evLoop
	c, u     *endpoint
	counters *byteCounters

	toUpstream, toClient int64
	ended                int
	first                side
	err                  error
	linger               *time.Timer
	expired              bool
	finished             bool
	done                 chan struct{}
}

// count adds n bytes relayed from side from.
func (s *loopSession) count(from side, n int) {
	if from == sideClient {
		s.toUpstream += int64(n)
		if s.counters != nil {
			s.counters.ClientToUpstream.Add(int64(n))
		}
		return
	}
	s.toClient += int64(n)
	if s.counters != nil {
		s.counters.UpstreamToClient.Add(int64(n))
	}
}

// end records that the direction from src ended with err (nil: a clean
// EOF), with relayState.end's rules.
func (l *evLoop) end(src *endpoint, err error) {
	s := src.s
	if s.finished || src.srcDone {
		return
	}
	src.srcDone = true
	if src.wantIn {
		src.wantIn = false
		src.update()
	}
	s.ended++
	if s.ended == 2 {
		if s.linger != nil {
			s.linger.Stop()
		}
		if s.err == nil && err != nil && !s.expired && !isClosedErr(err) {
			s.err = err
		}
		l.finish(s)
		return
	}
	s.first, s.err = src.side, err
	if err != nil {
		l.finish(s)
		return
	}
	s.linger = time.AfterFunc(relayLinger, func() {
		l.post(func() {
			if !s.finished {
				s.expired = true
				l.finish(s)
			}
		})
	})
	src.peer.closeWrite()
}

// finish closes both sockets, upstream first, and lets the session's
// goroutine go on.
func (l *evLoop) finish(s *loopSession) {
	if s.finished {
		return
	}
	s.finished = true
	s.u.close()
	s.c.close()
	l.sessions.Add(-1)
	close(s.done)
}

// abort ends the session as closing both of its connections would.
func (l *evLoop) abort(s *loopSession) {
	if s.finished {
		return
	}
	if s.ended == 0 {
		s.first, s.err = sideUpstream, net.ErrClosed
	} else if s.linger != nil {
		s.linger.Stop()
	}
	l.finish(s)
}

// add registers a session's endpoints and serves both once: a TLS
// connection may hold records it read before the hand-over.
func (l *evLoop) add(s *loopSession) {
	for _, ep := range []*endpoint{s.c, s.u} {
		l.gen++
		if l.gen < 0 {
			l.gen = 0
		}
		ep.gen = l.gen
		for ep.fd >= len(l.eps) {
			l.eps = append(l.eps, make([]*endpoint, len(l.eps)+64)...)
		}
		l.eps[ep.fd] = ep
		ep.wantIn = true
		ep.readable = true
		ep.update()
	}
	l.ready = append(l.ready, s.c, s.u)
}

// loopLeg is one connection ready to be handed over: its socket and, for
// TLS, the connection on a detachable rawsock.Conn.
type loopLeg struct {
	conn  net.Conn
	tls   *tls.Conn
	raw   *rawsock.Conn // TLS's transport
	plain net.Conn      // a plaintext *net.TCPConn or *net.UnixConn
}

// loopLegOf says whether c can be handed to a loop, and how.
func loopLegOf(c net.Conn) (loopLeg, bool) {
	switch cc := c.(type) {
	case *tls.Conn:
		under := cc.NetConn()
		if pc, ok := under.(*prefixConn); ok && len(pc.prefix) == 0 {
			under = pc.Conn // the client's TLS, past the bytes admission read first
		}
		rc, ok := under.(*rawsock.Conn)
		if !ok || rc.Detached() || !cc.ConnectionState().HandshakeComplete {
			return loopLeg{}, false
		}
		return loopLeg{conn: c, tls: cc, raw: rc}, true
	case *net.TCPConn, *net.UnixConn:
		return loopLeg{conn: c, plain: c}, true
	}
	return loopLeg{}, false
}

// handOver takes the leg's socket away from Go for ep.
func (lg loopLeg) handOver(ep *endpoint) error {
	ep.addr = [2]net.Addr{lg.conn.LocalAddr(), lg.conn.RemoteAddr()}
	var fd int
	var err error
	if lg.tls != nil {
		ep.tls = lg.tls
		fd, err = lg.raw.Detach(ep)
	} else {
		fd, err = rawsock.DupClose(lg.plain)
	}
	if err != nil {
		return err
	}
	ep.fd = fd
	if _, ok := ep.addr[0].(*net.TCPAddr); ok {
		ep.inq = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, tcpINQ, 1) == nil
	}
	return nil
}

// relayOnLoop relays client and upstream on an event loop of pool, if both
// can be handed over; ok false means it touched neither. register, when
// not nil, runs the hand-over (a few system calls) and keeps the function
// it returns, which ends the relay as closing both connections would
// (their Close no longer reaches the sockets); it reports false, without
// running it, when the connections are closed already. The Server runs it
// under the lock its Close takes, so that Close never closes a connection
// half handed over.
func relayOnLoop(client, upstream net.Conn, counters *byteCounters, pool *loopPool, register func(handOver func() (stop func())) bool) (relayStats, bool) {
	cl, ok1 := loopLegOf(client)
	ul, ok2 := loopLegOf(upstream)
	if !ok1 || !ok2 {
		return relayStats{}, false
	}
	if pool == nil {
		pool = sharedLoops
	}
	if pool.start() != nil {
		return relayStats{}, false
	}
	l := pool.pick()
	s := &loopSession{l: l, counters: counters, done: make(chan struct{})}
	s.c = &endpoint{l: l, s: s, side: sideClient, fd: -1}
	s.u = &endpoint{l: l, s: s, side: sideUpstream, fd: -1}
	s.c.peer, s.u.peer = s.u, s.c
	var failed *relayStats
	handOver := func() func() {
		if err := ul.handOver(s.u); err != nil {
			client.Close()
			upstream.Close()
			failed = &relayStats{ClosedBy: sideUpstream, Err: err, Relay: "loop"}
			return func() {}
		}
		if err := cl.handOver(s.c); err != nil {
			unix.Close(s.u.fd)
			client.Close()
			failed = &relayStats{ClosedBy: sideClient, Err: err, Relay: "loop"}
			return func() {}
		}
		l.sessions.Add(1)
		loopHandOvers.Add(1)
		l.post(func() { l.add(s) })
		return func() { l.post(func() { l.abort(s) }) }
	}
	if register == nil {
		handOver()
	} else if !register(handOver) {
		client.Close()
		upstream.Close()
		return relayStats{ClosedBy: sideUpstream, Err: net.ErrClosed, Relay: "loop"}, true
	}
	if failed != nil {
		return *failed, true
	}
	<-s.done
	return relayStats{
		ClientToUpstream: s.toUpstream,
		UpstreamToClient: s.toClient,
		ClosedBy:         s.first,
		Err:              s.err,
		Relay:            "loop",
	}, true
}
