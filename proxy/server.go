package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/relay"
)

// Server runs every route of a Config.
type Server struct {
	cfg Config
	log *slog.Logger
	obs Observer

	mu        sync.Mutex
	routes    []*Route               // in service, in configuration order
	states    map[string]*routeState // by route name; kept across reloads
	listeners []*listener
	conns     map[net.Conn]io.Closer // a client connection → what closes its session
	// upstreamAt is where each relayed session's upstream goes, for the
	// DNS recheck (routes with DNSRecheck only).
	upstreamAt map[net.Conn]upstreamAt
	serveCtx   context.Context
	cancel     context.CancelFunc // ends serveCtx: sessions' dials and logins stop at Close
	serving    bool
	loopErr    chan error
	closed     bool
	draining   bool
	wg         sync.WaitGroup // sessions
	loops      sync.WaitGroup // accept loops
	relay      *relay.Pool    // relays authenticated sessions (internal/relay)
	startup    *startupGate   // bounds the connections before admission
}

// routeState is what a route keeps across reloads: its live counters.
type routeState struct {
	active       atomic.Int64 // accepted connections still open
	admitted     atomic.Int64 // sessions past admission (what max_connections limits)
	starting     atomic.Int64 // connections before admission (what max_startup_connections limits)
	startupWaits atomic.Int64 // accepts that waited for a startup slot
	counters     relay.Counters
}

// admit takes a session slot when the route has one free.
func (st *routeState) admit(max int) bool {
	if n := st.admitted.Add(1); max > 0 && n > int64(max) {
		st.admitted.Add(-1)
		return false
	}
	return true
}

type listener struct {
	net.Listener
	key     string // the configured listen address; "" for Route.Listeners
	route   *Route // guarded by Server.mu; replaced by Reload
	retired bool   // guarded by Server.mu; closed by Reload
	done    chan struct{}
	once    sync.Once
}

// shut closes the listener and ends its accept loop's wait for a startup
// slot.
func (l *listener) shut() {
	l.once.Do(func() { close(l.done) })
	l.Close()
}

