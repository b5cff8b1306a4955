package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
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

// The Loop engine, Linux's default. Once a session is authenticated, both
// of its sockets leave Go's poller (handover_linux.go) for one loop that
// owns them: a goroutine serving an epoll instance of its own, with
// level-triggered sockets. It reads and writes with non-blocking system
// calls the Go scheduler never hears of, so relaying a message costs no
// goroutine wake-up and no handoff between threads. TLS stays crypto/tls:
// a handed-over rawsock.Conn reads from and writes to its endpoint here
// (Read returns what the socket holds now, or a temporary error that
// crypto/tls passes up; Write never fails part-way through a record: what
// the socket does not take waits in the endpoint's pending output, within
// the bound of bound.go). The session's goroutine waits for the end and
// reports it. How the loop waits for events is wait's story.

// loopBudget bounds how much one source may relay per wake-up before the
// loop serves the others: one busy session cannot starve the rest.
const loopBudget = 256 << 10

// loopMaxEvents is how many events one epoll_wait returns at most.
const loopMaxEvents = 256

// errWouldBlock is what an endpoint's Read returns when the socket holds
// nothing now, or when its side may not be read now (bound.go). crypto/tls
// keeps a temporary net.Error from its transport out of its sticky error
// state and returns it, so the loop can come back later.
var errWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "relay: would block" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

// errLoopsStopped says why a session went to the Goroutine engine after
// Pool.Stop.
var errLoopsStopped = errors.New("relay: the event loops are stopped")

// loopPool is a set of event loops; each session goes to the loop with the
// fewest sessions. Loops start with the first session they get.
type loopPool struct {
	loops []*evLoop
	once  sync.Once
	err   error
	down  atomic.Bool // stop was called: sessions go to the Goroutine engine
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
	return &loopPool{loops: make([]*evLoop, n)}
}

// start opens every loop's epoll and eventfd descriptors and starts its
// goroutine, once.
func (p *loopPool) start(linger time.Duration) error {
	if p.down.Load() {
		return errLoopsStopped
	}
	p.once.Do(func() {
		for i := range p.loops {
			l, err := newEvLoop(p, linger)
			if err != nil {
				p.err = err
				return
			}
			p.loops[i] = l
			go l.run()
		}
	})
	if p.err == nil && p.down.Load() {
		return errLoopsStopped
	}
	return p.err
}

// mayHold reports whether a loop may hold its processor while it waits:
// while GOMAXPROCS leaves at least one processor to the other goroutines
// when every loop holds one.
func (p *loopPool) mayHold() bool {
	return runtime.GOMAXPROCS(0) > len(p.loops)
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

// stop ends every loop that started: each takes no session from then on,
// ends the sessions it has and closes its descriptors.
func (p *loopPool) stop() {
	p.down.Store(true)
	p.once.Do(func() {}) // a pool that never started stays so
	for _, l := range p.loops {
		if l != nil {
			l.stop()
		}
	}
}

// evLoop is one event loop. Everything but the command queue and its flags
// belongs to its goroutine.
type evLoop struct {
	p          *loopPool
	epfd, evfd int
	park       *os.File        // an epoll registered with Go's poller: holds epfd while the loop is parked
	parkfd     int             // park's descriptor (park.Fd would make it blocking)
	parkRaw    syscall.RawConn // park's, to park on
	parkFn     func(fd uintptr) bool
	parked     bool // epfd is in park's epoll
	hold       bool // wait may hold the processor (mayHold, read every holdCheck waits)
	holdCheck  int
	waited     int // the events parkFn's poll returned
	sessions   atomic.Int64
	linger     time.Duration

	mu       sync.Mutex
	cmds     []func()
	stopping bool // stop was called: no session is taken any more
	closed   bool // the loop has ended: its descriptors are closed

	eps    []*endpoint // by descriptor
	live   map[*loopSession]struct{}
	gen    int32 // the last generation given to an endpoint
	buf    []byte
	ready  []*endpoint // sources to serve without waiting: budget used up, or resumed
	events []unix.EpollEvent
	quit   bool
	rd     inqReader // the receive's arguments, reused for every read
}

func newEvLoop(p *loopPool, linger time.Duration) (*evLoop, error) {
	fds := make([]int, 0, 3)
	fail := func(what string, err error) (*evLoop, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, os.NewSyscallError("relay: "+what, err)
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fail("epoll_create1", err)
	}
	fds = append(fds, epfd)
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fail("eventfd", err)
	}
	fds = append(fds, evfd)
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd), Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		return fail("epoll_ctl", err)
	}
	// The parking epoll is non-blocking, so that os.NewFile hands it to Go's
	// poller: an epoll descriptor is readable while its ready list is not
	// empty.
	parkfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fail("epoll_create1", err)
	}
	fds = append(fds, parkfd)
	if err := unix.SetNonblock(parkfd, true); err != nil {
		return fail("fcntl", err)
	}
	l := &evLoop{p: p, epfd: epfd, evfd: evfd, parkfd: parkfd, linger: linger, buf: make([]byte, bufferSize),
		events: make([]unix.EpollEvent, loopMaxEvents), live: map[*loopSession]struct{}{}}
	l.park = os.NewFile(uintptr(parkfd), "relay-park")
	if l.parkRaw, err = l.park.SyscallConn(); err != nil {
		l.park.Close()
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("relay: parking epoll: %w", err)
	}
	l.parkFn = func(uintptr) bool {
		l.waited = l.poll()
		return l.waited > 0
	}
	return l, nil
}

