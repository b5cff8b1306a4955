package relay

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
)

// bystanders are socket pairs that stand where a descriptor the relay gave
// back was: no byte may ever reach them (a byte written to either end of a
// pair is readable at the other).
type bystanders struct {
	pairs [][2]int
}

// holds reports whether a bystander sits on fd.
func (b *bystanders) holds(fd int) bool {
	for _, p := range b.pairs {
		if p[0] == fd || p[1] == fd {
			return true
		}
	}
	return false
}

// occupy opens socket pairs until one of them sits on fd. New descriptors
// take the lowest free numbers, so fd must come soon after it was given
// back; when it does not, something else holds it, and the test says so.
func (b *bystanders) occupy(t *testing.T, fd int) {
	t.Helper()
	for range 256 {
		if b.holds(fd) {
			return
		}
		p, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		b.pairs = append(b.pairs, p)
	}
	b.close()
	target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	t.Fatalf("descriptor %d was not free again after the hand-over gave it back: it is %s", fd, target)
}

// check fails the test if any bystander received a byte, and closes them.
func (b *bystanders) check(t *testing.T) {
	t.Helper()
	buf := make([]byte, 64)
	for _, p := range b.pairs {
		for i, fd := range p {
			n, err := syscall.Read(fd, buf)
			if n > 0 {
				t.Errorf("%d bytes reached another socket (descriptors %d and %d, one of them given back by the relay): %q", n, p[0], p[1], buf[:n])
			} else if err != syscall.EAGAIN {
				t.Errorf("bystander on descriptor %d: read %d, %v; want nothing (EAGAIN)", p[i], n, err)
			}
		}
	}
	b.close()
}

func (b *bystanders) close() {
	for _, p := range b.pairs {
		syscall.Close(p[0])
		syscall.Close(p[1])
	}
	b.pairs = nil
}

// TestHandOverFailuresLeaveNothingToUndo forces every way a loop hand-over
// can fail after it started, and checks that the session goes on (on the
// Goroutine engine, on its untouched connections) or ends as closed, and
// that the descriptors the hand-over gave back are never written: sockets
// opened on their numbers right after receive nothing, through the session
// and its close (the close_notify of a TLS leg included).
func TestHandOverFailuresLeaveNothingToUndo(t *testing.T) {
	emfile := os.NewSyscallError("fcntl", syscall.EMFILE)
	for _, tc := range []struct {
		name string
		// fail says which Take call (1: upstream, 2: client) fails.
		fail map[int]bool
		// stopAfter stops the pool after that Take call succeeded.
		stopAfter int
		// refuse: the Register reports the session as closing.
		refuse   bool
		fallback string // in Stats.Fallback
	}{
		{name: "upstream leg fails", fail: map[int]bool{1: true}, fallback: "claiming the upstream socket"},
		{name: "client leg fails", fail: map[int]bool{2: true}, fallback: "claiming the client socket"},
		{name: "both legs fail", fail: map[int]bool{1: true, 2: true}, fallback: "claiming the upstream socket"},
		{name: "pool stops between the claims and the commit", stopAfter: 2, fallback: errLoopsStopped.Error()},
		{name: "session closed before the commit", refuse: true},
	} {
		for _, l := range [][2]legKind{{legTCP, legTLS}, {legTLS, legTLS}} {
			t.Run(tc.name+"/"+legName(l), func(t *testing.T) {
				var p *Pool
				var mu sync.Mutex
				var freed []int // descriptors the hand-over claimed: given back on failure
				calls := 0
				o := Options{take: func(c net.Conn) (*rawsock.Claim, error) {
					calls++
					if tc.fail[calls] {
						return nil, emfile
					}
					cl, err := rawsock.Take(c)
					if err == nil {
						mu.Lock()
						freed = append(freed, cl.FD())
						mu.Unlock()
					}
					if calls == tc.stopAfter {
						p.Stop()
					}
					return cl, err
				}}
				p = newTestPool(t, Loop, o)
				if err := p.loops.start(p.opts.Linger); err != nil {
					t.Fatal(err)
				}
				ln := rigListener(t)
				s := &session{done: make(chan Stats, 1), finished: make(chan struct{})}
				s.app, s.pc = connectLeg(t, ln, l[0], false)
				s.server, s.pu = connectLeg(t, ln, l[1], true)
				var by bystanders
				handOvers := 0
				register := func(handOver func() func()) bool {
					handOvers++
					if tc.refuse {
						return false
					}
					if stop := handOver(); stop != nil {
						t.Error("the loop took a session whose hand-over failed")
						stop()
					}
					return true
				}
				go func() {
					defer close(s.finished)
					s.done <- p.Relay(s.pc, s.pu, &s.counters, register)
				}()
				t.Cleanup(func() { s.close(t) })
				if tc.refuse {
					st := s.wait(t)
					if st.Engine != Loop || !errors.Is(st.Err, net.ErrClosed) {
						t.Errorf("refused hand-over: %+v, want the connections closed", st)
					}
				} else {
					// The session goes on, on the Goroutine engine.
					echoThrough(t, s, []byte("after the failed hand-over"))
				}
				mu.Lock()
				given := append([]int(nil), freed...)
				mu.Unlock()
				for _, fd := range given {
					by.occupy(t, fd)
				}
				if !tc.refuse {
					echoThrough(t, s, []byte("with bystanders on the freed numbers"))
				}
				// The end of the session: every close, TLS's close_notify
				// included, goes where it belongs.
				s.app.Close()
				s.server.Close()
				st := s.wait(t)
				s.pc.Close()
				s.pu.Close()
				time.Sleep(50 * time.Millisecond)
				by.check(t)
				if tc.refuse {
					return
				}
				if st.Engine != Goroutine || st.Fallback == nil || !strings.Contains(st.Fallback.Error(), tc.fallback) {
					t.Errorf("engine %q, fallback %v; want goroutine, because of %q", st.Engine, st.Fallback, tc.fallback)
				}
				if len(tc.fail) > 0 && !errors.Is(st.Fallback, syscall.EMFILE) {
					t.Errorf("fallback %v does not wrap the claim's error", st.Fallback)
				}
				if handOvers > 1 {
					t.Errorf("the hand-over ran %d times", handOvers)
				}
			})
		}
	}
}

