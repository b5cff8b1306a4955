package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fastWait polls every 10ms, each request bounded by 1s.
func fastWait(timeout time.Duration) waitPolicy {
	return waitPolicy{timeout: timeout, interval: 10 * time.Millisecond, attempt: time.Second}
}

// scriptedReadyz answers /readyz with 503 and a FAIL line for the first
// `failures` requests and 200 after that; it counts the requests.
func scriptedReadyz(t *testing.T, failures int32) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		i := n.Add(1)
		if i <= failures {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "FAIL default: not verified yet (request %d)\n", i)
			return
		}
		fmt.Fprint(w, "ok   default: upstream verified 0s ago\n")
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestWaitPollsUntilReady(t *testing.T) {
	srv, n := scriptedReadyz(t, 3)
	var out bytes.Buffer
	if err := runWait(context.Background(), &out, srv.Listener.Addr().String(), fastWait(10*time.Second)); err != nil {
		t.Fatalf("runWait: %v", err)
	}
	if got := n.Load(); got != 4 {
		t.Errorf("%d requests, want 4 (three 503s, then the 200)", got)
	}
	if out.String() != "ok   default: upstream verified 0s ago\n" {
		t.Errorf("printed %q, want only the ready answer", out.String())
	}
}

func TestWaitTimesOutWithTheLastAnswer(t *testing.T) {
	srv, n := scriptedReadyz(t, 1<<30)
	addr := srv.Listener.Addr().String()
	var out bytes.Buffer
	start := time.Now()
	err := runWait(context.Background(), &out, addr, fastWait(300*time.Millisecond))
	took := time.Since(start)
	if err == nil {
		t.Fatal("runWait returned nil for an endpoint that never passes")
	}
	want := "wait: not ready within 300ms: http://" + addr + "/readyz answered 503 Service Unavailable"
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("gave up after %s, want about 300ms", took)
	}
	if got := n.Load(); got < 3 {
		t.Errorf("asked %d times in 300ms at a 10ms interval", got)
	}
	// Only the last answer is printed: the failing route and its reason.
	printed := out.String()
	if strings.Count(printed, "\n") != 1 || !strings.HasPrefix(printed, "FAIL default: not verified yet (request ") {
		t.Errorf("printed %q, want the last answer only", printed)
	}
	if !strings.Contains(printed, fmt.Sprintf("(request %d)", n.Load())) {
		t.Errorf("printed %q, not the last of %d answers", printed, n.Load())
	}
}

func TestWaitNothingListens(t *testing.T) {
	addr := closedAddr(t)
	var out bytes.Buffer
	err := runWait(context.Background(), &out, addr, fastWait(200*time.Millisecond))
	if err == nil {
		t.Fatal("runWait returned nil with nothing listening")
	}
	for _, want := range []string{"wait: not ready within 200ms: cannot reach the admin endpoint at " + addr + ": ",
		"connection refused", "(is the proxy running with --admin " + addr + "?)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if out.Len() != 0 {
		t.Errorf("printed %q with no answer", out.String())
	}
}

// TestWaitForAProxyThatStartsLater: connection refused at first is waited
// out; the proxy's admin endpoint opens later on the same address.
func TestWaitForAProxyThatStartsLater(t *testing.T) {
	addr := closedAddr(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok   default: upstream verified 0s ago\n")
	}))
	t.Cleanup(srv.Close)
	started := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			started <- err
			return
		}
		srv.Listener.Close()
		srv.Listener = l
		srv.Start()
		started <- nil
	}()
	var out bytes.Buffer
	err := runWait(context.Background(), &out, addr, fastWait(10*time.Second))
	if serr := <-started; serr != nil {
		t.Skipf("the port was taken meanwhile: %v", serr)
	}
	if err != nil {
		t.Fatalf("runWait: %v", err)
	}
	if out.String() != "ok   default: upstream verified 0s ago\n" {
		t.Errorf("printed %q", out.String())
	}
}

// TestWaitAsksAgainAfterAHungRequest: one request that gets no answer is
// bounded by the attempt timeout and the next one is made.
func TestWaitAsksAgainAfterAHungRequest(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			<-r.Context().Done() // the first request never gets an answer
			return
		}
		fmt.Fprint(w, "ok   default: upstream verified 0s ago\n")
	}))
	t.Cleanup(srv.Close)
	p := waitPolicy{timeout: 10 * time.Second, interval: 10 * time.Millisecond, attempt: 200 * time.Millisecond}
	var out bytes.Buffer
	if err := runWait(context.Background(), &out, srv.Listener.Addr().String(), p); err != nil {
		t.Fatalf("runWait: %v", err)
	}
	if n.Load() != 2 {
		t.Errorf("%d requests, want 2", n.Load())
	}
}

func TestWaitHungEndpointTimesOut(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	p := waitPolicy{timeout: 500 * time.Millisecond, interval: 10 * time.Millisecond, attempt: 100 * time.Millisecond}
	err := runWait(context.Background(), &bytes.Buffer{}, addr, p)
	want := "wait: not ready within 500ms: cannot reach the admin endpoint at " + addr + ": no answer within 100ms"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %v, want %q...", err, want)
	}
}

