package admin

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHostHeaderCheck(t *testing.T) {
	a := New(Options{Quit: func(string) {}, Hosts: []string{"pgverifyproxy", "Metrics.Internal."}})
	tests := []struct {
		host, path, origin string
		want               int
	}{
		{host: "127.0.0.1:9543", path: "/healthz", want: 200},
		{host: "[::1]:9543", path: "/healthz", want: 200},
		{host: "10.1.2.3:9543", path: "/healthz", want: 200},
		{host: "[fe80::1%25eth0]:9543", path: "/healthz", want: 200},
		{host: "localhost:9543", path: "/healthz", want: 200},
		{host: "LOCALHOST.", path: "/healthz", want: 200},
		{host: "pgverifyproxy:9543", path: "/metrics", want: 200},
		{host: "metrics.internal", path: "/healthz", want: 200},
		// DNS rebinding: the attacker's name now resolves to 127.0.0.1.
		{host: "rebind.attacker.example:9543", path: "/healthz", want: 421},
		{host: "rebind.attacker.example:9543", path: "/metrics", want: 421},
		{host: "rebind.attacker.example:9543", path: "/readyz", want: 421},
		{host: "rebind.attacker.example:9543", path: "/quitquitquit", origin: "http://rebind.attacker.example:9543", want: 421},
		{host: "localhost.attacker.example", path: "/healthz", want: 421},
		{host: "127.0.0.1.nip.io", path: "/healthz", want: 421},
		{host: "pgverifyproxy.attacker.example", path: "/healthz", want: 421},
	}
	for _, tc := range tests {
		method := "GET"
		if tc.origin != "" {
			method = "POST"
		}
		req := httptest.NewRequest(method, "http://x"+tc.path, nil)
		req.Host = tc.host
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
			req.Header.Set("Sec-Fetch-Site", "same-origin")
		}
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s %s Host %q: %d %q, want %d", method, tc.path, tc.host, rec.Code, rec.Body.String(), tc.want)
		}
		if tc.want == 421 && !strings.Contains(rec.Body.String(), "admin_hosts") {
			t.Errorf("Host %q: the refusal does not say what to do: %q", tc.host, rec.Body.String())
		}
	}
}

// TestHostListReadiness: a route with a host list is ready while one of
// its hosts verifies, whatever the order of the dials; each host's last
// outcome is a series of pgverifyproxy_upstream_host_up.
func TestHostListReadiness(t *testing.T) {
	a := New(Options{})
	a.RoutesChanged([]string{"ha"})
	a.UpstreamDialed("ha", "db2:5432", time.Millisecond, nil)
	a.UpstreamDialed("ha", "db1:5432", time.Millisecond, errors.New("dial tcp: connection refused"))
	h := a.health(time.Now())
	if len(h) != 1 || !h[0].ready || !strings.Contains(h[0].detail, "hosts failing their last dial: db1:5432") {
		t.Fatalf("health %+v: want ready, naming db1:5432", h)
	}
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1:9543/metrics", nil))
	for _, want := range []string{`pgverifyproxy_upstream_host_up{host="db1:5432",route="ha"} 0`, `pgverifyproxy_upstream_host_up{host="db2:5432",route="ha"} 1`, `pgverifyproxy_route_ready{route="ha"} 1`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	a.UpstreamDialed("ha", "db2:5432", time.Millisecond, errors.New("verification failed"))
	if h := a.health(time.Now()); h[0].ready {
		t.Fatalf("both hosts failing: %+v, want not ready", h)
	}
}