// New validates cfg and returns a Server; nothing is opened yet.
func New(cfg Config) (*Server, error) {
	routes, err := validateRoutes(cfg.Routes)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	pool, err := relay.NewPool(relay.Options{Engine: relay.Engine(cfg.Relay), Loops: cfg.RelayLoops, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	maxStartup := cfg.MaxStartupConnections
	switch {
	case maxStartup < 0:
		return nil, fmt.Errorf("proxy: max_startup_connections %d: want 0 (from the open-files limit) or more", maxStartup)
	case maxStartup == 0:
		maxStartup = DefaultMaxStartupConnections()
	}
	cfg.Routes = nil
	return &Server{cfg: cfg, log: log, obs: obs, routes: routes, states: map[string]*routeState{},
		conns: map[net.Conn]io.Closer{}, upstreamAt: map[net.Conn]upstreamAt{}, loopErr: make(chan error, 1), relay: pool,
		startup: newStartupGate(maxStartup, log)}, nil
}

// validateRoutes copies and validates routes; names must be unique.
func validateRoutes(in []Route) ([]*Route, error) {
	if len(in) == 0 {
		return nil, errors.New("proxy: no route configured")
	}
	seen := map[string]bool{}
	out := make([]*Route, len(in))
	for i := range in {
		r := in[i]
		if r.Name == "" {
			r.Name = r.UpstreamAddr
		}
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		if seen[r.Name] {
			return nil, fmt.Errorf("proxy: two routes are named %q", r.Name)
		}
		seen[r.Name] = true
		out[i] = &r
	}
	return out, nil
}

// state returns the route's state, made on first use. s.mu must be held.
func (s *Server) state(name string) *routeState {
	st := s.states[name]
	if st == nil {
		st = &routeState{}
		s.states[name] = st
	}
	return st
}

// Listen opens every route's listeners. On error, those already opened are
// closed again.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, err := s.open(s.routes, nil)
	if err != nil {
		return err
	}
	s.listeners = ls
	s.startPools(s.routes)
	s.startDNS(s.routes)
	s.obs.RoutesChanged(routeNames(s.routes))
	return nil
}

// startPools starts the pre-dial pools of routes that ask for one.
func (s *Server) startPools(routes []*Route) {
	for _, r := range routes {
		if r.Prewarm > 0 && r.pool == nil {
			r := r
			dial := func(ctx context.Context) (net.Conn, error) { return s.dialUpstream(ctx, r) }
			if len(r.Hosts) > 1 {
				// A host list: pre-dial the host that last served a
				// session with the wanted role.
				dial = func(ctx context.Context) (net.Conn, error) { return s.dialPreferred(ctx, r) }
			}
			r.pool = newPrewarmPool(r, dial)
			r.pool.log = s.log.With("route", r.Name)
			r.pool.start()
		}
	}
}

// stopPools closes the pre-dial pools of routes (in the background: a
// pool may be waiting for a dial to end).
func stopPools(routes []*Route) {
	for _, r := range routes {
		if r.pool != nil {
			go r.pool.close()
		}
	}
}

// open opens the listeners of routes, reusing those of reuse whose listen
// address is unchanged (their route is switched to the new one). On error,
// what it opened is closed and reuse is left as it was.
func (s *Server) open(routes []*Route, reuse []*listener) ([]*listener, error) {
	var opened, out []*listener
	fail := func(err error) ([]*listener, error) {
		for _, l := range opened {
			l.shut()
		}
		return nil, err
	}
	byKey := map[string]*listener{}
	byListener := map[net.Listener]*listener{}
	for _, l := range reuse {
		if l.retired {
			continue
		}
		if l.key != "" {
			byKey[l.key] = l
		} else {
			byListener[l.Listener] = l
		}
	}
	kept := map[*listener]*Route{}
	for _, r := range routes {
		for _, l := range r.Listeners {
			if old := byListener[l]; old != nil {
				if _, dup := kept[old]; !dup {
					kept[old] = r
					out = append(out, old)
					continue
				}
			}
			nl := &listener{Listener: l, route: r, done: make(chan struct{})}
			opened = append(opened, nl)
			out = append(out, nl)
		}
		for _, addr := range r.Listen {
			if old := byKey[addr]; old != nil {
				if _, dup := kept[old]; !dup {
					if r.Auth == AuthRelay && !isLoopback(old.Addr()) {
						if err := r.relayExposure([]string{addr + " (bound to " + old.Addr().String() + ")"}); err != nil {
							return fail(err)
						}
					}
					kept[old] = r
					out = append(out, old)
					continue
				}
			}
			la, err := ParseListenAddr(addr)
			if err != nil {
				return fail(fmt.Errorf("proxy: route %s: %w", r.Name, err))
			}
			la.SocketMode, la.SocketGroup = r.UnixSocketMode, r.UnixSocketGroup
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
				return fail(fmt.Errorf("proxy: route %s: listening on %s: %w", r.Name, addr, err))
			}
			nl := &listener{Listener: l, key: addr, route: r, done: make(chan struct{})}
			opened = append(opened, nl)
			out = append(out, nl)
		}
	}
	for l, r := range kept {
		l.route = r
	}
	return out, nil
}

func routeNames(routes []*Route) []string {
	names := make([]string, len(routes))
	for i, r := range routes {
		names[i] = r.Name
	}
	return names
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

// Serve accepts on every listener until Close or ctx ends, including the
// listeners that later reloads add. Listen must have been called. It
// returns nil after Close, or the first accept error (after closing all).
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if len(s.listeners) == 0 {
		s.mu.Unlock()
		return errors.New("proxy: Serve called before Listen")
	}
	s.serveCtx, s.cancel = context.WithCancel(ctx)
	s.serving = true
	for _, l := range s.listeners {
		s.startAccept(l)
	}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	done := make(chan struct{})
	go func() { s.loops.Wait(); close(done) }()
	select {
	case err := <-s.loopErr:
		s.Close()
		<-done
		return err
	case <-done:
		select {
		case err := <-s.loopErr:
			return err
		default:
			return nil
		}
	}
}

// startAccept logs a listener and runs its accept loop. s.mu must be held.
func (s *Server) startAccept(l *listener) {
	s.log.Info("listening", "route", l.route.Name, "addr", l.Addr().String(), "upstream", l.route.UpstreamAddr, "client_tls", string(l.route.ClientTLS))
	if !isLoopback(l.Addr()) {
		s.log.Warn("listening on a non-loopback address: anyone who reaches it reaches the upstream", "addr", l.Addr().String())
		if w := l.route.askWarning(l.Addr()); w != "" {
			s.log.Warn(w, "route", l.route.Name, "addr", l.Addr().String(), "ask_password_from", l.route.ask.describe())
		}
	}
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		if err := s.acceptLoop(s.serveCtx, l); err != nil {
			select {
			case s.loopErr <- err:
			default:
			}
		}
	}()
}