// TestWaitReportsTheMostRecentOutcome: a proxy that answered 503 and then
// went away is reported as unreachable, with its last answer printed.
func TestWaitReportsTheMostRecentOutcome(t *testing.T) {
	srv, n := scriptedReadyz(t, 1<<30)
	addr := srv.Listener.Addr().String()
	go func() {
		for n.Load() < 2 {
			time.Sleep(5 * time.Millisecond)
		}
		srv.Close()
	}()
	var out bytes.Buffer
	err := runWait(context.Background(), &out, addr, fastWait(time.Second))
	if err == nil {
		t.Fatal("runWait returned nil")
	}
	for _, want := range []string{"wait: not ready within 1s: cannot reach the admin endpoint at " + addr,
		"; before that, http://" + addr + "/readyz answered 503 Service Unavailable (printed above)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if !strings.HasPrefix(out.String(), "FAIL default: not verified yet") {
		t.Errorf("printed %q, want the last answer", out.String())
	}
}

func TestWaitDoesNotFollowRedirects(t *testing.T) {
	ok := readyServer(t, http.StatusOK, "ok   default: upstream verified 3s ago\n")
	redirect := httptest.NewServer(http.RedirectHandler(ok.URL+"/readyz", http.StatusFound))
	t.Cleanup(redirect.Close)
	err := runWait(context.Background(), &bytes.Buffer{}, redirect.Listener.Addr().String(), fastWait(200*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "answered 302 Found") {
		t.Errorf("error %v, want a 302 that is not followed", err)
	}
}

func TestWaitIgnoresHTTPProxyVariables(t *testing.T) {
	srv, _ := scriptedReadyz(t, 0)
	// A proxy that would answer 200 to anything: it must not be asked.
	var proxied atomic.Int32
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	t.Cleanup(fake.Close)
	t.Setenv("HTTP_PROXY", fake.URL)
	t.Setenv("http_proxy", fake.URL)
	t.Setenv("NO_PROXY", "")
	if err := runWait(context.Background(), &bytes.Buffer{}, srv.Listener.Addr().String(), fastWait(2*time.Second)); err != nil {
		t.Fatalf("runWait: %v", err)
	}
	if proxied.Load() != 0 {
		t.Errorf("the request went through HTTP_PROXY")
	}
}

func TestWaitEscapesTheBody(t *testing.T) {
	hostile := readyServer(t, http.StatusServiceUnavailable, "FAIL default: \x1b]0;owned\x07\u202e\x1b[2J\n")
	var out bytes.Buffer
	_ = runWait(context.Background(), &out, hostile.Listener.Addr().String(), fastWait(100*time.Millisecond))
	if want := "FAIL default: \\x1b]0;owned\\x07\\u202e\\x1b[2J\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out.String(), want)
	}
}

func TestWaitCommand(t *testing.T) {
	ok := readyServer(t, http.StatusOK, "ok   default: upstream verified 3s ago\n")
	okAddr := ok.Listener.Addr().String()
	_, okPort, _ := net.SplitHostPort(okAddr)
	failing := readyServer(t, http.StatusServiceUnavailable, "FAIL wrong-name: certificate is not valid for host name \"db.wrong.example\"\n")
	failAddr := failing.Listener.Addr().String()
	closed := closedAddr(t)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: db.example.com:5432\nadmin: "+okAddr+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []cliCase{
		{name: "ready", args: []string{"--admin", okAddr}, code: 0, out: "ok   default: upstream verified 3s ago\n"},
		{name: "PORT means 127.0.0.1:PORT", args: []string{"--admin", okPort}, code: 0, out: "ok   default: upstream verified 3s ago\n"},
		{name: "from PGVERIFYPROXY_ADMIN", env: okAddr, code: 0, out: "ok   default: upstream verified 3s ago\n"},
		{name: "from the config file", args: []string{"--config", cfg}, code: 0, out: "ok   default: upstream verified 3s ago\n"},
		{name: "not ready within the timeout", args: []string{"--admin", failAddr, "--timeout", "700ms"}, code: 1,
			out:  "FAIL wrong-name: certificate is not valid for host name \"db.wrong.example\"\n",
			errs: []string{"pgverifyproxy: error: wait: not ready within 700ms: http://" + failAddr + "/readyz answered 503 Service Unavailable"}},
		{name: "nothing listens", args: []string{"--admin", closed, "--timeout", "700ms"}, code: 1,
			errs: []string{"wait: not ready within 700ms: cannot reach the admin endpoint at " + closed, "connection refused"}},
		{name: "no address", code: 2, errs: []string{"no admin address: pass --admin ADDR or set PGVERIFYPROXY_ADMIN"}},
		{name: "bad address", args: []string{"--admin", "localhost"}, code: 2, errs: []string{`admin address "localhost" must be PORT`}},
		{name: "zero timeout", args: []string{"--admin", okAddr, "--timeout", "0s"}, code: 2, errs: []string{"--timeout must be positive"}},
		{name: "bad timeout", args: []string{"--admin", okAddr, "--timeout", "soon"}, code: 2, errs: []string{`invalid argument "soon" for "--timeout"`}},
		{name: "extra argument", args: []string{"--admin", okAddr, "now"}, code: 2, errs: []string{`unknown command "now"`}},
		{name: "unknown flag", args: []string{"--max", "5s"}, code: 2, errs: []string{"unknown flag: --max"}},
	}
	runCLICases(t, tests, runWaitCmd)
}

func TestWaitDefaults(t *testing.T) {
	cmd := newWaitCmd()
	if f := cmd.Flags().Lookup("timeout"); f == nil || f.DefValue != defaultWaitTimeout.String() {
		t.Errorf("--timeout default %v, want %s", f, defaultWaitTimeout)
	}
	if waitInterval != 500*time.Millisecond {
		t.Errorf("poll interval %s, want 500ms", waitInterval)
	}
	if waitAttempt >= defaultWaitTimeout {
		t.Errorf("one request may take %s, the whole wait %s", waitAttempt, defaultWaitTimeout)
	}
}
