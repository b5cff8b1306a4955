package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// get requests path from h and returns the status and body.
func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9543"+path, nil))
	return rec.Code, rec.Body.String()
}

// scrape parses the /metrics exposition text of a.
func scrape(t *testing.T, a *Admin) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, a.Handler(), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return fams
}

// find returns the metric of family name whose labels include want, or nil.
func find(fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// value returns the value of a counter or gauge, failing if it is absent.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	m := find(fams, name, labels)
	if m == nil {
		t.Fatalf("%s%v: absent", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("%s%v: not a counter or gauge", name, labels)
	return 0
}

func TestCounters(t *testing.T) {
	a := New(Options{Version: "1.2.3"})
	a.RoutesChanged([]string{"main", "replica"})
	ends := []struct {
		route  string
		result proxy.SessionResult
		n      int
	}{
		{"main", proxy.ResultCompleted, 3},
		{"main", proxy.ResultRefused, 2},
		{"main", proxy.ResultAuthFailed, 1},
		{"replica", proxy.ResultClientLeft, 4},
		{"replica", proxy.ResultCancel, 5},
	}
	for _, e := range ends {
		a.SessionStarted(e.route)
		for range e.n {
			a.SessionEnded(e.route, e.result)
		}
	}
	a.Refused("main", chain.ReasonVerification)
	a.Refused("main", chain.ReasonVerification)
	a.Refused("main", chain.ReasonLimit)
	a.Refused("replica", chain.ReasonUpstreamUnreachable)

	fams := scrape(t, a)
	for _, e := range ends {
		if got := value(t, fams, "pgverifyproxy_sessions_total", map[string]string{"route": e.route, "result": string(e.result)}); got != float64(e.n) {
			t.Errorf("sessions_total{%s,%s} = %v, want %d", e.route, e.result, got, e.n)
		}
	}
	// Known results start at zero for every route in service.
	if got := value(t, fams, "pgverifyproxy_sessions_total", map[string]string{"route": "replica", "result": "completed"}); got != 0 {
		t.Errorf("sessions_total{replica,completed} = %v, want 0", got)
	}
	refused := []struct {
		route, cause string
		want         float64
	}{
		{"main", "verification", 2},
		{"main", "limit", 1},
		{"replica", "upstream_unreachable", 1},
	}
	for _, r := range refused {
		if got := value(t, fams, "pgverifyproxy_refused_total", map[string]string{"route": r.route, "cause": r.cause}); got != r.want {
			t.Errorf("refused_total{%s,%s} = %v, want %v", r.route, r.cause, got, r.want)
		}
	}
	if got := value(t, fams, "pgverifyproxy_build_info", map[string]string{"version": "1.2.3", "goversion": runtime.Version()}); got != 1 {
		t.Errorf("build_info = %v, want 1", got)
	}
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes"} {
		if fams[name] == nil {
			t.Errorf("%s: absent", name)
		}
	}
	if runtime.GOOS == "linux" && fams["process_open_fds"] == nil {
		t.Error("process_open_fds: absent")
	}
}

func TestBuildInfoUnknownVersion(t *testing.T) {
	fams := scrape(t, New(Options{}))
	if got := value(t, fams, "pgverifyproxy_build_info", map[string]string{"version": "unknown"}); got != 1 {
		t.Errorf("build_info{version=unknown} = %v, want 1", got)
	}
}

func TestStatsAtScrapeTime(t *testing.T) {
	stats := []proxy.RouteStats{
		{Route: "main", Active: 2, BytesToUpstream: 100, BytesToClient: 2000, Starting: 3, StartupWaits: 4},
		{Route: "replica", Active: 0, BytesToUpstream: 7, BytesToClient: 9},
	}
	a := New(Options{Stats: func() []proxy.RouteStats { return stats }})
	check := func(route string, active, up, down float64) {
		t.Helper()
		fams := scrape(t, a)
		if got := value(t, fams, "pgverifyproxy_sessions_active", map[string]string{"route": route}); got != active {
			t.Errorf("sessions_active{%s} = %v, want %v", route, got, active)
		}
		if got := value(t, fams, "pgverifyproxy_bytes_total", map[string]string{"route": route, "direction": "to_upstream"}); got != up {
			t.Errorf("bytes_total{%s,to_upstream} = %v, want %v", route, got, up)
		}
		if got := value(t, fams, "pgverifyproxy_bytes_total", map[string]string{"route": route, "direction": "to_client"}); got != down {
			t.Errorf("bytes_total{%s,to_client} = %v, want %v", route, got, down)
		}
		if typ := fams["pgverifyproxy_bytes_total"].GetType(); typ != dto.MetricType_COUNTER {
			t.Errorf("bytes_total type = %v, want counter", typ)
		}
	}
	check("main", 2, 100, 2000)
	check("replica", 0, 7, 9)
	fams := scrape(t, a)
	if got := value(t, fams, "pgverifyproxy_startup_connections", map[string]string{"route": "main"}); got != 3 {
		t.Errorf("startup_connections{main} = %v, want 3", got)
	}
	if got := value(t, fams, "pgverifyproxy_startup_waits_total", map[string]string{"route": "main"}); got != 4 {
		t.Errorf("startup_waits_total{main} = %v, want 4", got)
	}
	if typ := fams["pgverifyproxy_startup_waits_total"].GetType(); typ != dto.MetricType_COUNTER {
		t.Errorf("startup_waits_total type = %v, want counter", typ)
	}
	stats[0] = proxy.RouteStats{Route: "main", Active: 1, BytesToUpstream: 150, BytesToClient: 2500}
	check("main", 1, 150, 2500)
}

func TestHandshakeHistogram(t *testing.T) {
	a := New(Options{})
	a.RoutesChanged([]string{"main"})
	a.UpstreamDialed("main", "db.example.com:5432", 20*time.Millisecond, nil)
	a.UpstreamDialed("main", "db.example.com:5432", 30*time.Millisecond, nil)
	a.UpstreamDialed("main", "db.example.com:5432", 2*time.Second, errors.New("dial tcp: connection refused"))
	fams := scrape(t, a)
	tests := []struct {
		result string
		count  uint64
		sum    float64
	}{
		{"ok", 2, 0.05},
		{"error", 1, 2},
	}
	for _, tt := range tests {
		m := find(fams, "pgverifyproxy_upstream_handshake_seconds", map[string]string{"route": "main", "result": tt.result})
		if m == nil || m.Histogram == nil {
			t.Fatalf("upstream_handshake_seconds{main,%s}: absent", tt.result)
		}
		h := m.GetHistogram()
		if h.GetSampleCount() != tt.count {
			t.Errorf("upstream_handshake_seconds{main,%s} count = %d, want %d", tt.result, h.GetSampleCount(), tt.count)
		}
		if d := h.GetSampleSum() - tt.sum; d > 1e-9 || d < -1e-9 {
			t.Errorf("upstream_handshake_seconds{main,%s} sum = %v, want %v", tt.result, h.GetSampleSum(), tt.sum)
		}
		// The parser appends the +Inf bucket.
		b := h.GetBucket()
		if len(b) < 2 || b[0].GetUpperBound() != 0.001 || b[len(b)-2].GetUpperBound() != 10 {
			t.Errorf("buckets %v, want 0.001 to 10 (then +Inf)", b)
		}
	}
}

func TestExpiry(t *testing.T) {
	clk := newClock()
	a := New(Options{Now: clk.Now})
	a.RoutesChanged([]string{"main", "replica"})
	fams := scrape(t, a)
	for _, name := range []string{"pgverifyproxy_upstream_leaf_expiry_seconds", "pgverifyproxy_upstream_anchor_expiry_seconds"} {
		if m := find(fams, name, map[string]string{"route": "main"}); m != nil {
			t.Errorf("%s{main} present before SetExpiry", name)
		}
	}
	leaf := clk.Now().Add(10 * 24 * time.Hour)
	anchor := clk.Now().Add(5 * 365 * 24 * time.Hour)
	a.SetExpiry("main", leaf, anchor)
	a.SetExpiry("replica", clk.Now().Add(-time.Hour), time.Time{}) // expired leaf, unknown anchor
	clk.Add(time.Hour)
	fams = scrape(t, a)
	tests := []struct {
		name, route string
		want        float64
	}{
		{"pgverifyproxy_upstream_leaf_expiry_seconds", "main", leaf.Sub(clk.Now()).Seconds()},
		{"pgverifyproxy_upstream_anchor_expiry_seconds", "main", anchor.Sub(clk.Now()).Seconds()},
		{"pgverifyproxy_upstream_leaf_expiry_seconds", "replica", -2 * 3600},
	}
	for _, tt := range tests {
		if got := value(t, fams, tt.name, map[string]string{"route": tt.route}); got != tt.want {
			t.Errorf("%s{%s} = %v, want %v", tt.name, tt.route, got, tt.want)
		}
	}
	if m := find(fams, "pgverifyproxy_upstream_anchor_expiry_seconds", map[string]string{"route": "replica"}); m != nil {
		t.Error("anchor_expiry_seconds{replica} present for a zero NotAfter")
	}

	// Removing a route drops its expiry; adding it back does not revive it.
	a.RoutesChanged([]string{"replica"})
	a.RoutesChanged([]string{"replica", "main"})
	fams = scrape(t, a)
	if m := find(fams, "pgverifyproxy_upstream_leaf_expiry_seconds", map[string]string{"route": "main"}); m != nil {
		t.Error("leaf_expiry_seconds{main} present after the route was removed")
	}
	// SetExpiry for a route not in service is ignored.
	a.SetExpiry("gone", leaf, anchor)
	if m := find(scrape(t, a), "pgverifyproxy_upstream_leaf_expiry_seconds", map[string]string{"route": "gone"}); m != nil {
		t.Error("leaf_expiry_seconds{gone} present for a route not in service")
	}
}

// dial is one UpstreamDialed call, at an offset from the test's start.
type dial struct {
	route string
	at    time.Duration
	err   error
}

func TestReadiness(t *testing.T) {
	refused := errors.New(`upstream db.example.com:5432: tls: certificate is valid for other.example.com, not db.example.com`)
	tests := []struct {
		name     string
		routes   []string // nil: RoutesChanged never called
		dials    []dial
		then     []string // RoutesChanged after the dials, if set
		now      time.Duration
		draining bool
		code     int
		body     string
		ready    map[string]float64 // pgverifyproxy_route_ready
	}{
		{
			name: "no routes yet",
			code: 503, body: "no routes yet\n",
		},
		{
			name:   "never dialed",
			routes: []string{"main"},
			code:   503, body: "FAIL main: not verified yet\n",
			ready: map[string]float64{"main": 0},
		},
		{
			name:   "ok recent",
			routes: []string{"main"},
			dials:  []dial{{"main", 0, nil}},
			now:    3 * time.Second,
			code:   200, body: "ok   main: upstream verified 3s ago\n",
			ready: map[string]float64{"main": 1},
		},
		{
			name:   "ok at the edge of the window",
			routes: []string{"main"},
			dials:  []dial{{"main", 0, nil}},
			now:    30 * time.Second,
			code:   200, body: "ok   main: upstream verified 30s ago\n",
			ready: map[string]float64{"main": 1},
		},
		{
			name:   "ok too old",
			routes: []string{"main"},
			dials:  []dial{{"main", 0, nil}},
			now:    2*time.Minute + 10*time.Second,
			code:   503, body: "FAIL main: last verified 2m10s ago (more than 30s)\n",
			ready: map[string]float64{"main": 0},
		},
		{
			name:   "failed after ok",
			routes: []string{"main"},
			dials:  []dial{{"main", 0, nil}, {"main", time.Second, refused}},
			now:    2 * time.Second,
			code:   503, body: "FAIL main: " + refused.Error() + "\n",
			ready: map[string]float64{"main": 0},
		},
		{
			name:   "ok after failed",
			routes: []string{"main"},
			dials:  []dial{{"main", 0, refused}, {"main", time.Second, nil}},
			now:    2 * time.Second,
			code:   200, body: "ok   main: upstream verified 1s ago\n",
			ready: map[string]float64{"main": 1},
		},
		{
			name:   "one route of two failing",
			routes: []string{"main", "replica"},
			dials:  []dial{{"main", 0, nil}, {"replica", 0, errors.New("dial tcp 10.0.0.2:5432: connect: connection refused\n")}},
			now:    time.Second,
			code:   503, body: "ok   main: upstream verified 1s ago\nFAIL replica: dial tcp 10.0.0.2:5432: connect: connection refused\n",
			ready: map[string]float64{"main": 1, "replica": 0},
		},
		{
			name:     "draining",
			routes:   []string{"main"},
			dials:    []dial{{"main", 0, nil}},
			now:      time.Second,
			draining: true,
			code:     503, body: "draining: shutting down\nok   main: upstream verified 1s ago\n",
			ready: map[string]float64{"main": 1},
		},
		{
			name:   "removed route",
			routes: []string{"main", "old"},
			dials:  []dial{{"main", 0, nil}, {"old", 0, refused}},
			then:   []string{"main"},
			now:    time.Second,
			code:   200, body: "ok   main: upstream verified 1s ago\n",
			ready: map[string]float64{"main": 1},
		},
		{
			name:  "dial before RoutesChanged counts",
			dials: []dial{{"main", 0, nil}},
			then:  []string{"main"},
			now:   time.Second,
			code:  200, body: "ok   main: upstream verified 1s ago\n",
			ready: map[string]float64{"main": 1},
		},
		{
			name:   "late dial of a removed route is ignored",
			routes: []string{"main"},
			dials:  []dial{{"main", 0, nil}, {"old", 0, refused}},
			then:   []string{"main", "old"},
			now:    time.Second,
			code:   503, body: "ok   main: upstream verified 1s ago\nFAIL old: not verified yet\n",
			ready: map[string]float64{"main": 1, "old": 0},
		},
		{
			name:   "no routes in service",
			routes: []string{},
			code:   503, body: "no routes in service\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			start := clk.Now()
			a := New(Options{Now: clk.Now})
			if tt.routes != nil {
				a.RoutesChanged(tt.routes)
			}
			for _, d := range tt.dials {
				clk.Add(start.Add(d.at).Sub(clk.Now()))
				a.UpstreamDialed(d.route, "db.example.com:5432", 10*time.Millisecond, d.err)
			}
			if tt.then != nil {
				a.RoutesChanged(tt.then)
			}
			if tt.draining {
				a.SetDraining()
			}
			clk.Add(start.Add(tt.now).Sub(clk.Now()))
			code, body := get(t, a.Handler(), "/readyz")
			if code != tt.code || body != tt.body {
				t.Errorf("/readyz = %d %q, want %d %q", code, body, tt.code, tt.body)
			}
			fams := scrape(t, a)
			if n := len(fams["pgverifyproxy_route_ready"].GetMetric()); n != len(tt.ready) {
				t.Errorf("%d route_ready series, want %d", n, len(tt.ready))
			}
			for r, want := range tt.ready {
				if got := value(t, fams, "pgverifyproxy_route_ready", map[string]string{"route": r}); got != want {
					t.Errorf("route_ready{%s} = %v, want %v", r, got, want)
				}
			}
		})
	}
}

