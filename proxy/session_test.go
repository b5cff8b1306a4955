package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestCancelRequestForwardedVerbatim(t *testing.T) {
	got := make(chan []byte, 1)
	up := &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
		var hdr [4]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			got <- nil
			return
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		copy(b, hdr[:])
		if _, err := io.ReadFull(conn, b[4:]); err != nil {
			got <- nil
			return
		}
		got <- b
	}}
	addr := startProxy(t, ClientTLSAllow, up.dial)
	for _, keyLen := range []int{4, 32, 256} {
		key := bytes.Repeat([]byte{0xAB}, keyLen)
		req, err := (&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: key}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		c := dialProxy(t, addr)
		c.Write(req)
		// The proxy closes the client once the upstream has the request.
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-got:
			if !bytes.Equal(b, req) {
				t.Fatalf("key %d: upstream got %x, want %x", keyLen, b, req)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("cancel request never reached the upstream")
		}
		up.done = make(chan struct{})
	}
}

func TestRelayAfterAuthenticationIsByteExact(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB, not messages
	echoed := make(chan []byte, 1)
	up := &fakeUpstream{t: t, done: make(chan struct{}), script: func(be *pgproto3.Backend, conn net.Conn) {
		if _, err := be.ReceiveStartupMessage(); err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		be.Send(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}})
		_ = be.Flush()
		be.SetAuthType(pgproto3.AuthTypeMD5Password)
		if msg, err := be.Receive(); err != nil {
			t.Errorf("upstream: %v", err)
			return
		} else if pm, ok := msg.(*pgproto3.PasswordMessage); !ok || pm.Password != "md5abc" {
			t.Errorf("upstream got %#v", msg)
		}
		be.Send(&pgproto3.AuthenticationOk{})
		_ = be.Flush()
		buf := make([]byte, len(payload))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Errorf("upstream read: %v", err)
		}
		echoed <- buf
		conn.Write(buf)
	}}
	addr := startProxy(t, ClientTLSAllow, up.dial)
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	fe := pgproto3.NewFrontend(c, c)
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.AuthenticationMD5Password); !ok {
		t.Fatalf("got %T", msg)
	}
	fe.Send(&pgproto3.PasswordMessage{Password: "md5abc"})
	fe.Flush()
	ok := make([]byte, 9)
	if _, err := io.ReadFull(c, ok); err != nil || ok[0] != 'R' {
		t.Fatalf("AuthenticationOk: %q %v", ok, err)
	}
	go c.Write(payload)
	back := make([]byte, len(payload))
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-echoed, payload) || !bytes.Equal(back, payload) {
		t.Fatal("relay altered bytes")
	}
}

func TestUpstreamDialErrorReachesClient(t *testing.T) {
	addr := startProxy(t, ClientTLSAllow, func(context.Context) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	})
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	expectFatal(t, pgproto3.NewFrontend(c, c), "08001", "cannot connect to upstream upstream.test:5432")
}

func TestStartupDeadlineFreesSilentClient(t *testing.T) {
	tcfg, _ := SelfSignedTLSConfig()
	srv, err := New(Config{Routes: []Route{{Listen: []string{"127.0.0.1:0"}, UpstreamAddr: "u:1",
		Dial: neverDial(t), TLSConfig: tcfg, StartupTimeout: 200 * time.Millisecond}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	defer srv.Close()
	c := dialProxy(t, srv.Addrs()[0].String())
	// Say nothing: the proxy must hang up on its own.
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("want the proxy to close the connection, got %v", err)
	}
}

func TestMaxConnections(t *testing.T) {
	obs := newRecObserver()
	addr := freeAddr(t)
	startServer(t, obs, Route{Name: "r", Listen: []string{addr}, Dial: echoUpstream(t), ClientTLS: ClientTLSDisable, MaxConnections: 2})
	c1, c2 := login(t, addr), login(t, addr)

	c3 := dialProxy(t, addr)
	c3.Write(startupBytes(t, map[string]string{"user": "alice"}))
	er := expectFatal(t, pgproto3.NewFrontend(c3, c3), "53300", "too many clients already: route r allows 2 connections")
	if er.Hint == "" {
		t.Error("the limit error has no hint")
	}
	// The refusal is counted after the client has been told.
	eventually(t, "the refusal is counted with cause limit", func() bool { return obs.get(obs.refused, "r/limit") == 1 })
	// A cancel request is not a session: it passes at the limit.
	cancelPkt := []byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2}
	cc := dialProxy(t, addr)
	cc.Write(cancelPkt)
	eventually(t, "the cancel request reached the upstream", func() bool { return obs.get(obs.ended, "r/cancel") == 1 })

	echo(t, c1, "still here")
	c2.Close()
	// The freed slot is taken by the next client.
	eventually(t, "a slot is freed when a session ends", func() bool {
		return obs.get(obs.ended, "r/completed") == 1
	})
	c4 := login(t, addr)
	echo(t, c4, "fourth")
}

func TestSlowClientIsNotCountedAgainstTheUpstream(t *testing.T) {
	obs := newRecObserver()
	addr := freeAddr(t)
	// An upstream dial that takes longer than what is left of the
	// client's startup deadline.
	slow := func(ctx context.Context) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	startServer(t, obs, Route{Name: "r", Listen: []string{addr}, Dial: slow, ClientTLS: ClientTLSDisable, StartupTimeout: 300 * time.Millisecond})
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	er := expectFatal(t, pgproto3.NewFrontend(c, c), "08001", "startup_timeout (300ms) ran out while connecting to upstream")
	if er.Hint == "" {
		t.Error("no hint")
	}
	eventually(t, "the refusal is counted", func() bool { return obs.get(obs.refused, "r/startup_timeout") == 1 })
	if n := obs.get(obs.dials, "r/error"); n != 0 {
		t.Errorf("%d failed dials reported against the upstream, want 0", n)
	}
}

// TestShutdownIsNoRefusal: a client still waiting for its upstream when the
// proxy closes gets FATAL 57P01 (or, as Close closes it at once, only the
// close), and its session ends as a shutdown, not as a refusal.
func TestShutdownIsNoRefusal(t *testing.T) {
	obs := newRecObserver()
	addr := freeAddr(t)
	dialing := make(chan struct{}, 1)
	slow := func(ctx context.Context) (net.Conn, error) {
		dialing <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	srv := startServer(t, obs, Route{Name: "r", Listen: []string{addr}, Dial: slow, ClientTLS: ClientTLSDisable, StartupTimeout: time.Minute})
	c := dialProxy(t, addr)
	c.Write(startupBytes(t, map[string]string{"user": "alice"}))
	select {
	case <-dialing:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not dial")
	}
	go srv.Close()
	if msg, err := pgproto3.NewFrontend(c, c).Receive(); err == nil {
		if er, ok := msg.(*pgproto3.ErrorResponse); !ok || er.Code != "57P01" {
			t.Errorf("got %#v, want FATAL 57P01 or the close", msg)
		}
	}
	eventually(t, "the session ends as a shutdown", func() bool { return obs.get(obs.ended, "r/shutdown") == 1 })
	if n := obs.get(obs.refused, "r/shutdown"); n != 0 || obs.get(obs.ended, "r/refused") != 0 {
		t.Errorf("a shutdown counted as a refusal: %v %v", obs.refused, obs.ended)
	}
}