// post runs f on the loop's goroutine and reports whether it will; after
// the loop has ended it drops f (a linger timer that fires late).
func (l *evLoop) post(f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.queue(f)
	return true
}

// queue adds f to the commands and wakes the loop. l.mu must be held, so
// that the loop cannot close evfd meanwhile.
func (l *evLoop) queue(f func()) {
	l.cmds = append(l.cmds, f)
	var one = [8]byte{1}
	for {
		_, err := unix.Write(l.evfd, one[:])
		if err != unix.EINTR {
			return // EAGAIN: the counter is already non-zero, the loop will look
		}
	}
}

// admit takes session s unless the loop is stopping: it runs commit (the
// hand-over of both sockets) and queues the session, as one step under
// l.mu, so a loop that stops never strands a session it took. It reports
// false, without running commit, when the loop takes no more sessions.
func (l *evLoop) admit(s *loopSession, commit func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopping || l.closed {
		return false
	}
	commit()
	l.sessions.Add(1)
	l.queue(func() { l.add(s) })
	return true
}

// stop makes the loop take no more sessions, end those it has and quit.
func (l *evLoop) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopping || l.closed {
		return
	}
	l.stopping = true
	l.queue(func() {
		for s := range l.live {
			l.abort(s)
		}
		l.quit = true
	})
}

