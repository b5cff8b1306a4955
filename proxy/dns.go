package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// ResolveFunc resolves an upstream host name to its addresses
// (Route.Resolve).
type ResolveFunc func(ctx context.Context, host string) ([]netip.Addr, error)

// upstreamAt is where a session's upstream connection goes.
type upstreamAt struct {
	route *Route
	host  int
	ip    netip.Addr
}

// upstreamChosen records the upstream connection a session relays to, for
// the DNS recheck.
func (s *Server) upstreamChosen(c net.Conn, r *Route, host int, up net.Conn) {
	ip, ok := remoteIP(up)
	if !ok || r.DNSRecheck <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, tracked := s.conns[c]; tracked {
		s.upstreamAt[c] = upstreamAt{route: r, host: host, ip: ip}
	}
}

// remoteIP is a connection's peer address.
func remoteIP(c net.Conn) (netip.Addr, bool) { return addrOf(c.RemoteAddr()) }

// hostName returns the name of a host:port when it is a name, not an
// address literal.
func hostName(addr string) (string, bool) {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		h = addr
	}
	if _, err := netip.ParseAddr(h); err == nil || h == "" {
		return "", false
	}
	return h, true
}

// startDNS runs the DNS recheck of each route that asks for it: every
// Route.DNSRecheck, each host given by name is resolved again, and the
// sessions and pre-dialled connections held to an address the name no
// longer resolves to are ended (a failed lookup changes nothing). Managed
// endpoints fail over by moving their name (RDS Multi-AZ, Azure), and a
// session left on the old address talks to a server that is no longer
// the one the name stands for.
func (s *Server) startDNS(routes []*Route) {
	for _, r := range routes {
		if r.DNSRecheck <= 0 || r.dnsStop != nil {
			continue
		}
		named := false
		for _, h := range r.Hosts {
			_, ok := hostName(h.Addr)
			named = named || ok
		}
		if !named {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.dnsStop = cancel
		go s.dnsLoop(ctx, r)
	}
}

// stopDNS ends the DNS rechecks of routes.
func stopDNS(routes []*Route) {
	for _, r := range routes {
		if r.dnsStop != nil {
			r.dnsStop()
		}
	}
}

// dnsLoop rechecks r's host names until ctx ends.
func (s *Server) dnsLoop(ctx context.Context, r *Route) {
	resolve := r.Resolve
	if resolve == nil {
		resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	t := time.NewTicker(r.DNSRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for hi, h := range r.Hosts {
			name, ok := hostName(h.Addr)
			if !ok {
				continue
			}
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			addrs, err := resolve(lctx, name)
			cancel()
			if err != nil || len(addrs) == 0 {
				continue // a failed lookup changes nothing
			}
			current := map[netip.Addr]bool{}
			for _, a := range addrs {
				current[a.Unmap()] = true
			}
			s.endStale(r, hi, current)
		}
	}
}

// endStale ends r's sessions on host hi, and drops its pre-dialled
// connections, whose address is not in current.
func (s *Server) endStale(r *Route, hi int, current map[netip.Addr]bool) {
	var closers []func() error
	var old []string
	s.mu.Lock()
	for c, at := range s.upstreamAt {
		if at.route == r && at.host == hi && !current[at.ip] {
			if cl := s.conns[c]; cl != nil {
				closers = append(closers, cl.Close)
				old = append(old, at.ip.String())
			}
			delete(s.upstreamAt, c)
		}
	}
	s.mu.Unlock()
	if r.pool != nil {
		r.pool.drop(func(c net.Conn) bool {
			host := 0
			if hc, ok := c.(*hostConn); ok {
				host = hc.host
			}
			ip, ok := remoteIP(c)
			return host == hi && ok && !current[ip]
		})
	}
	if len(closers) == 0 {
		return
	}
	s.log.Warn("upstream name now resolves to other addresses: ending the sessions held to the old ones",
		"route", r.Name, "host", r.Hosts[hi].Addr, "sessions", len(closers), "old", old)
	for _, cl := range closers {
		_ = cl()
	}
}
