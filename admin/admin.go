// Package admin serves the proxy's admin endpoint: Prometheus metrics on
// /metrics, liveness on /healthz and readiness on /readyz, and, when
// enabled, POST /quitquitquit to end the proxy (a Kubernetes Job's sidecar).
//
// An Admin is the proxy's Observer: it counts sessions, refusals and
// upstream dials as they are reported, reads live counters (active
// sessions, relayed bytes) at scrape time, and decides readiness from the
// outcome and age of each route's most recent upstream dial.
package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultReadyWindow is the ReadyWindow used when Options.ReadyWindow is
// zero or negative.
const DefaultReadyWindow = 30 * time.Second

// Options configure an Admin.
type Options struct {
	// Version is the proxy's version, exported as the version label of
	// pgverifyproxy_build_info ("unknown" when empty).
	Version string
	// Stats returns the live counters of the routes in service. It is
	// called at each scrape; nil exports no active-session or byte metrics.
	Stats func() []proxy.RouteStats
	// ReadyWindow is how recent a route's last successful upstream dial
	// must be for the route to be ready (DefaultReadyWindow when zero).
	ReadyWindow time.Duration
	// Now returns the current time; nil means time.Now. Tests inject a
	// fixed clock.
	Now func() time.Time
	// Quit, when set, enables POST /quitquitquit: the request turns
	// /readyz to 503 "draining", calls Quit with the client's address and
	// is answered 200 "draining"; other methods get 405. Quit must return
	// at once and may be called again by a repeated request (the run
	// command hands the first one to its signal loop, which drains as on
	// SIGTERM). When Quit is nil the path answers 404. Anyone who can
	// reach the admin address can then stop the proxy; a request a
	// browser marks as cross-site is refused (403), so a web page cannot.
	Quit func(remoteAddr string)
	// Hosts are the host names, besides IP literals and localhost, that a
	// request's Host header may name (admin_hosts): the name Prometheus or
	// a probe reaches the endpoint by. Every other Host is answered 421,
	// so a web page cannot reach the endpoint by DNS rebinding (a name of
	// the attacker's that resolves to 127.0.0.1).
	Hosts []string
}

// sessionResults are the SessionResult values whose counters are created
// at zero for every route in service, so rates exist before the first event.
var sessionResults = []proxy.SessionResult{
	proxy.ResultCompleted, proxy.ResultRefused, proxy.ResultAuthFailed,
	proxy.ResultClientLeft, proxy.ResultCancel, proxy.ResultShutdown,
}

// handshakeBuckets span 1 ms to 10 s.
var handshakeBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Server timeouts of the admin endpoint.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
)

// routeState is what the Admin knows about one route's upstream.
type routeState struct {
	lastOK         time.Time // last successful dial; zero if none
	lastErr        string    // error of the most recent dial; "" if it succeeded
	leafNotAfter   time.Time // from SetExpiry; zero if unknown
	anchorNotAfter time.Time
	rootChange     string // the last change of root of a live-trust route; "" if none
	rootChangedAt  time.Time
	hostUp         map[string]bool // host:port → its last dial passed verify-full
}

// Admin collects the proxy's metrics and health and serves them over HTTP.
// It implements proxy.Observer; all its methods are safe for concurrent use.
type Admin struct {
	now         func() time.Time
	readyWindow time.Duration
	stats       func() []proxy.RouteStats

	reg         *prometheus.Registry
	sessions    *prometheus.CounterVec
	refused     *prometheus.CounterVec
	handshake   *prometheus.HistogramVec
	rootChanges *prometheus.CounterVec

	draining atomic.Bool
	quit     func(remoteAddr string)

	mu     sync.Mutex
	routes []string // routes in service; nil until RoutesChanged
	state  map[string]*routeState

	handler http.Handler
	srv     *http.Server
}

var _ proxy.Observer = (*Admin)(nil)