// run is the loop: wait for events (without waiting while sources are
// still ready), serve them, then the sources still ready.
func (l *evLoop) run() {
	for !l.quit {
		var n int
		if len(l.ready) == 0 {
			n = l.wait()
		} else {
			n = l.poll()
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
	l.park.Close() // and its place in Go's poller
	unix.Close(l.evfd)
	unix.Close(l.epfd)
}

// poll is epoll_pwait(2) with a zero timeout, through RawSyscall: it never
// waits, so the scheduler need not hear of it.
func (l *evLoop) poll() int {
	for {
		r, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
		if e == 0 {
			return int(r)
		}
		if e != syscall.EINTR {
			// Only a bad descriptor or address: nothing to wait for.
			panic(os.NewSyscallError("relay: epoll_pwait", e))
		}
	}
}

// holdWait is how long the loop waits for events in the kernel, holding
// its processor, before it parks in Go's poller.
const holdWait = 20 // ms

// wait returns the events of the loop's epoll, waiting for some. It waits
// in one of two ways (issue 23, docs/design/relay.md):
//
//   - holding: epoll_pwait through RawSyscall, for up to holdWait. The
//     thread sleeps in the kernel and wakes up running the loop, as
//     PgBouncer's does: one context switch per wait, and no scheduler work.
//     The runtime counts the loop as running meanwhile: the loop keeps its
//     processor (P), so it holds only while GOMAXPROCS leaves at least one
//     processor to every other goroutine (more than the pool's loops). A
//     signal the runtime sends to preempt it (every 10 ms, and to stop the
//     world for the GC) ends the wait with EINTR, and the loop's next call
//     yields.
//   - parking: after holdWait without an event, or when processors are
//     scarce, the loop's epoll joins a parking epoll that Go's poller
//     watches, and the loop goroutine parks like one reading a socket: an
//     idle proxy costs no wake-ups, and the loop gives its processor back.
//
// Blocking in epoll_pwait through Syscall, as before, cost a second thread
// half the time: the runtime's monitor (sysmon) saw a goroutine that never
// went through the scheduler, took its processor every 10 ms, then polled
// every 20 µs to 10 ms (about 3,000 wake-ups a second at 1 client), and the
// loop changed threads (1.80 voluntary context switches per transaction at
// 1 client against PgBouncer's 1.55; 0.71 against 0.2 at 8).
func (l *evLoop) wait() int {
	if l.holdCheck == 0 {
		// GOMAXPROCS takes the scheduler's lock: not at every wait.
		l.hold, l.holdCheck = l.p.mayHold(), 1024
	}
	l.holdCheck--
	if l.hold {
		if l.parked {
			l.unpark()
		}
		r, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), holdWait, 0, 0)
		switch {
		case e == syscall.EINTR:
			return 0 // the runtime wants the processor: run's next call yields
		case e != 0:
			panic(os.NewSyscallError("relay: epoll_pwait", e))
		case r > 0:
			return int(r)
		}
	}
	l.holdCheck = 0 // read GOMAXPROCS again after the park
	if !l.parked {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.epfd)}
		if err := unix.EpollCtl(l.parkfd, unix.EPOLL_CTL_ADD, l.epfd, &ev); err != nil {
			panic(os.NewSyscallError("relay: epoll_ctl", err))
		}
		l.parked = true
	}
	if err := l.parkRaw.Read(l.parkFn); err != nil {
		// Only a closed descriptor, which run never does before it ends.
		panic(fmt.Errorf("relay: parking the loop: %w", err))
	}
	return l.waited
}

