package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// relayBufferSize is the size of each pooled copy buffer: large enough for a
// full TLS record plus headroom, small enough for thousands of idle sessions.
const relayBufferSize = 32 * 1024

// relayLinger is how long the second direction may go on after the first has
// ended cleanly (EOF), so that a final message in flight is not cut off.
const relayLinger = 2 * time.Second

var bufPool = sync.Pool{New: func() any { b := make([]byte, relayBufferSize); return &b }}

// Side names a relay endpoint.
type Side string

const (
	// SideClient is the application's side.
	SideClient Side = "client"
	// SideUpstream is the server's side.
	SideUpstream Side = "upstream"
)

// RelayStats are the byte counters of one session's relay.
type RelayStats struct {
	// ClientToUpstream counts bytes copied from the client to the server.
	ClientToUpstream int64
	// UpstreamToClient counts bytes copied from the server to the client.
	UpstreamToClient int64
	// ClosedBy is the side whose end (EOF or error) stopped the relay.
	ClosedBy Side
	// Err is the first error other than a clean EOF, if any.
	Err error
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

// Relay copies bytes both ways between client and upstream until one side
// ends, then closes both (each exactly once). The first end wins: an error
// closes everything at once; a clean EOF half-closes the other side's write
// direction and lets the other copy finish for up to relayLinger. No message
// is parsed. counters, when non-nil, are updated while bytes flow.
func Relay(client, upstream net.Conn, counters *Counters) RelayStats {
	c := &closeOnce{Conn: client}
	u := &closeOnce{Conn: upstream}
	defer c.Close()
	defer u.Close()

	type result struct {
		from Side
		err  error
	}
	done := make(chan result, 2)
	var up, down atomic.Int64
	go func() {
		err := copyLoop(u, c, &up, counters.clientToUpstream())
		done <- result{SideClient, err}
	}()
	go func() {
		err := copyLoop(c, u, &down, counters.upstreamToClient())
		done <- result{SideUpstream, err}
	}()

	first := <-done
	stats := RelayStats{ClosedBy: first.from, Err: first.err}
	if first.err == nil {
		// Clean EOF from first.from: pass the half-close on, then wait a
		// little for the other direction to drain.
		var dst net.Conn = u
		if first.from == SideUpstream {
			dst = c
		}
		if cw, ok := dst.(*closeOnce).Conn.(closeWriter); ok {
			_ = cw.CloseWrite()
		}
		select {
		case second := <-done:
			if stats.Err == nil && second.err != nil && !isClosedErr(second.err) {
				stats.Err = second.err
			}
		case <-time.After(relayLinger):
			c.Close()
			u.Close()
			<-done
		}
	} else {
		c.Close()
		u.Close()
		<-done
	}
	stats.ClientToUpstream = up.Load()
	stats.UpstreamToClient = down.Load()
	return stats
}

// copyLoop copies src to dst with a pooled buffer. It returns nil on a clean
// EOF from src, else the first error.
func copyLoop(dst, src net.Conn, n *atomic.Int64, total *atomic.Int64) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n.Add(int64(nw))
			if total != nil {
				total.Add(int64(nw))
			}
			if werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}

// isClosedErr reports errors caused by our own Close.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed)
}

// Counters are process-wide byte totals, kept for metrics.
type Counters struct {
	// ClientToUpstream counts bytes sent to servers.
	ClientToUpstream atomic.Int64
	// UpstreamToClient counts bytes sent to clients.
	UpstreamToClient atomic.Int64
}

func (c *Counters) clientToUpstream() *atomic.Int64 {
	if c == nil {
		return nil
	}
	return &c.ClientToUpstream
}

func (c *Counters) upstreamToClient() *atomic.Int64 {
	if c == nil {
		return nil
	}
	return &c.UpstreamToClient
}
