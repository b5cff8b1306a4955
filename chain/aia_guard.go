package chain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The destination guard of the AIA client.
//
// caIssuers URLs come from certificates that the upstream presented and
// that are not verified yet: an attacker on the path writes them. Without a
// guard, each handshake would make the proxy send GET requests of the
// attacker's choosing to its own admin port, the cloud metadata service
// (169.254.169.254) or hosts of the internal network, and the time the
// handshake takes would tell the attacker whether they answered.
//
// The guard checks every address that a connection is actually made to
// (the net.Dialer Control hook sees the resolved address, whatever name,
// redirect or numeric spelling led there), so DNS names that resolve to a
// private address and DNS rebinding are covered on the direct path. When
// the environment (HTTP_PROXY, NO_PROXY) or Completer.Proxy names a proxy
// for a URL, the connection goes to that proxy (the user's own
// configuration, allowed wherever it is) and the proxy, not this process,
// connects to the URL's host: the host is then resolved here and every
// address checked before the request is sent. The proxy resolves the name
// again, so a DNS server that answers this check with a public address and
// the proxy a moment later with a private one (DNS rebinding) is not caught
// on that path: that window is the residual risk of a configured proxy,
// which is expected to apply its own policy to what it connects to.

// RefusedAddressError is an AIA fetch that the destination guard refused:
// the URL would have made the proxy connect to a loopback, link-local,
// private or otherwise non-public address.
type RefusedAddressError struct {
	// URL is the caIssuers URL, as the certificate gave it.
	URL string
	// Redirect is the URL redirected to, when the refusal hit a redirect.
	Redirect string
	// Host is the host name or address of the refused URL.
	Host string
	// Addr is the refused address.
	Addr netip.Addr
	// Reason says what kind of address it is, e.g. "a private address".
	Reason string
}

func (e *RefusedAddressError) Error() string {
	var b strings.Builder
	b.WriteString("aia: ")
	if e.URL != "" {
		b.WriteString(EscapeControls(e.URL))
		b.WriteString(": ")
	}
	if e.Redirect != "" {
		b.WriteString("redirected to ")
		b.WriteString(EscapeControls(e.Redirect))
		b.WriteString(": ")
	}
	b.WriteString("refusing to fetch from ")
	switch {
	case !e.Addr.IsValid():
		b.WriteString(EscapeControls(e.Host))
	case e.Host == "" || sameAddr(e.Host, e.Addr):
		b.WriteString(e.Addr.String())
	default:
		b.WriteString(EscapeControls(e.Host))
		b.WriteString(" at ")
		b.WriteString(e.Addr.String())
	}
	fmt.Fprintf(&b, " (%s): the URL comes from a certificate not verified yet; set aia_allow_private: true (--aia-allow-private) if your CA's AIA server is on an internal network", e.Reason)
	return b.String()
}

// sameAddr reports whether host is the literal address a.
func sameAddr(host string, a netip.Addr) bool {
	h, err := netip.ParseAddr(host)
	return err == nil && h == a
}

var (
	// cgnat is the shared address space of RFC 6598 (carrier-grade NAT):
	// not reachable from the internet, and used by some clouds and VPNs
	// (Tailscale) for internal hosts, so it counts as private.
	cgnat = netip.MustParsePrefix("100.64.0.0/10")
	// thisNetwork is 0.0.0.0/8: "this host on this network"; Linux
	// connects 0.0.0.0 to the local host.
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	// reserved4 is 240.0.0.0/4, reserved, with the limited broadcast
	// address 255.255.255.255 at its end.
	reserved4 = netip.MustParsePrefix("240.0.0.0/4")
	// siteLocal6 is the deprecated IPv6 site-local fec0::/10, private
	// in effect.
	siteLocal6 = netip.MustParsePrefix("fec0::/10")
	// nat64 is the well-known NAT64 prefix (RFC 6052): the last 32 bits
	// are an IPv4 address that a NAT64 gateway connects to.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
	// sixToFour is 6to4 (RFC 3056): bits 16 to 48 are an IPv4 address.
	sixToFour = netip.MustParsePrefix("2002::/16")
	// ipv4Compatible is the deprecated IPv4-compatible form ::a.b.c.d.
	ipv4Compatible = netip.MustParsePrefix("::/96")
)

