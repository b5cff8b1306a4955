package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// TestDNSRecheckEndsSessionsOnOldAddress: with dns_recheck, a session
// whose upstream address the host name no longer resolves to is ended; a
// failed lookup, or a name that still resolves to it, leaves it alone.
func TestDNSRecheckEndsSessionsOnOldAddress(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	s, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	dial := scriptedDial(pki, s.Addr)
	type answer struct {
		addrs []netip.Addr
		err   error
	}
	var dns atomic.Pointer[answer]
	dns.Store(&answer{addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	route := Route{Name: "dns", Listen: []string{"127.0.0.1:0"}, ClientTLS: ClientTLSDisable, StartupTimeout: 10 * time.Second,
		Hosts:      []UpstreamHost{{Addr: "db.test:" + fmt.Sprint(s.Port), Dial: dial}},
		DNSRecheck: 50 * time.Millisecond,
		Resolve: func(context.Context, string) ([]netip.Addr, error) {
			a := dns.Load()
			return a.addrs, a.err
		}}
	srv, err := New(Config{Routes: []Route{route}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	t.Cleanup(func() { srv.Close() })

	c := dialProxy(t, srv.Addrs()[0].String())
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "alice", "database": "db"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	alive := func() bool {
		fe.Send(&pgproto3.Query{String: "select 1"})
		if err := fe.Flush(); err != nil {
			return false
		}
		for {
			m, err := fe.Receive()
			if err != nil {
				return false
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				return true
			}
		}
	}
	// A failed lookup, then the same address: the session stays.
	dns.Store(&answer{err: &net.DNSError{Err: "server misbehaving", Name: "db.test"}})
	time.Sleep(300 * time.Millisecond)
	if !alive() {
		t.Fatal("a failed lookup ended the session")
	}
	dns.Store(&answer{addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.9")}})
	time.Sleep(300 * time.Millisecond)
	if !alive() {
		t.Fatal("a name that still resolves to the session's address ended it")
	}
	// The name moves: the session is ended.
	dns.Store(&answer{addrs: []netip.Addr{netip.MustParseAddr("127.0.0.2")}})
	deadline := time.Now().Add(5 * time.Second)
	for alive() {
		if time.Now().After(deadline) {
			t.Fatal("the session on the old address still runs 5 s after the name moved")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestHostListRoles: a host list whose first host is a standby. With the
// role reported at login (PostgreSQL 14+) or asked with a query where the
// server does not report it (13 and older), the proxy skips the standby
// unseen and the client lands on the primary; only the old-style servers
// get a query.
func TestHostListRoles(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	for _, params := range []bool{true, false} {
		t.Run(fmt.Sprintf("role reported at login: %v", params), func(t *testing.T) {
			var servers []*testpki.ScriptedServer
			var hosts []UpstreamHost
			for _, standby := range []bool{true, false} {
				s, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate), Standby: standby, RoleParams: params})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(s.Close)
				servers = append(servers, s)
				hosts = append(hosts, UpstreamHost{Addr: s.Addr, Dial: scriptedDial(pki, s.Addr)})
			}
			route := Route{Name: "ha", Listen: []string{"127.0.0.1:0"}, ClientTLS: ClientTLSDisable, StartupTimeout: 10 * time.Second,
				Hosts: hosts, TargetSessionAttrs: AttrsReadWrite}
			srv, err := New(Config{Routes: []Route{route}, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Listen(); err != nil {
				t.Fatal(err)
			}
			go srv.Serve(context.Background())
			t.Cleanup(func() { srv.Close() })
			c := dialProxy(t, srv.Addrs()[0].String())
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			fe := pgproto3.NewFrontend(c, c)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "alice", "database": "db"}})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			oks := 0
			for {
				m, err := fe.Receive()
				if err != nil {
					t.Fatalf("login: %v", err)
				}
				if _, ok := m.(*pgproto3.AuthenticationOk); ok {
					oks++
				}
				if e, ok := m.(*pgproto3.ErrorResponse); ok {
					t.Fatalf("FATAL %s %s", e.Code, e.Message)
				}
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			if oks != 1 {
				t.Fatalf("the client saw %d AuthenticationOk, want one login", oks)
			}
			if n := len(servers[1].Startups()); n != 1 {
				t.Fatalf("the primary got %d sessions, want the client's", n)
			}
			wantQueries := 0
			if !params {
				wantQueries = 1
			}
			if q := servers[0].RoleQueries(); q != wantQueries {
				t.Fatalf("the standby got %d role queries, want %d", q, wantQueries)
			}
		})
	}
}
