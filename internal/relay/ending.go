package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ending is the end-of-session table, the one every engine follows. Each
// direction ends once, with a clean EOF (nil) or an error, and the first
// end decides:
//
//	first end   error   → close both at once (stepCloseBoth)
//	first end   EOF     → pass the half-close on to the other side and let
//	                      the other direction go on for the linger
//	                      (stepPassEOF); when the linger runs out first,
//	                      close both (expire)
//	second end  any     → the session is over (stepOver); its error is
//	                      kept if the first end was clean, it came before
//	                      the linger ran out and our own close did not
//	                      cause it
//
// An engine keeps one ending per session and calls it from one goroutine
// at a time (the goroutine engines under a mutex, the loop on its own
// goroutine).
type ending struct {
	ended   int  // directions that have ended
	first   Side // the side whose end came first
	err     error
	expired bool // the linger ran out before the second end
	timer   *time.Timer
}

// step is what an engine does after ending.end.
type step uint8

const (
	// stepCloseBoth: close both connections now.
	stepCloseBoth step = iota + 1
	// stepPassEOF: half-close the write direction of the other side (a
	// FIN, or close_notify on TLS); the linger timer runs.
	stepPassEOF
	// stepOver: both directions have ended; the linger timer is stopped.
	stepOver
)

// end records that the direction from side from ended with err (nil: a
// clean EOF). For a clean first end it starts the linger timer, which
// calls onExpiry after linger.
func (e *ending) end(from Side, err error, linger time.Duration, onExpiry func()) step {
	e.ended++
	if e.ended == 2 {
		if e.timer != nil {
			e.timer.Stop()
		}
		if e.err == nil && err != nil && !e.expired && !isClosedErr(err) {
			e.err = err
		}
		return stepOver
	}
	e.first, e.err = from, err
	if err != nil {
		return stepCloseBoth
	}
	e.timer = time.AfterFunc(linger, onExpiry)
	return stepPassEOF
}

// expire is the linger timer's: it reports whether the session must be
// closed now (the second direction has not ended in time).
func (e *ending) expire() bool {
	if e.ended >= 2 {
		return false
	}
	e.expired = true
	return true
}

// abort records a session ended from outside (the proxy closing it): as if
// the upstream had been closed, unless a direction ended before.
func (e *ending) abort() {
	if e.timer != nil {
		e.timer.Stop()
	}
	if e.ended == 0 {
		e.first, e.err = Upstream, net.ErrClosed
	}
}

// stats fills in how the session ended.
func (e *ending) stats(st *Stats) {
	st.ClosedBy, st.Err = e.first, e.err
}

// CloseUpstreamFirst closes a session's two connections, the upstream
// first: a Goroutine-engine copy from a plaintext client socket may be
// inside its read callback writing to the upstream, and closing the client
// waits for that write to end (see copySocket), so the upstream must go
// first. The proxy closes every session this way; it returns the client's
// Close error.
func CloseUpstreamFirst(client, upstream io.Closer) error {
	_ = upstream.Close()
	return client.Close()
}

// count is one direction's byte count: the session's own, and the shared
// total it adds to (nil: none).
type count struct {
	n     atomic.Int64
	total *atomic.Int64
}

// add counts n bytes written.
func (c *count) add(n int) {
	if n <= 0 {
		return
	}
	c.n.Add(int64(n))
	if c.total != nil {
		c.total.Add(int64(n))
	}
}

// newCounts returns the two directions' counts of a session.
func newCounts(c *Counters) (toUpstream, toClient *count) {
	toUpstream, toClient = &count{}, &count{}
	if c != nil {
		toUpstream.total, toClient.total = &c.ClientToUpstream, &c.UpstreamToClient
	}
	return toUpstream, toClient
}

// closeOnce closes a connection exactly once.
type closeOnce struct {
	net.Conn
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Conn.Close() })
	return c.err
}

// closeWriter is implemented by *net.TCPConn, *net.UnixConn and *tls.Conn.
type closeWriter interface{ CloseWrite() error }

// isClosedErr reports errors caused by our own Close.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed)
}