func TestReadyWindowOption(t *testing.T) {
	clk := newClock()
	a := New(Options{Now: clk.Now, ReadyWindow: time.Minute})
	a.RoutesChanged([]string{"main"})
	a.UpstreamDialed("main", "db.example.com:5432", time.Millisecond, nil)
	clk.Add(45 * time.Second)
	if code, body := get(t, a.Handler(), "/readyz"); code != 200 {
		t.Errorf("45s after a dial with a 1m window: %d %q, want 200", code, body)
	}
	clk.Add(30 * time.Second)
	code, body := get(t, a.Handler(), "/readyz")
	if want := "FAIL main: last verified 1m15s ago (more than 1m0s)\n"; code != 503 || body != want {
		t.Errorf("/readyz = %d %q, want 503 %q", code, body, want)
	}
}

func TestRoutes(t *testing.T) {
	a := New(Options{})
	tests := []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/healthz", 200, "ok\n"},
		{"HEAD", "/healthz", 200, ""},
		{"GET", "/", 404, ""},
		{"GET", "/healthz/", 404, ""},
		{"GET", "/metrics/x", 404, ""},
		{"GET", "/debug/pprof/", 404, ""},
		{"POST", "/healthz", 405, ""},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, httptest.NewRequest(tt.method, "http://127.0.0.1:9543"+tt.path, nil))
		if rec.Code != tt.code {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, rec.Code, tt.code)
		}
		if tt.body != "" && rec.Body.String() != tt.body {
			t.Errorf("%s %s body = %q, want %q", tt.method, tt.path, rec.Body.String(), tt.body)
		}
	}
}