// New returns an Admin with its own Prometheus registry, holding its
// metrics and the Go runtime and process collectors.
func New(o Options) *Admin {
	a := &Admin{
		now:         o.Now,
		readyWindow: o.ReadyWindow,
		stats:       o.Stats,
		quit:        o.Quit,
		reg:         prometheus.NewRegistry(),
		state:       map[string]*routeState{},
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.readyWindow <= 0 {
		a.readyWindow = DefaultReadyWindow
	}
	version := o.Version
	if version == "" {
		version = "unknown"
	}
	a.sessions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgverifyproxy_sessions_total",
		Help: "Client connections that ended, by route and result (completed, refused, auth_failed, client_left, cancel, shutdown).",
	}, []string{"route", "result"})
	a.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgverifyproxy_refused_total",
		Help: "Client connections refused by the proxy, by route and cause.",
	}, []string{"route", "cause"})
	a.rootChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgverifyproxy_upstream_root_changes_total",
		Help: "Changes of the root CA that a live-trust route's upstream chain leads to (trust: live accepts them; a pinned route refuses them).",
	}, []string{"route"})
	a.handshake = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pgverifyproxy_upstream_handshake_seconds",
		Help:    "Duration of upstream dials (TCP connect, SSLRequest, TLS handshake, verification), by route and result (ok, error).",
		Buckets: handshakeBuckets,
	}, []string{"route", "result"})
	a.reg.MustRegister(
		a.sessions, a.refused, a.handshake, a.rootChanges,
		&liveCollector{a: a, version: version},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", a.serveHealthz)
	mux.HandleFunc("GET /readyz", a.serveReadyz)
	if a.quit != nil {
		// Any method, so that GET gets a 405 that names POST; a POST a
		// browser sends for another site's page is refused with 403.
		mux.Handle(QuitPath, http.NewCrossOriginProtection().Handler(http.HandlerFunc(a.serveQuit)))
	}
	a.handler = hostCheck(o.Hosts, mux)
	a.srv = &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	return a
}

// RoutesChanged records the routes in service. The readiness and expiry
// state of routes no longer listed is dropped; their counters stay.
func (a *Admin) RoutesChanged(routes []string) {
	rs := make([]string, 0, len(routes))
	for _, r := range routes {
		if !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
	}
	a.mu.Lock()
	a.routes = rs
	for name := range a.state {
		if !slices.Contains(rs, name) {
			delete(a.state, name)
		}
	}
	a.mu.Unlock()
	for _, r := range rs {
		for _, res := range sessionResults {
			a.sessions.WithLabelValues(r, string(res))
		}
		a.rootChanges.WithLabelValues(r)
		// Every refusal cause at zero, so that an alert on increase()
		// sees the first refusal of a kind.
		for _, reason := range chain.Reasons() {
			if reason.Refusal() {
				a.refused.WithLabelValues(r, reason.String())
			}
		}
	}
}

// SessionStarted does nothing: active sessions are read from
// Options.Stats at scrape time.
func (a *Admin) SessionStarted(string) {}

// SessionEnded counts an ended session in pgverifyproxy_sessions_total.
func (a *Admin) SessionEnded(route string, result proxy.SessionResult) {
	a.sessions.WithLabelValues(route, string(result)).Inc()
}

// Refused counts a refused connection in pgverifyproxy_refused_total, its
// cause labelled with the reason's word (as in the log's reason field).
func (a *Admin) Refused(route string, cause chain.Reason) {
	a.refused.WithLabelValues(route, cause.String()).Inc()
}

// UpstreamDialed records an upstream dial's duration in
// pgverifyproxy_upstream_handshake_seconds, its outcome for readiness, and
// the host's last outcome in pgverifyproxy_upstream_host_up (the hosts of
// the route's configuration: a bounded set).
func (a *Admin) UpstreamDialed(route, host string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	a.handshake.WithLabelValues(route, result).Observe(took.Seconds())
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.routeLocked(route)
	if st == nil {
		return
	}
	if host != "" {
		if st.hostUp == nil {
			st.hostUp = map[string]bool{}
		}
		st.hostUp[host] = err == nil
	}
	if err != nil {
		st.lastErr = err.Error()
		if st.lastErr == "" {
			st.lastErr = "upstream dial failed"
		}
		return
	}
	st.lastOK = now
	st.lastErr = ""
}

// SetExpiry records the NotAfter of the leaf and of the trust anchor of
// the route's last verified upstream path, exported as countdowns in
// pgverifyproxy_upstream_leaf_expiry_seconds and
// pgverifyproxy_upstream_anchor_expiry_seconds. A zero time leaves its
// gauge absent.
func (a *Admin) SetExpiry(route string, leafNotAfter, anchorNotAfter time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.routeLocked(route); st != nil {
		st.leafNotAfter = leafNotAfter
		st.anchorNotAfter = anchorNotAfter
	}
}

// RootChanged records that a live-trust route's upstream chain now leads
// to another root CA: it counts it in
// pgverifyproxy_upstream_root_changes_total and shows the last change in
// the route's /readyz line. The route stays ready: live trust accepts any
// root of the system trust store.
func (a *Admin) RootChanged(route, from, to string) {
	a.rootChanges.WithLabelValues(route).Inc()
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.routeLocked(route); st != nil {
		st.rootChange = fmt.Sprintf("root CA changed from %s to %s", chain.Quote(from), chain.Quote(to))
		st.rootChangedAt = now
	}
}

// SetDraining makes /readyz answer 503 "draining" from then on, so that
// load balancers stop sending clients before the proxy shuts down.
func (a *Admin) SetDraining() { a.draining.Store(true) }