// TestHandOverAtTheDescriptorLimit: with one descriptor left under
// RLIMIT_NOFILE, the real rawsock.Take claims the upstream socket and the
// client's claim fails with EMFILE: the session goes on the Goroutine
// engine (which needs no descriptor) and the freed number is never
// written.
func TestHandOverAtTheDescriptorLimit(t *testing.T) {
	p := newTestPool(t, Loop, Options{})
	warm := startSession(t, p, legTCP, legTLS) // the loops' own descriptors are open
	echoThrough(t, warm, []byte("warm"))
	ln := rigListener(t)
	s := &session{done: make(chan Stats, 1), finished: make(chan struct{})}
	s.app, s.pc = connectLeg(t, ln, legTCP, false)
	s.server, s.pu = connectLeg(t, ln, legTLS, true)

	// Fill every free number up to the highest open one, leaving exactly
	// one free under the limit.
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	top := highestFD(t)
	var fill []int
	for {
		fd, err := syscall.Dup(0)
		if err != nil {
			t.Fatal(err)
		}
		if fd > top {
			syscall.Close(fd)
			break
		}
		fill = append(fill, fd)
	}
	lim := old
	lim.Cur = uint64(top + 2) // numbers 0..top used, top+1 free
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
			for _, fd := range fill {
				syscall.Close(fd)
			}
		}
	}
	t.Cleanup(restore)

	s.start(p)
	t.Cleanup(func() { s.close(t) })
	echoThrough(t, s, []byte("at the limit"))
	restore()
	var by bystanders
	by.occupy(t, top+1)
	echoThrough(t, s, []byte("with a bystander on the freed number"))
	s.app.Close()
	s.server.Close()
	st := s.wait(t)
	s.pc.Close()
	s.pu.Close()
	time.Sleep(50 * time.Millisecond)
	by.check(t)
	if st.Engine != Goroutine || !errors.Is(st.Fallback, syscall.EMFILE) {
		t.Errorf("engine %q, fallback %v; want goroutine after EMFILE", st.Engine, st.Fallback)
	}
}

// highestFD is the highest descriptor number open in this process.
func highestFD(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	top := -1
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > top {
			top = n
		}
	}
	if top < 0 {
		t.Fatal(fmt.Errorf("no descriptor listed in /proc/self/fd"))
	}
	return top
}