// unpark takes the loop's epoll out of the parking epoll: while the loop
// holds, an event must not also wake Go's poller.
func (l *evLoop) unpark() {
	ev := unix.EpollEvent{}
	if err := unix.EpollCtl(l.parkfd, unix.EPOLL_CTL_DEL, l.epfd, &ev); err != nil {
		panic(os.NewSyscallError("relay: epoll_ctl", err))
	}
	l.parked = false
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
// direction and the destination of the other. It is the rawsock.Transport
// of a handed-over TLS connection. Once closed, nothing of it reaches a
// descriptor again: Read and Write fail with net.ErrClosed.
type endpoint struct {
	l     *evLoop
	s     *loopSession
	peer  *endpoint
	side  Side
	fd    int
	gen   int32
	tls   *tls.Conn // nil: plaintext
	addr  [2]net.Addr
	inq   bool   // TCP_INQ is on: a read says whether the socket holds more
	count *count // bytes relayed from this endpoint to its peer

	readable bool // the socket may hold data (or EOF, or an error)
	srcDone  bool // the direction from this endpoint has ended
	closed   bool

	// Output that the socket did not take yet, and what to do once it has.
	out    []byte
	outBuf *[]byte
	shutWr bool
	werr   error // the write failed or the bound was hit: no more writes

	wantIn, wantOut bool
	events          uint32 // registered with epoll (0: not registered)
}

// mayRead is the back-pressure rule (bound.go): read a side only while its
// peer has no pending output and its own is at most PauseAbove.
func (ep *endpoint) mayRead() bool {
	return len(ep.peer.out) == 0 && len(ep.out) <= PauseAbove
}

// Read is the handed-over TLS connection's transport read: what the socket
// holds now, or errWouldBlock (nothing now, or the side may not be read).
func (ep *endpoint) Read(b []byte) (int, error) {
	if ep.closed {
		return 0, net.ErrClosed
	}
	if !ep.readable || len(b) == 0 || len(ep.out) > PauseAbove {
		return 0, errWouldBlock
	}
	n, left, e := ep.l.rd.recv(ep.fd, b, ep.inq)
	switch {
	case e == syscall.EAGAIN:
		ep.readable = false
		return 0, errWouldBlock
	case e != 0:
		ep.readable = false
		return 0, ep.opError("read", os.NewSyscallError(ep.l.rd.call(ep.inq), e))
	case n == 0:
		return 0, io.EOF
	}
	ep.readable = left
	return n, nil
}

// Write is the transport write: it writes what the socket takes now and
// keeps the rest, in order, for when the socket is writable again. It
// fails only for good: a write error, or more pending than MaxPending.
func (ep *endpoint) Write(b []byte) (int, error) {
	if ep.werr != nil {
		return 0, ep.werr
	}
	if ep.closed {
		return 0, net.ErrClosed
	}
	n := len(b)
	if len(ep.out) == 0 {
		w, e := rawsock.WriteNonblock(ep.fd, b)
		b = b[w:]
		switch e {
		case 0:
			return n, nil
		case syscall.EAGAIN:
		default:
			ep.werr = ep.opError("write", os.NewSyscallError("write", e))
			return w, ep.werr
		}
		ep.outBuf = bufPool.Get().(*[]byte)
		ep.out = (*ep.outBuf)[:0]
		ep.wantOut = true
		if err := ep.update(); err != nil {
			ep.werr = err
			return w, err
		}
	}
	if len(ep.out)+len(b) > MaxPending {
		ep.werr = pendingLimitError{side: ep.side}
		return n - len(b), ep.werr
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

// update makes the epoll registration match wantIn and wantOut. It never
// ends the session itself (it may run inside crypto/tls): the caller does.
func (ep *endpoint) update() error {
	var want uint32
	if ep.wantIn {
		want |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if ep.wantOut {
		want |= unix.EPOLLOUT
	}
	if want == ep.events || ep.closed {
		return nil
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
		return ep.opError("read", os.NewSyscallError("epoll_ctl", e))
	}
	ep.events = want
	return nil
}

// setWantIn registers or unregisters the endpoint for reading; a failure
// ends the session.
func (l *evLoop) setWantIn(ep *endpoint, on bool) {
	if ep.wantIn == on || ep.closed {
		return
	}
	ep.wantIn = on
	if err := ep.update(); err != nil {
		l.end(ep, err)
	}
}

// resume reads ep again if it was paused and the back-pressure rule
// allows: at once (a TLS source may hold records crypto/tls has read), and
// whenever its socket is readable.
func (l *evLoop) resume(ep *endpoint) {
	if ep.wantIn || ep.srcDone || ep.closed || !ep.mayRead() {
		return
	}
	l.setWantIn(ep, true)
	l.ready = append(l.ready, ep)
}

// pump relays from src to its peer until src would block, ends, or has
// used its budget (then it goes on the ready list), or until the
// back-pressure rule says stop (then src waits for the pending output to
// be written).
func (l *evLoop) pump(src *endpoint) {
	if src.closed || src.srcDone {
		return
	}
	dst := src.peer
	budget := loopBudget
	for {
		if !src.mayRead() {
			l.setWantIn(src, false)
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
			src.count.add(n)
			budget -= n
		}
		if src.werr != nil {
			// crypto/tls answered something from inside Read (a
			// KeyUpdate) and src's own output failed or hit the bound.
			l.end(dst, src.werr)
			return
		}
		if err != nil {
			if err == errWouldBlock {
				if !src.mayRead() {
					l.setWantIn(src, false)
				}
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !errors.Is(err, os.ErrDeadlineExceeded) {
				// errWouldBlock, as crypto/tls passed it up.
				if !src.mayRead() {
					l.setWantIn(src, false)
				}
				return
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
// source that feeds it, and the endpoint itself, may read again.
func (l *evLoop) flush(ep *endpoint) {
	if len(ep.out) > 0 {
		w, e := rawsock.WriteNonblock(ep.fd, ep.out)
		ep.out = ep.out[w:]
		switch e {
		case 0:
		case syscall.EAGAIN:
			if len(ep.out) <= PauseAbove {
				l.resume(ep)
			}
			return
		default:
			ep.werr = ep.opError("write", os.NewSyscallError("write", e))
			l.end(ep.peer, ep.werr)
			return
		}
	}
	ep.releaseOut()
	ep.wantOut = false
	if err := ep.update(); err != nil {
		l.end(ep.peer, err)
		return
	}
	if ep.shutWr {
		ep.shutWr = false
		_ = unix.Shutdown(ep.fd, unix.SHUT_WR)
	}
	l.resume(ep.peer)
	l.resume(ep)
}

func (ep *endpoint) releaseOut() {
	if ep.outBuf != nil {
		bufPool.Put(ep.outBuf)
	}
	ep.out, ep.outBuf = nil, nil
}

// closeWrite passes a clean end on: close_notify on TLS, a FIN (once the
// pending output is out) on a plaintext socket.
func (ep *endpoint) closeWrite() {
	if ep.closed {
		return
	}
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

// Close sends what TLS sends at a close (close_notify) as far as the
// socket takes it now, and closes the descriptor; from then on nothing of
// the endpoint reaches any descriptor. It is the loop's to call.
func (ep *endpoint) Close() error {
	if ep.closed {
		return nil
	}
	if ep.tls != nil {
		_ = ep.tls.Close()
	}
	ep.closed = true
	ep.releaseOut()
	if ep.fd < 0 {
		return nil
	}
	if ep.events != 0 {
		ev := unix.EpollEvent{}
		_, _, _ = syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep.l.epfd), unix.EPOLL_CTL_DEL, uintptr(ep.fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
		ep.events = 0
	}
	if ep.fd < len(ep.l.eps) && ep.l.eps[ep.fd] == ep {
		ep.l.eps[ep.fd] = nil
	}
	fd := ep.fd
	ep.fd = -1
	return unix.Close(fd)
}

// loopSession is one session on a loop.
type loopSession struct {
	c, u     *endpoint
	ending   ending
	finished bool
	done     chan struct{}
}

// newSession returns a session of l whose endpoints count into counters.
func (l *evLoop) newSession(counters *Counters) *loopSession {
	s := &loopSession{done: make(chan struct{})}
	toUpstream, toClient := newCounts(counters)
	s.c = &endpoint{l: l, s: s, side: Client, fd: -1, count: toUpstream}
	s.u = &endpoint{l: l, s: s, side: Upstream, fd: -1, count: toClient}
	s.c.peer, s.u.peer = s.u, s.c
	return s
}

// end records that the direction from src ended with err (nil: a clean
// EOF), and does what the ending table says.
func (l *evLoop) end(src *endpoint, err error) {
	s := src.s
	if s.finished || src.srcDone {
		return
	}
	src.srcDone = true
	l.setWantIn(src, false)
	switch s.ending.end(src.side, err, l.linger, func() {
		l.post(func() {
			if !s.finished && s.ending.expire() {
				l.finish(s)
			}
		})
	}) {
	case stepCloseBoth, stepOver:
		l.finish(s)
	case stepPassEOF:
		src.peer.closeWrite()
	}
}

// finish closes both sockets, upstream first, and lets the session's
// goroutine go on.
func (l *evLoop) finish(s *loopSession) {
	if s.finished {
		return
	}
	s.finished = true
	_ = CloseUpstreamFirst(s.c, s.u)
	delete(l.live, s)
	l.sessions.Add(-1)
	close(s.done)
}

// abort ends the session as closing both of its connections would.
func (l *evLoop) abort(s *loopSession) {
	if s.finished {
		return
	}
	s.ending.abort()
	l.finish(s)
}

// add registers a session's endpoints and serves both once: a TLS
// connection may hold records it read before the hand-over.
func (l *evLoop) add(s *loopSession) {
	l.live[s] = struct{}{}
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
		ep.readable = true
	}
	for _, ep := range []*endpoint{s.c, s.u} {
		l.setWantIn(ep, true)
	}
	if !s.finished {
		l.ready = append(l.ready, s.c, s.u)
	}
}