func (s *Server) acceptLoop(ctx context.Context, l *listener) error {
	var backoff time.Duration
	for {
		s.mu.Lock()
		st := s.state(l.route.Name)
		route := l.route.Name
		s.mu.Unlock()
		if !s.startup.acquire(l.done, route, func() { st.startupWaits.Add(1) }) {
			return nil // closed or retired
		}
		slot := &startupSlot{g: s.startup}
		conn, err := l.Accept()
		if err != nil {
			s.startup.release()
			s.mu.Lock()
			closed := s.closed || s.draining || l.retired
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if transientAcceptError(err) {
				// Out of file descriptors or buffers: running sessions
				// go on; accepting resumes when resources come back.
				if backoff == 0 {
					backoff = 5 * time.Millisecond
					s.log.Warn("cannot accept new connections for now; retrying (running sessions are not affected)",
						"route", l.route.Name, "addr", l.Addr().String(), "error", err.Error(),
						"hint", "raise the open-files limit (ulimit -n, LimitNOFILE=) or lower max_connections")
				} else if backoff *= 2; backoff > time.Second {
					backoff = time.Second
				}
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("proxy: accepting on %s: %w", l.Addr(), err)
		}
		backoff = 0
		r, st, ok := s.track(conn, l)
		if !ok {
			s.startup.release()
			conn.Close()
			continue
		}
		st.starting.Add(1)
		slot.n = func(d int64) { st.starting.Add(d) }
		go func() {
			defer s.untrack(conn, r, st)
			defer slot.release()
			s.handle(ctx, r, st, conn, slot)
		}()
	}
}

// transientAcceptError reports accept errors that pass: descriptors or
// memory running out, or a client that reset before it was accepted.
func transientAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// track registers a new client connection and returns the route it
// belongs to now.
func (s *Server) track(c net.Conn, l *listener) (*Route, *routeState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return nil, nil, false
	}
	r := l.route
	st := s.state(r.Name)
	st.active.Add(1)
	s.conns[c] = c
	s.wg.Add(1)
	s.obs.SessionStarted(r.Name)
	return r, st, true
}

// upstreamOpened records that client c's session has the upstream
// connection up: closing the session closes up first, then c
// (relay.CloseUpstreamFirst). If the server is already closed it closes
// both at once.
func (s *Server) upstreamOpened(c, up net.Conn) {
	cl := sessionCloser{client: c, upstream: up}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		cl.Close()
		return
	}
	if _, tracked := s.conns[c]; tracked {
		s.conns[c] = cl
	}
}

// sessionCloser closes a session with an upstream connection, upstream
// side first.
type sessionCloser struct{ client, upstream net.Conn }

// Close closes the upstream connection, then the client's.
func (c sessionCloser) Close() error {
	return relay.CloseUpstreamFirst(c.client, c.upstream)
}

// relayRegister returns client c's relay.Register: it runs a loop
// hand-over under s.mu, so that Close never meets a connection half handed
// over, and from then on closing the session means stopping it on its
// loop.
func (s *Server) relayRegister(c net.Conn) relay.Register {
	return func(handOver func() (stop func())) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			return false
		}
		stop := handOver()
		if _, tracked := s.conns[c]; tracked && stop != nil {
			s.conns[c] = stopCloser(stop)
		}
		return true
	}
}

// stopCloser closes a session on an event loop.
type stopCloser func()

// Close stops the session; its loop closes both sockets.
func (f stopCloser) Close() error {
	f()
	return nil
}

