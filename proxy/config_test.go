package proxy

import (
	"net"
	"strings"
	"testing"
)

func TestRelayListenerRules(t *testing.T) {
	stored := func() ([]byte, error) { return []byte("x"), nil }
	tests := []struct {
		name   string
		listen []string
		mode   ClientTLSMode
		stored bool
		// generated: the client TLS certificate is the in-memory one.
		generated bool
		listeners []net.Listener
		wantErr   string
	}{
		{name: "loopback v4", listen: []string{"127.0.0.1:5432"}},
		{name: "loopback v6", listen: []string{"[::1]:5432"}},
		{name: "localhost", listen: []string{"localhost:5432"}},
		{name: "unix socket", listen: []string{"unix:/run/pg"}},
		{name: "all interfaces in plaintext", listen: []string{"127.0.0.1:5432", "0.0.0.0:5432"}, wantErr: "0.0.0.0:5432 is not loopback: set client_tls: require"},
		{name: "empty host means all interfaces", listen: []string{":5432"}, wantErr: ":5432 is not loopback"},
		{name: "all interfaces with TLS required", listen: []string{"0.0.0.0:5432"}, mode: ClientTLSRequire},
		{name: "stored password on loopback", listen: []string{"127.0.0.1:5432", "unix:/run/pg"}, stored: true},
		{name: "stored password on all interfaces", listen: []string{"0.0.0.0:5432"}, mode: ClientTLSRequire, stored: true, wantErr: "a stored password lets anyone who reaches the listener in"},
		{name: "all interfaces with the generated certificate", listen: []string{"0.0.0.0:5432"}, mode: ClientTLSRequire, generated: true, wantErr: "clients cannot verify it"},
		{name: "a passed-in listener of unknown kind", listeners: []net.Listener{oddListener{}}, wantErr: "odd:1 is not loopback"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Route{Name: "r", Listen: tc.listen, Listeners: tc.listeners, Dial: neverDial(t), ClientTLS: tc.mode, TLSConfig: testTLSConfig(t),
				ClientTLSGenerated: tc.generated, Auth: AuthRelay}
			if tc.mode == "" {
				r.ClientTLS = ClientTLSAllow
			}
			if tc.stored {
				r.StoredPassword = stored
			}
			for _, a := range tc.listen {
				if strings.HasPrefix(a, unixPrefix) && unixListenersUnavailable(defaultSocketPort) != nil {
					// Windows: refused when the route is validated.
					tc.wantErr = `route r: listen address "unix:/run/pg": unix-socket listeners are not available on Windows: listen on 127.0.0.1:5432`
				}
			}
			err := r.validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v; want %q", err, tc.wantErr)
			}
		})
	}
	r := Route{Name: "p", Listen: []string{"127.0.0.1:1"}, Dial: neverDial(t), ClientTLS: ClientTLSDisable, StoredPassword: stored, Auth: AuthPassthrough}
	if err := r.validate(); err == nil || !strings.Contains(err.Error(), "needs auth relay or auto") {
		t.Fatalf("stored password in passthrough: %v", err)
	}
}

// oddListener has an address that is neither TCP nor unix.
type oddListener struct{ net.Listener }

type oddAddr struct{}

func (oddAddr) Network() string { return "odd" }
func (oddAddr) String() string  { return "odd:1" }

func (oddListener) Addr() net.Addr { return oddAddr{} }

func TestAutoAsksOnlyWhereClientsAreLocalOrCanVerify(t *testing.T) {
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	tests := []struct {
		name          string
		auth          AuthMode
		generated     bool
		local, remote net.Addr
		wantAsk       bool
	}{
		{"loopback, generated certificate", AuthAuto, true, tcp("127.0.0.1:5432"), tcp("127.0.0.1:40000"), true},
		{"unix socket", AuthAuto, true, &net.UnixAddr{Name: "/run/pg/.s.PGSQL.5432", Net: "unix"}, &net.UnixAddr{Net: "unix"}, true},
		{"compose network (RFC 1918 both ends)", AuthAuto, true, tcp("172.18.0.3:5432"), tcp("172.18.0.2:40000"), true},
		{"pod network (ULA both ends)", AuthAuto, true, tcp("[fd00::3]:5432"), tcp("[fd00::2]:40000"), true},
		{"public address, generated certificate", AuthAuto, true, tcp("203.0.113.5:5432"), tcp("198.51.100.7:40000"), false},
		{"private listener, public client", AuthAuto, true, tcp("10.0.0.5:5432"), tcp("198.51.100.7:40000"), false},
		{"public address, a certificate of the route's own", AuthAuto, false, tcp("203.0.113.5:5432"), tcp("198.51.100.7:40000"), true},
		{"passthrough never asks, so never refuses to", AuthPassthrough, true, tcp("203.0.113.5:5432"), tcp("198.51.100.7:40000"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Route{Auth: tc.auth, ClientTLSGenerated: tc.generated}
			why := r.noAsk(tc.local, tc.remote)
			if (why == "") != tc.wantAsk {
				t.Fatalf("noAsk = %q, want asking allowed: %v", why, tc.wantAsk)
			}
			if why != "" && !strings.Contains(why, tc.local.String()) {
				t.Fatalf("the reason %q does not name the listener", why)
			}
		})
	}
}
