package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestLoopLegs: what the event loop takes over, and what falls back to the
// goroutine relay.
func TestLoopLegs(t *testing.T) {
	ln := rigListener(t)
	_, tcp := connectLeg(t, ln, legTCP, false)
	_, tlsLeg := connectLeg(t, ln, legTLS, true)
	_, pipe := connectLeg(t, ln, legPipe, false)
	o, i := rigTCPPair(t, ln)
	t.Cleanup(func() { o.Close(); i.Close() })
	plainTLS := tls.Client(i, rigClientTLS) // not on a rawsock.Conn: crypto/tls owns the socket
	for _, tc := range []struct {
		name string
		c    net.Conn
		want bool
	}{
		{"plaintext TCP", tcp, true},
		{"TLS on rawsock.Conn", tlsLeg, true},
		{"TLS on a bare TCPConn", plainTLS, false},
		{"net.Pipe", pipe, false},
	} {
		if _, ok := loopLegOf(tc.c); ok != tc.want {
			t.Errorf("%s: handed over = %v, want %v", tc.name, ok, tc.want)
		}
	}
}

// TestLoopRelaysOnLoop: with socket legs, a loop-mode relay runs on the
// loop (it does not fall back), and with a pipe it falls back.
func TestLoopRelaysOnLoop(t *testing.T) {
	for _, tc := range []struct {
		legs     [2]legKind
		wantLoop bool
	}{
		{[2]legKind{legTCP, legTLS}, true},
		{[2]legKind{legTLS, legTLS}, true},
		{[2]legKind{legTCP, legTCP}, true},
		{[2]legKind{legPipe, legPipe}, false},
	} {
		t.Run(relayLegName(tc.legs), func(t *testing.T) {
			before := loopHandOvers.Load()
			r := startTestRelay(t, relayLoop, tc.legs[0], tc.legs[1])
			echoThrough(t, r, []byte("ping"))
			if got := loopHandOvers.Load() > before; got != tc.wantLoop {
				t.Errorf("on the loop = %v, want %v", got, tc.wantLoop)
			}
		})
	}
}

// echoThrough sends msg from the app to the server and back.
func echoThrough(t *testing.T, r *testRelay, msg []byte) {
	t.Helper()
	got := make([]byte, len(msg))
	for _, pair := range [][2]net.Conn{{r.app, r.server}, {r.server, r.app}} {
		if _, err := pair[0].Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = pair[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(pair[1], got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("read %q, %v; want %q", got, err, msg)
		}
	}
}

// TestLoopHandOverKeepsTLSBuffered: what crypto/tls had read before the
// hand-over (the rest of a record the login read part of) reaches the
// client at once, though the socket holds nothing more, and before what
// the server sends next.
func TestLoopHandOverKeepsTLSBuffered(t *testing.T) {
	ln := rigListener(t)
	app, pc := connectLeg(t, ln, legTCP, false)
	server, pu := connectLeg(t, ln, legTLS, true)
	first := bytes.Repeat([]byte("a"), 3000) // one record
	if _, err := server.Write(first); err != nil {
		t.Fatal(err)
	}
	// The login reads the start of the record: crypto/tls reads all of it.
	head := make([]byte, 10)
	if _, err := io.ReadFull(pu, head); err != nil {
		t.Fatal(err)
	}
	done := loopRelay(t, pc, pu, nil)
	got := make([]byte, len(first)-10)
	_ = app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.ReadFull(app, got); err != nil {
		t.Fatalf("app read %d of the %d bytes crypto/tls held: %v", n, len(got), err)
	}
	if !bytes.Equal(got, first[10:]) {
		t.Fatalf("app got different bytes, first difference at %d", relayFirstDiff(got, first[10:]))
	}
	second := bytes.Repeat([]byte("b"), 40000) // three records
	if _, err := server.Write(second); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(second))
	if _, err := io.ReadFull(app, got); err != nil || !bytes.Equal(got, second) {
		t.Fatalf("app read %v after the buffered bytes (first difference at %d)", err, relayFirstDiff(got, second))
	}
	app.Close()
	server.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end")
	}
}