// refusedReason says why the AIA client must not connect to a, or returns
// "" when a is a public address. Refused: unspecified (0.0.0.0/8, ::),
// loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10),
// private (RFC 1918, the CGNAT range 100.64.0.0/10, IPv6 ULA fc00::/7,
// site-local fec0::/10), multicast, broadcast and the reserved
// 240.0.0.0/4. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are checked as
// the IPv4 address they are, and so are the IPv4 addresses embedded in
// NAT64 (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible (::/96)
// addresses.
func refusedReason(a netip.Addr) string {
	if !a.IsValid() {
		return "not a valid address"
	}
	a = a.WithZone("").Unmap()
	if a.Is6() {
		b := a.As16()
		var embedded netip.Addr
		switch {
		case nat64.Contains(a), ipv4Compatible.Contains(a) && !a.IsUnspecified() && !a.IsLoopback():
			embedded = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		case sixToFour.Contains(a):
			embedded = netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
		}
		if embedded.IsValid() {
			if r := refusedReason(embedded); r != "" {
				return r + ", embedded in an IPv6 address"
			}
			return ""
		}
	}
	switch {
	case a.IsUnspecified() || a.Is4() && thisNetwork.Contains(a):
		return "an unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	case a.Is4() && reserved4.Contains(a):
		return "a reserved address"
	case a.IsPrivate() || siteLocal6.Contains(a):
		return "a private address"
	case a.Is4() && cgnat.Contains(a):
		return "a private address (carrier-grade NAT range 100.64.0.0/10)"
	}
	return ""
}

// numericHost decodes a host written as an IPv4 address in one of the
// forms that inet_aton, many resolvers and HTTP proxies accept but that
// netip does not: one to four dot-separated numbers, each decimal, octal
// (leading 0) or hexadecimal (0x), the last filling the remaining bytes:
// 2130706433, 0x7f.1, 127.1, 0177.0.0.1 are all 127.0.0.1. numeric is
// true when every label of host is a number (a single trailing dot
// ignored), ok when the numbers also make an IPv4 address.
func numericHost(host string) (a netip.Addr, numeric, ok bool) {
	host = strings.TrimSuffix(host, ".")
	if host == "" {
		return netip.Addr{}, false, false
	}
	parts := strings.Split(host, ".")
	vals := make([]uint64, 0, len(parts))
	for _, p := range parts {
		v, isNum, fits := parseNumber(p)
		if !isNum {
			return netip.Addr{}, false, false
		}
		if !fits {
			return netip.Addr{}, true, false
		}
		vals = append(vals, v)
	}
	if len(vals) > 4 {
		return netip.Addr{}, true, false
	}
	var n uint64
	for i, v := range vals[:len(vals)-1] {
		if v > 0xff {
			return netip.Addr{}, true, false
		}
		n |= v << (24 - 8*i)
	}
	last := vals[len(vals)-1]
	if last >= 1<<(8*(5-len(vals))) {
		return netip.Addr{}, true, false
	}
	n |= last
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true, true
}