// routeLocked returns the state of route, creating it, or nil when the
// route is not in service (a late report for a removed route). Before the
// first RoutesChanged every route is accepted. a.mu must be held.
func (a *Admin) routeLocked(route string) *routeState {
	if a.routes != nil && !slices.Contains(a.routes, route) {
		return nil
	}
	st := a.state[route]
	if st == nil {
		st = &routeState{}
		a.state[route] = st
	}
	return st
}

// routeHealth is one route's readiness at an instant.
type routeHealth struct {
	route  string
	ready  bool
	detail string
	st     routeState
}

// health returns the routes in service (nil before RoutesChanged) with
// their readiness: a route is ready when its last successful dial is
// within the ready window and no dial failed since.
func (a *Admin) health(now time.Time) []routeHealth {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.routes == nil {
		return nil
	}
	out := make([]routeHealth, 0, len(a.routes))
	for _, r := range a.routes {
		h := routeHealth{route: r}
		if st := a.state[r]; st != nil {
			h.st = *st
			h.st.hostUp = maps.Clone(st.hostUp)
		}
		// A host list is ready while one of its hosts is: a failed dial
		// of another host does not count against it.
		var down []string
		if len(h.st.hostUp) > 1 {
			up := false
			for host, ok := range h.st.hostUp {
				up = up || ok
				if !ok {
					down = append(down, host)
				}
			}
			slices.Sort(down)
			if up {
				h.st.lastErr = ""
			}
		}
		age := max(now.Sub(h.st.lastOK), 0)
		switch {
		case h.st.lastErr != "":
			h.detail = h.st.lastErr
		case h.st.lastOK.IsZero():
			h.detail = "not verified yet"
		case age > a.readyWindow:
			h.detail = fmt.Sprintf("last verified %s ago (more than %s)", roundAge(age), a.readyWindow)
		default:
			h.ready = true
			h.detail = fmt.Sprintf("upstream verified %s ago", roundAge(age))
		}
		if h.st.rootChange != "" {
			h.detail += fmt.Sprintf("; %s %s ago (trust: live)", h.st.rootChange, roundAge(max(now.Sub(h.st.rootChangedAt), 0)))
		}
		if len(down) > 0 {
			h.detail += "; hosts failing their last dial: " + strings.Join(down, ", ")
		}
		out = append(out, h)
	}
	return out
}

// roundAge rounds an age to the second for display.
func roundAge(d time.Duration) time.Duration { return d.Round(time.Second) }

// serveHealthz answers 200 while the process runs.
func (a *Admin) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	writeText(w, http.StatusOK, "ok\n")
}

// serveReadyz answers 200 when every route in service is ready and the
// proxy is not draining, else 503, with one line per route.
func (a *Admin) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	var b strings.Builder
	ok := true
	if a.draining.Load() {
		ok = false
		b.WriteString("draining: shutting down\n")
	}
	hs := a.health(a.now())
	switch {
	case hs == nil:
		ok = false
		b.WriteString("no routes yet\n")
	case len(hs) == 0:
		ok = false
		b.WriteString("no routes in service\n")
	}
	for _, h := range hs {
		status := "ok"
		if !h.ready {
			ok = false
			status = "FAIL"
		}
		fmt.Fprintf(&b, "%-4s %s: %s\n", status, h.route, oneLine(h.detail))
	}
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	}
	writeText(w, code, b.String())
}

// QuitPath is the admin path that ends the proxy when Options.Quit is set.
const QuitPath = "/quitquitquit"

// serveQuit answers POST /quitquitquit: /readyz turns 503 at once and the
// proxy is asked to drain, as on SIGTERM.
func (a *Admin) serveQuit(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeText(w, http.StatusMethodNotAllowed, "method not allowed: use POST "+QuitPath+"\n")
		return
	}
	a.SetDraining()
	a.quit(r.RemoteAddr)
	writeText(w, http.StatusOK, "draining\n")
}

// oneLine keeps an error text on a single line of the /readyz body, with
// any other control character escaped: the text may come from a
// certificate or a server not verified yet.
func oneLine(s string) string {
	return chain.EscapeControls(strings.Join(strings.Fields(s), " "))
}

// writeText writes a plain-text, uncached response.
func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// Handler returns the admin endpoint's handler: GET /metrics, /healthz and
// /readyz, POST /quitquitquit when Options.Quit is set; 404 for any other
// path.
func (a *Admin) Handler() http.Handler { return a.handler }

// Serve serves the admin endpoint on l, with read, write and idle
// timeouts, until Shutdown; it then returns nil. It closes l. Serve may be
// called on several listeners; after Shutdown it returns nil at once.
func (a *Admin) Serve(l net.Listener) error {
	err := a.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("admin: serving on %s: %w", l.Addr(), err)
}

// Shutdown stops the admin endpoint: its listeners close at once, and
// requests in flight are given until ctx is done to finish.
func (a *Admin) Shutdown(ctx context.Context) error {
	if err := a.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin: shutting down: %w", err)
	}
	return nil
}
