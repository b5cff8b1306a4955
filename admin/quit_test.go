package admin

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// quitRecorder counts the calls of an Options.Quit.
type quitRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (q *quitRecorder) quit(remote string) {
	q.mu.Lock()
	q.calls = append(q.calls, remote)
	q.mu.Unlock()
}

func (q *quitRecorder) got() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]string(nil), q.calls...)
}

// do sends one request to h and returns the recorder.
func do(h http.Handler, method, path string, header map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "http://127.0.0.1:9543"+path, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// readyAdmin is an Admin whose one route is ready.
func readyAdmin(o Options) *Admin {
	a := New(o)
	a.RoutesChanged([]string{"main"})
	a.UpstreamDialed("main", "db.example.com:5432", 0, nil)
	return a
}

func TestQuitOffByDefault(t *testing.T) {
	a := readyAdmin(Options{})
	for _, m := range []string{http.MethodPost, http.MethodGet} {
		if rec := do(a.Handler(), m, QuitPath, nil); rec.Code != http.StatusNotFound {
			t.Errorf("%s %s without Options.Quit = %d %q, want 404", m, QuitPath, rec.Code, rec.Body.String())
		}
	}
	if code, body := get(t, a.Handler(), "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after the refused quit = %d %q, want 200", code, body)
	}
}

func TestQuitEndpoint(t *testing.T) {
	var q quitRecorder
	a := readyAdmin(Options{Quit: q.quit})
	h := a.Handler()

	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete} {
		rec := do(h, m, QuitPath, nil)
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodPost {
			t.Errorf("%s %s = %d (Allow %q), want 405 with Allow: POST", m, QuitPath, rec.Code, rec.Header().Get("Allow"))
		}
		if m == http.MethodGet && !strings.Contains(rec.Body.String(), "use POST /quitquitquit") {
			t.Errorf("GET %s body %q does not name POST", QuitPath, rec.Body.String())
		}
	}
	if calls := q.got(); len(calls) != 0 {
		t.Fatalf("Quit called by a request other than POST: %q", calls)
	}
	if code, body := get(t, h, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the quit = %d %q, want 200", code, body)
	}

	rec := do(h, http.MethodPost, QuitPath, nil)
	if rec.Code != http.StatusOK || rec.Body.String() != "draining\n" {
		t.Fatalf("POST %s = %d %q, want 200 \"draining\\n\"", QuitPath, rec.Code, rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	// httptest.NewRequest's client address.
	if calls := q.got(); len(calls) != 1 || calls[0] != "192.0.2.1:1234" {
		t.Fatalf("Quit calls %q, want one from 192.0.2.1:1234", calls)
	}
	code, body := get(t, h, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "draining: shutting down\n") {
		t.Errorf("/readyz after the quit = %d %q, want 503 draining", code, body)
	}
	if code, _ := get(t, h, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz after the quit = %d, want 200", code)
	}

	// A repeated request is answered the same; the caller's Quit decides
	// what a second call means (run's ignores it).
	if rec := do(h, http.MethodPost, QuitPath, nil); rec.Code != http.StatusOK || rec.Body.String() != "draining\n" {
		t.Errorf("second POST = %d %q, want 200 draining", rec.Code, rec.Body.String())
	}
	if calls := q.got(); len(calls) != 2 {
		t.Errorf("Quit calls %q, want 2", calls)
	}
}

func TestQuitRefusesCrossSiteRequests(t *testing.T) {
	tests := []struct {
		name   string
		header map[string]string
		code   int
	}{
		{"no browser headers (curl, a Job's shell)", nil, http.StatusOK},
		{"Sec-Fetch-Site cross-site", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"Sec-Fetch-Site same-site (another port of localhost)", map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		{"Origin of another site, no Sec-Fetch-Site", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"Sec-Fetch-Site same-origin", map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusOK},
		{"Sec-Fetch-Site none (typed by the user)", map[string]string{"Sec-Fetch-Site": "none"}, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var q quitRecorder
			a := readyAdmin(Options{Quit: q.quit})
			rec := do(a.Handler(), http.MethodPost, QuitPath, tc.header)
			if rec.Code != tc.code {
				t.Fatalf("POST %s with %v = %d %q, want %d", QuitPath, tc.header, rec.Code, rec.Body.String(), tc.code)
			}
			wantCalls := 0
			if tc.code == http.StatusOK {
				wantCalls = 1
			}
			if calls := q.got(); len(calls) != wantCalls {
				t.Errorf("Quit calls %q, want %d", calls, wantCalls)
			}
			readyCode, _ := get(t, a.Handler(), "/readyz")
			if (readyCode == http.StatusOK) != (wantCalls == 0) {
				t.Errorf("/readyz = %d after a POST answered %d", readyCode, rec.Code)
			}
		})
	}
}

// TestQuitOverTheNetwork posts to a served endpoint: Quit gets the
// client's real address.
func TestQuitOverTheNetwork(t *testing.T) {
	var q quitRecorder
	a := readyAdmin(Options{Quit: q.quit})
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(l) }()
	t.Cleanup(func() {
		_ = a.Shutdown(t.Context())
		<-done
	})
	c := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Post("http://"+l.Addr().String()+QuitPath, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "draining\n" {
		t.Fatalf("POST = %d %q", resp.StatusCode, body)
	}
	calls := q.got()
	if len(calls) != 1 {
		t.Fatalf("Quit calls %q, want 1", calls)
	}
	if host, _, err := net.SplitHostPort(calls[0]); err != nil || host != "127.0.0.1" {
		t.Errorf("Quit got client address %q, want 127.0.0.1:PORT", calls[0])
	}
}