// parseNumber reads one label of a numeric host: decimal, octal with a
// leading 0, or hexadecimal with 0x. isNum says whether the label has the
// shape of a number, fits whether its value fits in 32 bits.
func parseNumber(s string) (v uint64, isNum, fits bool) {
	base := 10
	digits := s
	switch {
	case len(s) >= 2 && (s[:2] == "0x" || s[:2] == "0X"):
		base, digits = 16, s[2:]
		if digits == "" {
			return 0, true, true // "0x" is 0 for inet_aton
		}
	case len(s) > 1 && s[0] == '0':
		base, digits = 8, s[1:]
	}
	if digits == "" {
		return 0, false, false
	}
	for _, r := range digits {
		if !(r >= '0' && r <= '9' || base == 16 && (r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F')) {
			return 0, false, false
		}
	}
	v, err := strconv.ParseUint(digits, base, 32)
	if err != nil {
		// Octal with an 8 or 9 is no number to inet_aton either; say it
		// is numeric so that it is refused rather than resolved.
		return 0, true, false
	}
	return v, true, true
}

// guard is the per-fetch state of the guarded transport: which proxy the
// current request goes through, so that the connection to that proxy is
// allowed and every other connection is checked.
type guard struct {
	allowPrivate bool
	proxy        func(*http.Request) (*url.URL, error)
	resolver     *net.Resolver
	dialer       net.Dialer // plain: proxies, and everything with allowPrivate
	guarded      net.Dialer // with the Control hook

	mu        sync.Mutex
	proxyAddr string // host:port of the proxy of the current request, or ""
}

func newGuard(c *Completer, timeout time.Duration) *guard {
	g := &guard{allowPrivate: c.AllowPrivate, proxy: c.Proxy, resolver: c.Resolver}
	if g.proxy == nil {
		g.proxy = http.ProxyFromEnvironment
	}
	g.dialer = net.Dialer{Timeout: timeout, Resolver: c.Resolver}
	g.guarded = net.Dialer{Timeout: timeout, Resolver: c.Resolver, Control: controlPublicOnly}
	return g
}

// controlPublicOnly is the net.Dialer Control hook: it runs after name
// resolution and before connect, with the address actually dialled.
func controlPublicOnly(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("aia: refusing to connect to %q: not an IP address and port", address)
	}
	if r := refusedReason(ap.Addr()); r != "" {
		return &RefusedAddressError{Addr: ap.Addr(), Reason: r}
	}
	return nil
}

// client returns an HTTP client that goes through g: http only, at most 3
// redirects, every destination checked unless allowPrivate. The caller
// closes the transport's idle connections when done.
func (g *guard) client(timeout time.Duration) (*http.Client, *http.Transport) {
	tr := &http.Transport{
		Proxy:                  g.route,
		DialContext:            g.dial,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 32 << 10,
		ResponseHeaderTimeout:  timeout,
		ForceAttemptHTTP2:      false,
	}
	return &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: checkRedirect}, tr
}

// checkRedirect allows at most 3 redirects, to http:// URLs only.
func checkRedirect(r *http.Request, via []*http.Request) error {
	if r.URL.Scheme != "http" || len(via) >= 3 {
		return fmt.Errorf("aia: redirect to %s refused: only http:// and at most 3 redirects", r.URL.Redacted())
	}
	return nil
}

// route is the transport's Proxy function, called for every request
// (redirects included) before any connection is made. It refuses URLs
// whose host is a non-public address literal or a numeric host, and,
// when the request goes through a proxy, URLs whose host resolves to a
// non-public address (the proxy would connect there on our behalf).
func (g *guard) route(req *http.Request) (*url.URL, error) {
	host := req.URL.Hostname()
	if !g.allowPrivate {
		if err := checkHostSpelling(host); err != nil {
			return nil, err
		}
	}
	p, err := g.proxy(req)
	if err != nil {
		return nil, fmt.Errorf("aia: choosing the proxy for %s: %w", req.URL.Redacted(), err)
	}
	addr := ""
	if p != nil {
		addr = proxyAddr(p)
		if !g.allowPrivate {
			if err := g.checkResolved(req.Context(), host); err != nil {
				return nil, err
			}
		}
	}
	g.mu.Lock()
	g.proxyAddr = addr
	g.mu.Unlock()
	return p, nil
}

