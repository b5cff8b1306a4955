package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readyServer answers /readyz with code and body, and 404 elsewhere.
func readyServer(t *testing.T, code int, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestReadyCommand(t *testing.T) {
	ok := readyServer(t, http.StatusOK, "ok   default: upstream verified 3s ago\n")
	okAddr := ok.Listener.Addr().String()
	_, okPort, _ := net.SplitHostPort(okAddr)
	failing := readyServer(t, http.StatusServiceUnavailable,
		"ok   main: upstream verified 2s ago\nFAIL wrong-name: x509: certificate is valid for localhost, not db.wrong.example\n")
	noNewline := readyServer(t, http.StatusOK, "ok   default: upstream verified 1s ago")
	// An endpoint (or something in its place) answering with control characters.
	hostile := readyServer(t, http.StatusOK, "ok   default: \x1b]0;owned\x07\u202e\x1b[2J\n")
	// A server that is not the admin endpoint: 404 on /readyz.
	other := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(other.Close)
	// A redirect is not an answer: ready must not follow it to a 200.
	redirect := httptest.NewServer(http.RedirectHandler(ok.URL+"/readyz", http.StatusFound))
	t.Cleanup(redirect.Close)
	// Accepts but never answers: the timeout applies.
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(hang.Close)
	closed := closedAddr(t)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: db.example.com:5432\nadmin: "+okAddr+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []cliCase{
		{name: "ready", args: []string{"--admin", okAddr}, code: 0,
			out: "ok   default: upstream verified 3s ago\n"},
		{name: "not ready prints every route's line", args: []string{"--admin", failing.Listener.Addr().String()}, code: 1,
			out:  "ok   main: upstream verified 2s ago\nFAIL wrong-name: x509: certificate is valid for localhost, not db.wrong.example\n",
			errs: []string{"ready: not ready: http://" + failing.Listener.Addr().String() + "/readyz answered 503 Service Unavailable"}},
		{name: "body without final newline", args: []string{"--admin", noNewline.Listener.Addr().String()}, code: 0,
			out: "ok   default: upstream verified 1s ago\n"},
		{name: "control characters in the body are escaped", args: []string{"--admin", hostile.Listener.Addr().String()}, code: 0,
			out: "ok   default: \\x1b]0;owned\\x07\\u202e\\x1b[2J\n"},
		{name: "PORT means 127.0.0.1:PORT", args: []string{"--admin", okPort}, code: 0,
			out: "ok   default: upstream verified 3s ago\n"},
		{name: ":PORT means 127.0.0.1:PORT", args: []string{"--admin", ":" + okPort}, code: 0,
			out: "ok   default: upstream verified 3s ago\n"},
		{name: "0.0.0.0:PORT is asked on loopback", args: []string{"--admin", "0.0.0.0:" + okPort}, code: 0,
			out: "ok   default: upstream verified 3s ago\n"},
		{name: "from PGVERIFYPROXY_ADMIN", env: okAddr, code: 0,
			out: "ok   default: upstream verified 3s ago\n"},
		{name: "the flag beats PGVERIFYPROXY_ADMIN", args: []string{"--admin", failing.Listener.Addr().String()}, env: okAddr, code: 1,
			errs: []string{"answered 503"}},
		{name: "from the config file", args: []string{"--config", cfg}, code: 0,
			out: "ok   default: upstream verified 3s ago\n"},
		{name: "PGVERIFYPROXY_ADMIN beats the config file", args: []string{"--config", cfg}, env: failing.Listener.Addr().String(), code: 1,
			errs: []string{"answered 503"}},
		{name: "unreachable", args: []string{"--admin", closed}, code: 1,
			errs: []string{"pgverifyproxy: error: ready: cannot reach the admin endpoint at " + closed + ": ",
				"connection refused", "(is the proxy running with --admin " + closed + "?)"}},
		{name: "unreachable PORT names the loopback address", args: []string{"--admin", strings.TrimPrefix(closed, "127.0.0.1:")}, code: 1,
			errs: []string{"cannot reach the admin endpoint at " + closed + ": ", "(is the proxy running with --admin " + closed + "?)"}},
		{name: "no answer within the timeout", args: []string{"--admin", hang.Listener.Addr().String(), "--timeout", "200ms"}, code: 1,
			errs: []string{"cannot reach the admin endpoint at " + hang.Listener.Addr().String() + ": no answer within 200ms"}},
		{name: "not the admin endpoint", args: []string{"--admin", other.Listener.Addr().String()}, code: 1,
			errs: []string{"answered 404 Not Found"}},
		{name: "redirect is not followed", args: []string{"--admin", redirect.Listener.Addr().String()}, code: 1,
			errs: []string{"answered 302 Found"}},
		{name: "no address", code: 2,
			errs: []string{"no admin address: pass --admin ADDR or set PGVERIFYPROXY_ADMIN"}},
		{name: "bad address", args: []string{"--admin", "localhost"}, code: 2,
			errs: []string{`admin address "localhost" must be PORT, :PORT or HOST:PORT`}},
		{name: "port out of range", args: []string{"--admin", "70000"}, code: 2,
			errs: []string{`admin address "70000" must be`}},
		{name: "unknown flag", args: []string{"--bogus"}, code: 2,
			errs: []string{"unknown flag: --bogus"}},
		{name: "bad timeout", args: []string{"--admin", okAddr, "--timeout", "soon"}, code: 2,
			errs: []string{`invalid argument "soon" for "--timeout"`}},
		{name: "zero timeout", args: []string{"--admin", okAddr, "--timeout", "0s"}, code: 2,
			errs: []string{"--timeout must be positive"}},
		{name: "extra argument", args: []string{"--admin", okAddr, "now"}, code: 2,
			errs: []string{`unknown command "now"`}},
		{name: "missing config file", args: []string{"--config", filepath.Join(t.TempDir(), "nope.yaml")}, code: 2,
			errs: []string{"reading config file"}},
	}
	runCLICases(t, tests, runReadyCmd)
}

func TestReadyAddr(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"9543", "127.0.0.1:9543", ""},
		{":9543", "127.0.0.1:9543", ""},
		{" 127.0.0.1:9543 ", "127.0.0.1:9543", ""},
		{"0.0.0.0:9543", "127.0.0.1:9543", ""},
		{"[::]:9543", "[::1]:9543", ""},
		{"[::1]:9543", "[::1]:9543", ""},
		{"admin.internal:9543", "admin.internal:9543", ""},
		{"", "", "no admin address"},
		{"0", "", "must be PORT"},
		{"host:", "", "must be PORT"},
		{"host:http", "", "must be PORT"},
		{"::1", "", "must be PORT"},
	}
	for _, tc := range tests {
		got, err := readyAddr(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("readyAddr(%q) = %q, %v; want error with %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("readyAddr(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
