package proxy

import (
	"net"
	"net/netip"
	"os"
	"runtime"
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
	// The machine of these cases: a compose bridge 172.18.0.0/16 whose
	// gateway (the host, Docker's userland proxy) is 172.18.0.1, a pod
	// network fd00::/64, an office LAN 192.168.1.0/24, and a /32 as
	// Calico gives pods.
	links := func() ([]netip.Prefix, map[netip.Addr]bool) {
		return []netip.Prefix{
				netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("172.18.0.3/16"),
				netip.MustParsePrefix("fd00::3/64"), netip.MustParsePrefix("192.168.1.10/24"),
				netip.MustParsePrefix("10.1.2.3/32"),
			}, map[netip.Addr]bool{
				netip.MustParseAddr("172.18.0.1"): true, netip.MustParseAddr("fd00::1"): true,
			}
	}
	tests := []struct {
		name          string
		auth          AuthMode
		generated     bool
		from          []string
		local, remote net.Addr
		wantAsk       bool
	}{
		{"loopback, generated certificate", AuthAuto, true, nil, tcp("127.0.0.1:5432"), tcp("127.0.0.1:40000"), true},
		{"unix socket", AuthAuto, true, nil, &net.UnixAddr{Name: "/run/pg/.s.PGSQL.5432", Net: "unix"}, &net.UnixAddr{Net: "unix"}, true},
		{"compose network: the app's container on the bridge", AuthAuto, true, nil, tcp("172.18.0.3:5432"), tcp("172.18.0.2:40000"), true},
		{"pod network (ULA, same link)", AuthAuto, true, nil, tcp("[fd00::3]:5432"), tcp("[fd00::2]:40000"), true},
		{"compose network: through the gateway (published port, NAT)", AuthAuto, true, nil, tcp("172.18.0.3:5432"), tcp("172.18.0.1:40000"), false},
		{"pod network: through the gateway", AuthAuto, true, nil, tcp("[fd00::3]:5432"), tcp("[fd00::1]:40000"), false},
		{"private listener, a private client on another network (VPN, shared VPC)", AuthAuto, true, nil, tcp("172.18.0.3:5432"), tcp("10.8.0.6:40000"), false},
		{"a /32 address has no link", AuthAuto, true, nil, tcp("10.1.2.3:5432"), tcp("10.1.2.4:40000"), false},
		{"public address, generated certificate", AuthAuto, true, nil, tcp("203.0.113.5:5432"), tcp("198.51.100.7:40000"), false},
		{"private listener, public client", AuthAuto, true, nil, tcp("10.0.0.5:5432"), tcp("198.51.100.7:40000"), false},
		{"loopback only: not the compose bridge", AuthAuto, true, []string{"loopback"}, tcp("172.18.0.3:5432"), tcp("172.18.0.2:40000"), false},
		{"loopback only: loopback", AuthAuto, true, []string{"loopback"}, tcp("127.0.0.1:5432"), tcp("127.0.0.1:40000"), true},
		{"empty list: not even loopback", AuthAuto, true, []string{}, tcp("127.0.0.1:5432"), tcp("127.0.0.1:40000"), false},
		{"a listed prefix", AuthAuto, true, []string{"10.8.0.0/24"}, tcp("172.18.0.3:5432"), tcp("10.8.0.6:40000"), true},
		{"private: both private", AuthAuto, true, []string{"private"}, tcp("172.18.0.3:5432"), tcp("10.8.0.6:40000"), true},
		{"public address, a certificate of the route's own", AuthAuto, false, nil, tcp("203.0.113.5:5432"), tcp("198.51.100.7:40000"), true},
		{"passthrough never asks, so never refuses to", AuthPassthrough, true, nil, tcp("203.0.113.5:5432"), tcp("198.51.100.7:40000"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rule, err := parseAskPasswordFrom(tc.from)
			if err != nil {
				t.Fatal(err)
			}
			rule.links = links
			r := &Route{Auth: tc.auth, ClientTLSGenerated: tc.generated, ask: rule}
			why := r.noAsk(tc.local, tc.remote)
			if (why == "") != tc.wantAsk {
				t.Fatalf("noAsk = %q, want asking allowed: %v", why, tc.wantAsk)
			}
			if why != "" && (!strings.Contains(why, tc.local.String()) || !strings.Contains(why, "ask_password_from")) {
				t.Fatalf("the reason %q does not name the listener and the setting", why)
			}
		})
	}
}

func TestAskPasswordFromParsing(t *testing.T) {
	for _, ok := range [][]string{nil, {}, {"loopback"}, {"loopback", "link", "private"}, {"10.0.0.0/8", "fd00::/8", "192.0.2.7"}} {
		if err := CheckAskPasswordFrom(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range [][]string{{"everywhere"}, {"10.0.0.0/33"}, {"lan"}} {
		if err := CheckAskPasswordFrom(bad); err == nil || !strings.Contains(err.Error(), "ask_password_from") {
			t.Errorf("%q: %v, want an error naming ask_password_from", bad, err)
		}
	}
}

func TestDefaultGatewaysOfThisMachine(t *testing.T) {
	// The reader must not fail on this machine's tables; on Linux with a
	// default route it finds its gateway.
	gw := defaultGateways()
	if runtime.GOOS != "linux" {
		return
	}
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		t.Fatal(err)
	}
	hasDefault := false
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[1] == "00000000" && f[2] != "00000000" {
			hasDefault = true
		}
	}
	if hasDefault && len(gw) == 0 {
		t.Fatalf("/proc/net/route has a default route with a gateway, and none was read:\n%s", b)
	}
	for a := range gw {
		if !a.IsValid() || a.IsUnspecified() {
			t.Fatalf("gateway %v", a)
		}
	}
}

func TestAskWarningAtStart(t *testing.T) {
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	tests := []struct {
		name     string
		route    Route
		addr     net.Addr
		wantWarn bool
	}{
		{"auto, generated certificate, all interfaces, default rule", Route{Auth: AuthAuto, ClientTLSGenerated: true, ClientTLS: ClientTLSAllow}, tcp("0.0.0.0:5432"), true},
		{"loopback listener", Route{Auth: AuthAuto, ClientTLSGenerated: true, ClientTLS: ClientTLSAllow}, tcp("127.0.0.1:5432"), false},
		{"ask_password_from: [loopback]", Route{Auth: AuthAuto, ClientTLSGenerated: true, ClientTLS: ClientTLSAllow, AskPasswordFrom: []string{"loopback"}}, tcp("0.0.0.0:5432"), false},
		{"a certificate of the route's own", Route{Auth: AuthAuto, ClientTLS: ClientTLSAllow}, tcp("0.0.0.0:5432"), false},
		{"client_tls disable", Route{Auth: AuthAuto, ClientTLSGenerated: true, ClientTLS: ClientTLSDisable}, tcp("0.0.0.0:5432"), false},
		{"passthrough", Route{Auth: AuthPassthrough, ClientTLSGenerated: true, ClientTLS: ClientTLSAllow}, tcp("0.0.0.0:5432"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.route
			var err error
			if r.ask, err = parseAskPasswordFrom(r.AskPasswordFrom); err != nil {
				t.Fatal(err)
			}
			w := r.askWarning(tc.addr)
			if (w != "") != tc.wantWarn || (w != "" && !strings.Contains(w, "ask_password_from")) {
				t.Fatalf("warning %q, want one naming ask_password_from: %v", w, tc.wantWarn)
			}
		})
	}
}
