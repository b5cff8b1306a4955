package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestObserverAndRouteStats(t *testing.T) {
	obs := newRecObserver()
	good, bad := freeAddr(t), freeAddr(t)
	srv := startServer(t, obs,
		Route{Name: "good", Listen: []string{good}, Dial: echoUpstream(t), ClientTLS: ClientTLSDisable},
		Route{Name: "bad", Listen: []string{bad}, ClientTLS: ClientTLSDisable, UpstreamAddr: "db:5432",
			Dial: func(context.Context) (net.Conn, error) { return nil, fmt.Errorf("connection refused") }})

	c := login(t, good)
	echo(t, c, "0123456789")
	st := srv.RouteStats()
	if len(st) != 2 || st[0].Route != "good" || st[0].Active != 1 {
		t.Fatalf("route stats %+v, want good with 1 active first", st)
	}
	// The relay counts from AuthenticationOk on: the server's 6-byte
	// ReadyForQuery, then the echoed payload. A copier adds what it wrote
	// once its write returns, which can be after the client has read the
	// echo, so the figures are awaited (and must then be exact).
	var up, down int64
	if !poll(func() bool {
		st := srv.RouteStats()[0]
		up, down = st.BytesToUpstream, st.BytesToClient
		return up == 10 && down == 16
	}) {
		t.Errorf("bytes to upstream/client = %d/%d, want 10/16", up, down)
	}
	c.Close()

	b := dialProxy(t, bad)
	b.Write(startupBytes(t, map[string]string{"user": "alice"}))
	expectFatal(t, pgproto3.NewFrontend(b, b), "08001", "cannot connect to upstream db:5432")

	eventually(t, "both sessions ended", func() bool {
		return obs.get(obs.ended, "good/completed") == 1 && obs.get(obs.ended, "bad/refused") == 1
	})
	for k, want := range map[string]int{"good": 1, "bad": 1} {
		if got := obs.get(obs.started, k); got != want {
			t.Errorf("sessions started on %s = %d, want %d", k, got, want)
		}
	}
	if obs.get(obs.refused, "bad/upstream_unreachable") != 1 || obs.get(obs.dials, "bad/error") != 1 || obs.get(obs.dials, "good/ok") != 1 {
		t.Errorf("refused %v, dials %v", obs.refused, obs.dials)
	}
	if err := srv.Probe(context.Background(), "good"); err != nil {
		t.Errorf("probe good: %v", err)
	}
	if err := srv.Probe(context.Background(), "bad"); err == nil {
		t.Error("probe bad: no error")
	}
	if obs.get(obs.dials, "good/ok") != 2 || obs.get(obs.dials, "bad/error") != 2 {
		t.Errorf("probes not reported: %v", obs.dials)
	}
	eventually(t, "no session active", func() bool { return srv.RouteStats()[0].Active == 0 })
}