func TestListen(t *testing.T) {
	tests := []struct {
		addr     string
		host     string // expected listening IP ("unspecified": 0.0.0.0 or ::); "" = error expected
		loopback bool
	}{
		{":0", "127.0.0.1", true},
		{"0", "127.0.0.1", true},
		{"127.0.0.1:0", "127.0.0.1", true},
		{"0.0.0.0:0", "unspecified", false},
		{"", "", false},
		{"abc", "", false},
		{":99999", "", false},
		{"1.2.3.4.5:0", "", false},
	}
	for _, tt := range tests {
		l, err := Listen(tt.addr)
		if tt.host == "" {
			if err == nil {
				l.Close()
				t.Errorf("Listen(%q) succeeded, want an error", tt.addr)
			} else if !strings.HasPrefix(err.Error(), "admin: listening on ") {
				t.Errorf("Listen(%q) error %q does not name the step", tt.addr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Listen(%q): %v", tt.addr, err)
			continue
		}
		ta := l.Addr().(*net.TCPAddr)
		ipOK := ta.IP.String() == tt.host || tt.host == "unspecified" && ta.IP.IsUnspecified()
		if !ipOK || ta.Port == 0 {
			t.Errorf("Listen(%q) listens on %v, want %s:<port>", tt.addr, ta, tt.host)
		}
		if IsLoopback(l.Addr()) != tt.loopback {
			t.Errorf("IsLoopback(%v) = %v, want %v", l.Addr(), !tt.loopback, tt.loopback)
		}
		l.Close()
	}
}

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1")}, true},
		{&net.TCPAddr{IP: net.ParseIP("127.1.2.3")}, true},
		{&net.TCPAddr{IP: net.ParseIP("::1")}, true},
		{&net.TCPAddr{IP: net.ParseIP("0.0.0.0")}, false},
		{&net.TCPAddr{IP: net.ParseIP("::")}, false},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3")}, false},
		{&net.UnixAddr{Name: "/tmp/x", Net: "unix"}, false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := IsLoopback(tt.addr); got != tt.want {
			t.Errorf("IsLoopback(%v) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestServeShutdown(t *testing.T) {
	a := New(Options{})
	l, err := Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(l) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Errorf("/healthz = %d %q", resp.StatusCode, body)
	}
	if err := a.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve returned %v after Shutdown, want nil", err)
	}
	l2, err := Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := a.Serve(l2); err != nil {
		t.Errorf("Serve after Shutdown = %v, want nil", err)
	}
}

func TestConcurrentObserver(t *testing.T) {
	a := New(Options{Stats: func() []proxy.RouteStats { return []proxy.RouteStats{{Route: "main"}} }})
	a.RoutesChanged([]string{"main"})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for j := range 100 {
				a.SessionStarted("main")
				a.UpstreamDialed("main", "db.example.com:5432", time.Millisecond, nil)
				a.SessionEnded("main", proxy.ResultCompleted)
				a.Refused("main", chain.ReasonLimit)
				if j%10 == 0 {
					a.RoutesChanged([]string{"main"})
					a.SetExpiry("main", time.Now(), time.Now())
					get(t, a.Handler(), "/readyz")
				}
			}
		})
	}
	for range 5 {
		scrape(t, a)
	}
	wg.Wait()
	fams := scrape(t, a)
	if got := value(t, fams, "pgverifyproxy_sessions_total", map[string]string{"route": "main", "result": "completed"}); got != 800 {
		t.Errorf("sessions_total{main,completed} = %v, want 800", got)
	}
}