// checkHostSpelling refuses an address literal that is not public and any
// numeric host in a non-standard form (which no CA uses, and which a
// proxy or a resolver may read otherwise than we do).
func checkHostSpelling(host string) error {
	if a, err := netip.ParseAddr(host); err == nil {
		if r := refusedReason(a); r != "" {
			return &RefusedAddressError{Host: host, Addr: a, Reason: r}
		}
		return nil
	}
	if a, numeric, ok := numericHost(host); numeric {
		if !ok {
			return &RefusedAddressError{Host: host, Reason: "a numeric host that is no IPv4 address"}
		}
		r := refusedReason(a)
		if r == "" {
			r = "an IPv4 address written in a non-standard numeric form"
		}
		return &RefusedAddressError{Host: host, Addr: a, Reason: r}
	}
	return nil
}

// checkResolved resolves host and refuses it when any of its addresses is
// not public. Used when a proxy connects on our behalf; a lookup failure
// is a refusal too (fail closed).
func (g *guard) checkResolved(ctx context.Context, host string) error {
	if _, err := netip.ParseAddr(host); err == nil {
		return nil // a literal: checked by checkHostSpelling
	}
	r := g.resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("aia: resolving %s to check that it is a public address before asking the proxy for it: %w", host, err)
	}
	if len(addrs) == 0 {
		return fmt.Errorf("aia: resolving %s to check that it is a public address before asking the proxy for it: no address", host)
	}
	for _, a := range addrs {
		if r := refusedReason(a); r != "" {
			return &RefusedAddressError{Host: host, Addr: a.Unmap(), Reason: r}
		}
	}
	return nil
}

// proxyAddr is the host:port that http.Transport dials for proxy p.
func proxyAddr(p *url.URL) string {
	port := p.Port()
	if port == "" {
		switch p.Scheme {
		case "https":
			port = "443"
		case "socks5", "socks5h":
			port = "1080"
		default:
			port = "80"
		}
	}
	return net.JoinHostPort(p.Hostname(), port)
}

// dial is the transport's DialContext: the connection to the proxy chosen
// by route is not checked (the user configured it); every other one is.
func (g *guard) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	g.mu.Lock()
	toProxy := g.proxyAddr != "" && addr == g.proxyAddr
	g.mu.Unlock()
	if toProxy {
		return g.dialer.DialContext(ctx, network, addr)
	}
	if host, port, err := net.SplitHostPort(addr); err == nil {
		// Dial the address a numeric host means, whatever the
		// resolver would make of it (only reached with allowPrivate:
		// route refuses numeric hosts otherwise).
		if a, _, ok := numericHost(host); ok {
			addr = net.JoinHostPort(a.String(), port)
		}
	}
	if g.allowPrivate {
		return g.dialer.DialContext(ctx, network, addr)
	}
	return g.guarded.DialContext(ctx, network, addr)
}

// refused finds a RefusedAddressError in err (from client.Do) and returns
// it completed with the caIssuers URL and the URL that was refused.
func refused(rawURL string, err error) (*RefusedAddressError, bool) {
	var re *RefusedAddressError
	if !errors.As(err, &re) {
		return nil, false
	}
	out := *re
	out.URL = rawURL
	var ue *url.Error
	if errors.As(err, &ue) && ue.URL != rawURL && ue.URL != redacted(rawURL) {
		// url.Error holds the URL with its password hidden: a URL with
		// user info is not a redirect to itself.
		out.Redirect = ue.URL
	}
	if out.Host == "" {
		at := rawURL
		if out.Redirect != "" {
			at = out.Redirect
		}
		if u, err := url.Parse(at); err == nil {
			out.Host = u.Hostname()
		}
	}
	return &out, true
}

// redacted is rawURL as net/http's url.Error shows it: a password as ***.
func redacted(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return rawURL
	}
	if _, has := u.User.Password(); has {
		return strings.Replace(u.String(), u.User.String()+"@", u.User.Username()+":***@", 1)
	}
	return u.String()
}
