package admin

import (
	"net/http/httptest"
	"strings"
	"testing"
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