// TestLoopHandOverEndsStrayReads: a goroutine still blocked in a Read of a
// connection when the loop takes it over (a library's background reader)
// gets net.ErrClosed and no byte: every byte the server sends after the
// hand-over reaches the client. The Read on the TLS connection cannot
// take bytes either: its transport's socket is closed under it.
func TestLoopHandOverEndsStrayReads(t *testing.T) {
	for _, legs := range [][2]legKind{{legTCP, legTLS}, {legTCP, legTCP}} {
		t.Run(relayLegName(legs), func(t *testing.T) {
			ln := rigListener(t)
			app, pc := connectLeg(t, ln, legs[0], false)
			server, pu := connectLeg(t, ln, legs[1], true)
			stray := func(c net.Conn) chan error {
				ch := make(chan error, 1)
				go func() {
					b := make([]byte, 64)
					n, err := c.Read(b)
					if n > 0 {
						err = errors.New("stray read took " + string(b[:n]))
					}
					ch <- err
				}()
				return ch
			}
			var rawUp net.Conn = pu
			if tc, ok := pu.(*tls.Conn); ok {
				rawUp = tc.NetConn()
			}
			upRead, clientRead := stray(rawUp), stray(pc)
			time.Sleep(20 * time.Millisecond) // both reads are parked in the poller
			loopRelay(t, pc, pu, nil)
			for name, ch := range map[string]chan error{"upstream": upRead, "client": clientRead} {
				select {
				case err := <-ch:
					if !errors.Is(err, net.ErrClosed) {
						t.Errorf("stray read on the %s leg ended with %v, want net.ErrClosed", name, err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("stray read on the %s leg still blocked after the hand-over", name)
				}
			}
			r := &testRelay{app: app, server: server}
			echoThrough(t, r, []byte("after the hand-over"))
		})
	}
}

// TestLoopFairness: a session that streams without pause does not starve
// another on the same loop: small round trips go on while it streams.
func TestLoopFairness(t *testing.T) {
	pool := newLoopPool(1)
	t.Cleanup(pool.stop)
	ln := rigListener(t)
	start := func() (app, server net.Conn) {
		a, pc := connectLeg(t, ln, legTCP, false)
		s, pu := connectLeg(t, ln, legTLS, true)
		loopRelay(t, pc, pu, pool)
		return a, s
	}
	bulkApp, bulkServer := start()
	app, server := start()
	quit := make(chan struct{})
	go func() { // the server streams to its app as fast as the loop relays
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for {
			select {
			case <-quit:
				return
			default:
			}
			if _, err := bulkServer.Write(chunk); err != nil {
				return
			}
		}
	}()
	go func() { _, _ = io.Copy(io.Discard, bulkApp) }()
	defer close(quit)
	r := &testRelay{app: app, server: server}
	for range 50 {
		echoThrough(t, r, []byte("small"))
	}
}

// TestLoopPoolStop: a stopped pool's loops end and close their
// descriptors; stopping again, and a command posted late (a linger timer
// firing after the Server closed), are harmless and write to no
// descriptor.
func TestLoopPoolStop(t *testing.T) {
	pool := newLoopPool(2)
	if err := pool.start(); err != nil {
		t.Fatal(err)
	}
	ln := rigListener(t)
	_, pc := connectLeg(t, ln, legTCP, false)
	_, pu := connectLeg(t, ln, legTLS, true)
	var stop stopHook
	done := make(chan relayStats, 1)
	go func() { done <- relay(pc, pu, nil, relayLoop, relayEnv{loops: pool, register: stop.register}) }()
	eventually(t, "the session is on a loop", func() bool {
		stop.mu.Lock()
		defer stop.mu.Unlock()
		return stop.f != nil
	})
	stop.stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not end")
	}
	pool.stop()
	pool.stop()
	for i, l := range pool.loops {
		eventually(t, "loop ended", func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.closed
		})
		ran := false
		l.post(func() { ran = true })
		if ran || len(l.cmds) != 0 {
			t.Errorf("loop %d: a command posted after the end was queued or ran", i)
		}
	}
	// A session that comes after the stop goes to the goroutine relay.
	if err := pool.start(); err != errLoopsStopped {
		t.Fatalf("start after stop: %v, want %v", err, errLoopsStopped)
	}
	_, pc2 := connectLeg(t, ln, legTCP, false)
	_, pu2 := connectLeg(t, ln, legTLS, true)
	if _, ok := relayOnLoop(pc2, pu2, nil, pool, nil); ok {
		t.Error("a stopped pool took a session")
	}
}

// TestSessionsRelayOnLoop: whatever the client leg (plaintext, TLS after an
// SSLRequest, PostgreSQL 17's direct TLS), a session of the Server is
// handed to the event loop after its login, and still relays both ways.
func TestSessionsRelayOnLoop(t *testing.T) {
	addr := startProxy(t, ClientTLSAllow, echoUpstream(t))
	for _, leg := range []string{"plaintext", "sslrequest", "direct"} {
		t.Run(leg, func(t *testing.T) {
			before := loopHandOvers.Load()
			c := dialProxy(t, addr)
			switch leg {
			case "sslrequest":
				if _, err := c.Write(sslRequest()); err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil || b[0] != 'S' {
					t.Fatalf("SSLRequest answer %q, %v", b, err)
				}
				c = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			case "direct":
				c = tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnPostgres}})
			}
			if _, err := c.Write(startupBytes(t, map[string]string{"user": "alice"})); err != nil {
				t.Fatal(err)
			}
			fe := pgproto3.NewFrontend(c, c)
			for range 2 { // AuthenticationOk, ReadyForQuery
				if _, err := fe.Receive(); err != nil {
					t.Fatal(err)
				}
			}
			echo(t, c, "after the login")
			if loopHandOvers.Load() == before {
				t.Error("the session was not handed to the event loop")
			}
		})
	}
}