func (s *Server) untrack(c net.Conn, r *Route, st *routeState) {
	st.active.Add(-1)
	s.mu.Lock()
	delete(s.conns, c)
	delete(s.upstreamAt, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Reload replaces the routes: listeners whose address stays are kept (new
// clients get the new route settings), new addresses are opened, and
// listeners no longer configured are closed. Running sessions go on with
// the settings they started with. On error nothing changes.
func (s *Server) Reload(routes []Route) error {
	nr, err := validateRoutes(routes)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return errors.New("proxy: reload: shutting down")
	}
	ls, err := s.open(nr, s.listeners)
	if err != nil {
		return err
	}
	inUse := map[*listener]bool{}
	for _, l := range ls {
		inUse[l] = true
	}
	for _, l := range s.listeners {
		if !inUse[l] {
			l.retired = true
			l.shut()
			s.log.Info("stopped listening (no longer configured)", "route", l.route.Name, "addr", l.Addr().String())
		}
	}
	old := map[*listener]bool{}
	for _, l := range s.listeners {
		old[l] = true
	}
	stopPools(s.routes)
	stopDNS(s.routes)
	inService := map[string]bool{}
	for _, r := range nr {
		inService[r.Name] = true
	}
	for name := range s.states {
		if !inService[name] {
			delete(s.states, name) // its running sessions keep their own pointer
		}
	}
	s.listeners, s.routes = ls, nr
	s.startPools(nr)
	s.startDNS(nr)
	if s.serving {
		for _, l := range ls {
			if !old[l] {
				s.startAccept(l)
			}
		}
	}
	s.obs.RoutesChanged(routeNames(nr))
	return nil
}

// RouteStats returns the live counters of the routes in service.
func (s *Server) RouteStats() []RouteStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RouteStats, 0, len(s.routes))
	for _, r := range s.routes {
		st := s.state(r.Name)
		out = append(out, RouteStats{Route: r.Name, Active: st.active.Load(),
			BytesToUpstream: st.counters.ClientToUpstream.Load(), BytesToClient: st.counters.UpstreamToClient.Load(),
			Starting: st.starting.Load(), StartupWaits: st.startupWaits.Load()})
	}
	return out
}

// Routes returns the names of the routes in service.
func (s *Server) Routes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return routeNames(s.routes)
}

// Probe dials the named route's upstream once (TCP, TLS negotiation, TLS
// handshake, verify-full), reports the outcome to the Observer and closes
// the connection without sending a startup message.
func (s *Server) Probe(ctx context.Context, route string) error {
	s.mu.Lock()
	var r *Route
	for _, x := range s.routes {
		if x.Name == route {
			r = x
		}
	}
	s.mu.Unlock()
	if r == nil {
		return fmt.Errorf("proxy: probe: no route named %q", route)
	}
	if len(r.Hosts) < 2 {
		c, err := s.dialUpstream(ctx, r)
		if err != nil {
			return err
		}
		return c.Close()
	}
	// A host list is ready when one host is: each is dialled and
	// verified in turn until one passes.
	var errs []error
	for _, h := range r.Hosts {
		c, err := s.dialReported(ctx, r, h.Addr, h.Dial)
		if err == nil {
			return c.Close()
		}
		errs = append(errs, fmt.Errorf("host %s: %w", h.Addr, err))
	}
	return errors.Join(errs...)
}

// upstreamConn returns a verified upstream connection for a session: a
// pre-dialled one when the route keeps a pool and one is ready (warm),
// else a new dial.
func (s *Server) upstreamConn(ctx context.Context, r *Route) (c net.Conn, warm bool, err error) {
	if r.pool != nil {
		if c := r.pool.take(); c != nil {
			return c, true, nil
		}
	}
	c, err = s.dialUpstream(ctx, r)
	return c, false, err
}

// dialUpstream opens a verified upstream connection for r and reports the
// dial to the Observer.
func (s *Server) dialUpstream(ctx context.Context, r *Route) (net.Conn, error) {
	return s.dialReported(ctx, r, r.UpstreamAddr, r.Dial)
}

// dialReported dials one host of r (addr, as configured) with dial and
// reports the dial to the Observer.
func (s *Server) dialReported(ctx context.Context, r *Route, addr string, dial DialFunc) (net.Conn, error) {
	start := time.Now()
	c, err := dial(ctx)
	if err != nil && ctx.Err() != nil {
		// The caller gave up (a client's startup deadline, a shutdown):
		// not a fact about the upstream, so not reported.
		return c, err
	}
	s.obs.UpstreamDialed(r.Name, addr, time.Since(start), err)
	return c, err
}

// Close stops accepting and closes every client connection (which ends its
// session and upstream connection). It waits for the sessions to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		if s.cancel != nil {
			s.cancel()
		}
		stopPools(s.routes)
		stopDNS(s.routes)
		for _, l := range s.listeners {
			l.shut()
		}
		for _, cl := range s.conns {
			cl.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.relay.Stop()
	return nil
}

// Shutdown stops accepting and waits for running sessions to finish until
// ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for _, l := range s.listeners {
		l.shut()
	}
	stopPools(s.routes)
	stopDNS(s.routes)
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

// Active returns the number of client connections open now.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
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
