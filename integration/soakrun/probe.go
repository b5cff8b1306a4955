package soakrun

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// serverProbe asks the soak's PostgreSQL directly, without the proxy, for
// the first step of every upstream connection (an SSLRequest answered 'S'),
// twice a second, and records the slowest answer. When clients fail on an
// upstream timeout, it tells a server that stopped answering (the machine
// stalled it) from a proxy that stopped dialling.
type serverProbe struct {
	addr string

	mu      sync.Mutex
	probes  int
	failed  int
	slowest time.Duration
	at      time.Duration // since start, of the slowest
}

// run probes until ctx ends.
func (p *serverProbe) run(ctx context.Context, start time.Time) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t0 := time.Now()
		err := sslRequestAnswered(ctx, p.addr)
		took := time.Since(t0)
		p.mu.Lock()
		p.probes++
		if err != nil {
			p.failed++
		}
		if took > p.slowest {
			p.slowest, p.at = took, t0.Sub(start)
		}
		p.mu.Unlock()
	}
}

// summary returns the probe figures.
func (p *serverProbe) summary() (probes, failed int, slowest, at time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.probes, p.failed, p.slowest, p.at
}

// sslRequestAnswered connects to addr, sends an SSLRequest and reads the
// one-byte answer, within 30 s.
func sslRequestAnswered(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], 80877103)
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	var answer [1]byte
	_, err = io.ReadFull(c, answer[:])
	return err
}
