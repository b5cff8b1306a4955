package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
)

// Server runs every route of a Config.
type Server struct {
	cfg      Config
	log      *slog.Logger
	counters Counters

	mu        sync.Mutex
	listeners []*listener
	conns     map[net.Conn]struct{}
	closed    bool
	draining  bool
	wg        sync.WaitGroup
}

type listener struct {
	net.Listener
	route *Route
}

// New validates cfg and returns a Server; nothing is opened yet.
func New(cfg Config) (*Server, error) {
	if len(cfg.Routes) == 0 {
		return nil, errors.New("proxy: no route configured")
	}
	routes := make([]Route, len(cfg.Routes))
	copy(routes, cfg.Routes)
	for i := range routes {
		if routes[i].Name == "" {
			routes[i].Name = routes[i].UpstreamAddr
		}
		if err := routes[i].validate(); err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
	}
	cfg.Routes = routes
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server{cfg: cfg, log: log, conns: map[net.Conn]struct{}{}}, nil
}

// Counters returns the process-wide byte counters.
func (s *Server) Counters() *Counters { return &s.counters }

// Listen opens every route's listeners. On error, those already opened are
// closed again.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.cfg.Routes {
		r := &s.cfg.Routes[i]
		for _, l := range r.Listeners {
			s.listeners = append(s.listeners, &listener{Listener: l, route: r})
		}
		for _, addr := range r.Listen {
			la, err := ParseListenAddr(addr)
			if err != nil {
				for _, l := range s.listeners {
					l.Close()
				}
				s.listeners = nil
				return fmt.Errorf("proxy: route %s: %w", r.Name, err)
			}
			l, stale, err := listen(la)
			if stale {
				s.log.Warn("removed a stale socket file left by a process that did not shut down", "route", r.Name, "path", la.Address)
			}
			if err == nil && r.Auth == AuthRelay && !isLoopback(l.Addr()) {
				// A host name such as localhost resolved to an address
				// other machines reach.
				if rerr := r.relayExposure([]string{addr + " (bound to " + l.Addr().String() + ")"}); rerr != nil {
					l.Close()
					err = rerr
				}
			}
			if err != nil {
				for _, l := range s.listeners {
					l.Close()
				}
				s.listeners = nil
				return fmt.Errorf("proxy: route %s: listening on %s: %w", r.Name, addr, err)
			}
			s.listeners = append(s.listeners, &listener{Listener: l, route: r})
		}
	}
	return nil
}

// Addrs returns the addresses actually listened on (useful with port 0).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]net.Addr, 0, len(s.listeners))
	for _, l := range s.listeners {
		out = append(out, l.Addr())
	}
	return out
}

// Serve accepts on every listener until Close or ctx ends. Listen must have
// been called. It returns nil after Close.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ls := append([]*listener(nil), s.listeners...)
	s.mu.Unlock()
	if len(ls) == 0 {
		return errors.New("proxy: Serve called before Listen")
	}
	for _, l := range ls {
		s.log.Info("listening", "route", l.route.Name, "addr", l.Addr().String(), "upstream", l.route.UpstreamAddr, "client_tls", string(l.route.ClientTLS))
		if !isLoopback(l.Addr()) {
			s.log.Warn("listening on a non-loopback address: anyone who reaches it reaches the upstream", "addr", l.Addr().String())
		}
	}
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func(l *listener) { errc <- s.acceptLoop(ctx, l) }(l)
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	var first error
	for range ls {
		if err := <-errc; err != nil && first == nil {
			first = err
			s.Close()
		}
	}
	return first
}

func (s *Server) acceptLoop(ctx context.Context, l *listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed || s.draining
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("proxy: accepting on %s: %w", l.Addr(), err)
		}
		if !s.track(conn) {
			conn.Close()
			return nil
		}
		go func() {
			defer s.untrack(conn)
			s.handle(ctx, l.route, conn)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Close stops accepting and closes every client connection (which ends its
// session and upstream connection). It waits for the sessions to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		for _, l := range s.listeners {
			l.Close()
		}
		for c := range s.conns {
			c.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Shutdown stops accepting and waits for running sessions to finish until
// ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for _, l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.Close()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// isLoopback reports a unix socket or a loopback TCP address; anything else
// counts as reachable from elsewhere.
func isLoopback(a net.Addr) bool {
	switch ta := a.(type) {
	case *net.UnixAddr:
		return true
	case *net.TCPAddr:
		return ta.IP.IsLoopback()
	}
	return false
}
