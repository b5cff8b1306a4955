package chain

import (
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

func TestRefusedReason(t *testing.T) {
	tests := []struct {
		addr string
		want string // a word of the reason; "" means allowed
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.0.9", "loopback"},
		{"::1", "loopback"},
		{"10.0.0.5", "private"},
		{"10.255.255.255", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.254", "private"},
		{"192.168.1.1", "private"},
		{"100.64.0.1", "private"},
		{"100.127.255.254", "private"},
		{"169.254.169.254", "link-local"},
		{"fe80::1", "link-local"},
		{"fe80::1%eth0", "link-local"},
		{"fc00::1", "private"},
		{"fd12:3456::1", "private"},
		{"fec0::1", "private"},
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:10.1.2.3", "private"},
		{"::ffff:169.254.169.254", "link-local"},
		{"::ffff:0.0.0.0", "unspecified"},
		{"0.0.0.0", "unspecified"},
		{"0.1.2.3", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"ff02::1", "multicast"},
		{"255.255.255.255", "broadcast"},
		{"240.0.0.1", "reserved"},
		{"64:ff9b::7f00:1", "loopback"},      // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", "link-local"}, // NAT64 of 169.254.169.254
		{"2002:a00:1::1", "private"},         // 6to4 of 10.0.0.1
		{"::127.0.0.1", "loopback"},          // IPv4-compatible
		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"172.32.0.1", ""},
		{"100.128.0.1", ""},
		{"2606:4700::1", ""},
		{"2001:4860:4860::8888", ""},
		{"::ffff:8.8.8.8", ""},
		{"64:ff9b::808:808", ""}, // NAT64 of 8.8.8.8
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got := refusedReason(netip.MustParseAddr(tt.addr))
			if tt.want == "" {
				if got != "" {
					t.Fatalf("refused as %q, want allowed", got)
				}
				return
			}
			if !strings.Contains(got, tt.want) {
				t.Fatalf("reason %q, want one saying %q", got, tt.want)
			}
		})
	}
	if got := refusedReason(netip.Addr{}); got == "" {
		t.Error("the zero Addr is allowed")
	}
}

func TestNumericHost(t *testing.T) {
	tests := []struct {
		host        string
		numeric, ok bool
		want        string
	}{
		{"2130706433", true, true, "127.0.0.1"},
		{"0x7f.1", true, true, "127.0.0.1"},
		{"0X7F.0.0.1", true, true, "127.0.0.1"},
		{"127.1", true, true, "127.0.0.1"},
		{"0177.0.0.1", true, true, "127.0.0.1"},
		{"0x7f000001", true, true, "127.0.0.1"},
		{"127.0.0.1.", true, true, "127.0.0.1"},
		{"010.0.0.1", true, true, "8.0.0.1"},
		{"10.0.258", true, true, "10.0.1.2"},
		{"0xa9.0xfe.0xa9.0xfe", true, true, "169.254.169.254"},
		{"1.2.3.4.5", true, false, ""},
		{"08.0.0.1", true, false, ""},
		{"256.0.0.1", true, false, ""},
		{"1.2.65536", true, false, ""},
		{"4294967296", true, false, ""},
		{"example.com", false, false, ""},
		{"123.example", false, false, ""},
		{"0x7g.1", false, false, ""},
		{"", false, false, ""},
		{"::1", false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			a, numeric, ok := numericHost(tt.host)
			if numeric != tt.numeric || ok != tt.ok {
				t.Fatalf("numeric, ok = %v, %v, want %v, %v", numeric, ok, tt.numeric, tt.ok)
			}
			if ok && a.String() != tt.want {
				t.Fatalf("address %s, want %s", a, tt.want)
			}
		})
	}
}

func TestCheckHostSpelling(t *testing.T) {
	tests := []struct {
		host   string
		errHas string // "" means allowed (names are checked when dialled)
	}{
		{"ca.example.com", ""},
		{"localhost", ""},
		{"8.8.8.8", ""},
		{"2606:4700::1", ""},
		{"127.0.0.1", "refusing to fetch from 127.0.0.1 (a loopback address)"},
		{"::ffff:127.0.0.1", "(a loopback address)"},
		{"2130706433", "refusing to fetch from 2130706433 at 127.0.0.1 (a loopback address)"},
		{"0x7f.1", "0x7f.1 at 127.0.0.1 (a loopback address)"},
		{"0xa9.0xfe.0xa9.0xfe", "at 169.254.169.254 (a link-local address)"},
		{"134744072", "at 8.8.8.8 (an IPv4 address written in a non-standard numeric form)"},
		{"1.2.3.4.5", "1.2.3.4.5 (a numeric host that is no IPv4 address)"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			err := checkHostSpelling(tt.host)
			if tt.errHas == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
			}
		})
	}
}

func TestProxyAddr(t *testing.T) {
	tests := map[string]string{
		"http://proxy.corp:3128":  "proxy.corp:3128",
		"http://proxy.corp":       "proxy.corp:80",
		"https://proxy.corp":      "proxy.corp:443",
		"socks5://127.0.0.1":      "127.0.0.1:1080",
		"http://[::1]:8080":       "[::1]:8080",
		"http://user:pw@10.0.0.1": "10.0.0.1:80",
	}
	for raw, want := range tests {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := proxyAddr(u); got != want {
			t.Errorf("proxyAddr(%s) = %s, want %s", raw, got, want)
		}
	}
}

// TestControlPublicOnly: the dial hook sees the resolved address and
// refuses exactly what refusedReason refuses.
func TestControlPublicOnly(t *testing.T) {
	for addr, refuse := range map[string]bool{
		"127.0.0.1:80": true, "[::1]:80": true, "[::ffff:127.0.0.1]:80": true, "169.254.169.254:80": true,
		"10.0.0.5:8080": true, "8.8.8.8:80": false, "[2606:4700::1]:80": false,
	} {
		err := controlPublicOnly("tcp", addr, nil)
		if (err != nil) != refuse {
			t.Errorf("%s: err = %v, want refused %v", addr, err, refuse)
		}
	}
	if err := controlPublicOnly("tcp", "not-an-address", nil); err == nil {
		t.Error("a non-address passed the hook")
	}
}

// TestRouteRefusesBeforeTheProxy: with a proxy, the URL's host is checked
// before the request is handed to it, and route never names the proxy for
// a refused URL.
func TestRouteRefusesBeforeTheProxy(t *testing.T) {
	proxyURL := &url.URL{Scheme: "http", Host: "127.0.0.1:3128"}
	g := newGuard(&Completer{Proxy: func(*http.Request) (*url.URL, error) { return proxyURL, nil }}, AIATimeout)
	for _, tt := range []struct {
		url     string
		refused bool
	}{
		{"http://127.0.0.1/x", true},
		{"http://[::1]/x", true},
		{"http://0x7f.1/x", true},
		{"http://localhost/x", true}, // resolved: 127.0.0.1
		{"http://8.8.8.8/x", false},
	} {
		req, err := http.NewRequest(http.MethodGet, tt.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := g.route(req)
		if tt.refused {
			if err == nil || p != nil {
				t.Errorf("%s: proxy %v, err %v; want refused", tt.url, p, err)
			}
			continue
		}
		if err != nil || p != proxyURL {
			t.Errorf("%s: proxy %v, err %v; want the proxy", tt.url, p, err)
		}
		if g.proxyAddr != "127.0.0.1:3128" {
			t.Errorf("%s: the proxy's address is not recorded (%q)", tt.url, g.proxyAddr)
		}
	}
}