// TestRootChanged: a live-trust route's change of root is counted and shown
// in its /readyz line, and the route stays ready.
func TestRootChanged(t *testing.T) {
	clk := newClock()
	a := New(Options{Now: clk.Now})
	a.RoutesChanged([]string{"live", "pinned"})
	if got := value(t, scrape(t, a), "pgverifyproxy_upstream_root_changes_total", map[string]string{"route": "live"}); got != 0 {
		t.Fatalf("root changes before any: %v, want a series at 0", got)
	}
	a.UpstreamDialed("live", "db.example.com:5432", time.Millisecond, nil)
	a.UpstreamDialed("pinned", "db.example.com:5432", time.Millisecond, nil)
	a.RootChanged("live", "CN=old root", "CN=new root\x1b[8m")
	clk.Add(2 * time.Second)
	a.UpstreamDialed("live", "db.example.com:5432", time.Millisecond, nil)
	code, body := get(t, a.Handler(), "/readyz")
	want := "ok   live: upstream verified 0s ago; root CA changed from \"CN=old root\" to \"CN=new root\\x1b[8m\" 2s ago (trust: live)\nok   pinned: upstream verified 2s ago\n"
	if code != 200 || body != want {
		t.Errorf("/readyz = %d %q, want 200 %q", code, body, want)
	}
	if got := value(t, scrape(t, a), "pgverifyproxy_upstream_root_changes_total", map[string]string{"route": "live"}); got != 1 {
		t.Errorf("root changes: %v, want 1", got)
	}
}

// TestReadyzEscapesServerText: a route's last error may quote text from a
// server or certificate not verified yet (an AIA server's status line):
// /readyz shows it on one line with control characters escaped.
func TestReadyzEscapesServerText(t *testing.T) {
	a := New(Options{})
	a.RoutesChanged([]string{"main"})
	a.UpstreamDialed("main", "db.example.com:5432", time.Millisecond, errors.New("aia: HTTP 404 \x1b]0;owned\x07\u202e\nOK all good"))
	_, body := get(t, a.Handler(), "/readyz")
	if want := "FAIL main: aia: HTTP 404 \\x1b]0;owned\\a\\u202e OK all good\n"; body != want {
		t.Errorf("/readyz body %q, want %q", body, want)
	}
}