func TestReloadKeepsRunningSessions(t *testing.T) {
	obs := newRecObserver()
	a, b := freeAddr(t), freeAddr(t)
	var mu sync.Mutex
	dials := map[string]int{}
	counted := func(tag string) DialFunc {
		inner := echoUpstream(t)
		return func(ctx context.Context) (net.Conn, error) {
			mu.Lock()
			dials[tag]++
			mu.Unlock()
			return inner(ctx)
		}
	}
	srv := startServer(t, obs, Route{Name: "a", Listen: []string{a}, Dial: counted("a1"), ClientTLS: ClientTLSDisable})
	running := login(t, a)

	// Add route b; route a gets a new dialer.
	if err := srv.Reload([]Route{
		{Name: "a", Listen: []string{a}, Dial: counted("a2"), ClientTLS: ClientTLSDisable},
		{Name: "b", Listen: []string{b}, Dial: counted("b"), ClientTLS: ClientTLSDisable},
	}); err != nil {
		t.Fatal(err)
	}
	echo(t, running, "survived the reload")
	echo(t, login(t, a), "new client on a")
	echo(t, login(t, b), "new client on b")
	mu.Lock()
	if dials["a1"] != 1 || dials["a2"] != 1 || dials["b"] != 1 {
		t.Errorf("dials %v: want the new route settings for new clients only", dials)
	}
	mu.Unlock()

	// A reload that cannot open its listener changes nothing.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	err = srv.Reload([]Route{{Name: "a", Listen: []string{a, busy.Addr().String()}, Dial: counted("a3"), ClientTLS: ClientTLSDisable}})
	if err == nil {
		t.Fatal("reload onto a busy address succeeded")
	}
	echo(t, login(t, b), "b still served after a failed reload")

	// Dropping b closes its listener but not its running session.
	onB := login(t, b)
	if err := srv.Reload([]Route{{Name: "a", Listen: []string{a}, Dial: counted("a2"), ClientTLS: ClientTLSDisable}}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", b, time.Second); err == nil {
		c.Close()
		t.Error("the removed route's listener still accepts")
	}
	echo(t, onB, "b session survives its route's removal")
	echo(t, running, "a session still fine")
	if got := srv.Routes(); len(got) != 1 || got[0] != "a" {
		t.Errorf("routes in service %v", got)
	}
	obs.mu.Lock()
	if len(obs.routes) != 3 {
		t.Errorf("RoutesChanged calls %v, want 3 (listen, two good reloads)", obs.routes)
	}
	obs.mu.Unlock()
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	addr := freeAddr(t)
	srv := startServer(t, nil, Route{Name: "r", Listen: []string{addr}, Dial: echoUpstream(t), ClientTLS: ClientTLSDisable})
	c := login(t, addr)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- srv.Shutdown(ctx) }()
	eventually(t, "the listener closed", func() bool {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	echo(t, c, "still relayed while draining")
	if err := srv.Reload([]Route{{Name: "r", Listen: []string{addr}, Dial: echoUpstream(t), ClientTLS: ClientTLSDisable}}); err == nil {
		t.Error("reload accepted while draining")
	}
	cancel() // drain time is up
	if err := <-done; err == nil {
		t.Error("Shutdown reported a clean drain after its context ended")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("session still open after the drain ended")
	}
}

// flakyListener fails its first Accept with EMFILE, as a process out of
// file descriptors sees.
type flakyListener struct {
	net.Listener
	failed atomic.Bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestAcceptErrorsThatPassDoNotStopTheServer(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: inner}
	srv := startServer(t, nil, Route{Name: "r", Listeners: []net.Listener{fl}, Dial: echoUpstream(t), ClientTLS: ClientTLSDisable})
	c := login(t, inner.Addr().String())
	echo(t, c, "accepted after EMFILE")
	if !fl.failed.Load() {
		t.Fatal("the listener never failed")
	}
	// A reload that keeps the same pre-opened listener keeps serving it.
	if err := srv.Reload([]Route{{Name: "r", Listeners: []net.Listener{fl}, Dial: echoUpstream(t), ClientTLS: ClientTLSDisable}}); err != nil {
		t.Fatal(err)
	}
	echo(t, login(t, inner.Addr().String()), "still served after a reload")
	echo(t, c, "and the first session too")
}

// TestCloseEndsSessionsWaitingForUpstreamAuth: Close does not wait for an
// upstream that never answers the startup message (it would have waited
// for the startup deadline, a minute by default).
func TestCloseEndsSessionsWaitingForUpstreamAuth(t *testing.T) {
	got := make(chan struct{}, 1)
	silent := func(context.Context) (net.Conn, error) {
		c, s := net.Pipe()
		go func() {
			buf := make([]byte, 1024)
			if _, err := s.Read(buf); err == nil {
				got <- struct{}{}
			}
			io.Copy(io.Discard, s) // reads on, answers nothing
		}()
		return c, nil
	}
	addr := freeAddr(t)
	srv := startServer(t, newRecObserver(), Route{Name: "r", Listen: []string{addr}, Dial: silent, ClientTLS: ClientTLSDisable, StartupTimeout: time.Minute})
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the startup message did not reach the upstream")
	}
	done := make(chan struct{})
	start := time.Now()
	go func() { srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the upstream's answer")
	}
	t.Logf("Close returned after %v", time.Since(start).Round(time.Millisecond))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client connection: %v, want it closed", err)
	}
}
