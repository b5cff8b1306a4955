// Package delayproxy is a user-space TCP forwarder that adds a fixed
// one-way delay to every chunk of data in each direction, for benchmarks
// on machines without the kernel's netem.
//
// Each direction has a reader that stamps every chunk it reads with
// "now + delay" and queues it, and a writer that sends each chunk once its
// time has come. Chunks keep their order, and many chunks can be in flight
// at once, so the delay adds latency without serializing bandwidth the way
// a sleep-per-read loop would. With Handshake set, a new connection also
// waits one round trip (2 × delay) before the upstream is dialled, like a
// TCP handshake over the simulated link.
package delayproxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// chunkSize is the largest read forwarded as one chunk.
const chunkSize = 64 << 10

// queueLen bounds the chunks in flight per direction (queueLen × chunkSize
// bytes at most).
const queueLen = 1024

// Proxy forwards connections accepted on a loopback port to Target.
type Proxy struct {
	// Target is the upstream address, HOST:PORT.
	Target string
	// Delay is the one-way delay added in each direction (a round trip
	// costs 2 × Delay).
	Delay time.Duration
	// Handshake makes each new connection wait one round trip before its
	// upstream is dialled, as a TCP handshake over the link would.
	Handshake bool

	l     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

// Start listens on listen (e.g. "127.0.0.1:0") and forwards every
// connection to target with the given one-way delay.
func Start(listen, target string, oneWay time.Duration, handshake bool) (*Proxy, error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{Target: target, Delay: oneWay, Handshake: handshake, l: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the listening address.
func (p *Proxy) Addr() *net.TCPAddr {
	return p.l.Addr().(*net.TCPAddr)
}

// Close stops listening, closes every forwarded connection and waits for
// the forwarding goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.done = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.l.Close()
	p.wg.Wait()
	return err
}

// accept serves the listener until it is closed.
func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// track records c so that Close can close it; it reports false once the
// proxy is closing.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

// untrack forgets c.
func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// serve dials the upstream for client and forwards both ways until both
// directions have ended.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	defer client.Close()
	if p.Handshake {
		time.Sleep(2 * p.Delay)
	}
	up, err := net.DialTimeout("tcp", p.Target, 10*time.Second)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	defer up.Close()
	var dirs sync.WaitGroup
	dirs.Add(2)
	go func() { defer dirs.Done(); p.pipe(client, up) }()
	go func() { defer dirs.Done(); p.pipe(up, client) }()
	dirs.Wait()
}

// chunk is data read at one time, due to be written at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe forwards src to dst, each chunk Delay after it was read. At the end
// of src it half-closes dst; on a write error it closes both.
func (p *Proxy) pipe(src, dst net.Conn) {
	q := make(chan chunk, queueLen)
	go readChunks(src, q, p.Delay)
	for c := range q {
		if wait := time.Until(c.due); wait > 0 {
			time.Sleep(wait)
		}
		if _, err := dst.Write(c.b); err != nil {
			src.Close()
			dst.Close()
			for range q {
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		if err := tc.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			dst.Close()
		}
	}
}

// readChunks reads src until it fails, queueing copies of what it read
// stamped with now+delay; it closes q at the end.
func readChunks(src net.Conn, q chan<- chunk, delay time.Duration) {
	defer close(q)
	buf := make([]byte, chunkSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(delay)}
		}
		if err != nil {
			return
		}
	}
}
