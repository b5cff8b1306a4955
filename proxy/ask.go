package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// DefaultAskPasswordFrom is where auth auto may ask a client for its
// password with the generated client certificate (Route.AskPasswordFrom
// when nil): loopback and unix sockets, and clients on the listener's own
// link (see AskLink).
var DefaultAskPasswordFrom = []string{AskLoopback, AskLink}

// Keywords of Route.AskPasswordFrom besides CIDR prefixes.
const (
	// AskLoopback: a client on a loopback address or a unix socket.
	AskLoopback = "loopback"
	// AskLink: a client on the same network as the address it connected
	// to (the prefix of the local interface that holds that address: a
	// compose or pod network, one hop away), except the gateways of the
	// machine's default routes, through which every NATed or proxied
	// client arrives (Docker's userland proxy, a Kubernetes Service with
	// externalTrafficPolicy: Cluster, a router's port forward).
	AskLink = "link"
	// AskPrivate: both addresses private (RFC 1918, RFC 4193), the rule
	// before issue 24.
	AskPrivate = "private"
)

// askRule is a parsed AskPasswordFrom.
type askRule struct {
	loopback, link, private bool
	prefixes                []netip.Prefix
	text                    string
	// links returns the interface prefixes and default gateways; nil
	// means the machine's (systemLinks).
	links func() ([]netip.Prefix, map[netip.Addr]bool)
}

// CheckAskPasswordFrom checks a route's ask_password_from (see
// Route.AskPasswordFrom).
func CheckAskPasswordFrom(list []string) error {
	_, err := parseAskPasswordFrom(list)
	return err
}

// parseAskPasswordFrom parses the keywords loopback, link and private and
// CIDR prefixes (or single addresses); nil means DefaultAskPasswordFrom,
// an empty list never asks.
func parseAskPasswordFrom(list []string) (*askRule, error) {
	if list == nil {
		list = DefaultAskPasswordFrom
	}
	r := &askRule{text: strings.Join(list, ", ")}
	for _, e := range list {
		switch e = strings.TrimSpace(e); e {
		case AskLoopback:
			r.loopback = true
		case AskLink:
			r.link = true
		case AskPrivate:
			r.private = true
		default:
			p, err := netip.ParsePrefix(e)
			if err != nil {
				if a, aerr := netip.ParseAddr(e); aerr == nil {
					p = netip.PrefixFrom(a, a.BitLen())
				} else {
					return nil, fmt.Errorf("ask_password_from: %q is not loopback, link, private or a CIDR prefix (such as 172.18.0.0/16)", e)
				}
			}
			r.prefixes = append(r.prefixes, p.Masked())
		}
	}
	return r, nil
}

// allows tells whether a client at remote, connected to local, may be
// asked.
func (r *askRule) allows(local, remote net.Addr) bool {
	if _, ok := local.(*net.UnixAddr); ok {
		return r.loopback
	}
	l, lok := addrOf(local)
	c, cok := addrOf(remote)
	if !lok || !cok {
		return false
	}
	for _, p := range r.prefixes {
		if p.Contains(c) {
			return true
		}
	}
	if l.IsLoopback() && c.IsLoopback() {
		return r.loopback
	}
	if r.private && l.IsPrivate() && c.IsPrivate() {
		return true
	}
	links := r.links
	if links == nil {
		links = systemLinks
	}
	return r.link && onLink(l, c, links)
}

// addrOf returns a TCP address's IP, IPv4-mapped addresses unmapped.
func addrOf(a net.Addr) (netip.Addr, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	return ip.Unmap().WithZone(""), ok
}

// mayAskOffLoopback tells whether the rule can allow a client that is not
// on loopback or a unix socket.
func (r *askRule) mayAskOffLoopback() bool {
	return r.link || r.private || len(r.prefixes) > 0
}

// linkTable is the machine's interface prefixes and default gateways,
// read at most every linkTableAge.
var linkTable struct {
	mu       sync.Mutex
	read     time.Time
	prefixes []netip.Prefix
	gateways map[netip.Addr]bool
}

// linkTableAge is how long the interface table is reused.
const linkTableAge = 10 * time.Second

// systemLinks returns the machine's interface prefixes and default
// gateways, read again when older than linkTableAge.
func systemLinks() ([]netip.Prefix, map[netip.Addr]bool) {
	linkTable.mu.Lock()
	defer linkTable.mu.Unlock()
	if time.Since(linkTable.read) > linkTableAge {
		linkTable.prefixes = interfacePrefixes()
		linkTable.gateways = defaultGateways()
		linkTable.read = time.Now()
	}
	return linkTable.prefixes, linkTable.gateways
}

// onLink tells whether client is on the network of an interface prefix
// holding local (a host route, /32 or /128, is no network) and is not a
// default gateway.
func onLink(local, client netip.Addr, links func() ([]netip.Prefix, map[netip.Addr]bool)) bool {
	if local.IsUnspecified() || local == client {
		return local == client && !local.IsUnspecified()
	}
	prefixes, gateways := links()
	if gateways[client] {
		return false
	}
	for _, p := range prefixes {
		if p.Contains(local) && p.Contains(client) && p.Bits() < p.Addr().BitLen() {
			return true
		}
	}
	return false
}

// interfacePrefixes returns the prefixes of the machine's interface
// addresses.
func interfacePrefixes() []netip.Prefix {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		bits, _ := n.Mask.Size()
		ip = ip.Unmap()
		if ip.Is4() && bits > 32 {
			bits -= 96 // a 16-byte mask of an IPv4 address
		}
		if p := netip.PrefixFrom(ip, bits); p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// describe says where the rule asks, for messages.
func (r *askRule) describe() string {
	if r.text == "" {
		return "nowhere"
	}
	return r.text
}

// askWarning is the start-up warning for a listener at addr where auth
// auto may ask clients off loopback for their password with the generated
// certificate, or "" when it may not.
func (r *Route) askWarning(addr net.Addr) string {
	if r.Auth != AuthAuto || !r.ClientTLSGenerated || r.ClientTLS == ClientTLSDisable || r.ask == nil ||
		!r.ask.mayAskOffLoopback() || isLoopback(addr) {
		return ""
	}
	return "auth auto may ask TLS clients off loopback for their password, with the generated certificate they cannot verify, where the server offers SCRAM-SHA-256-PLUS: set ask_password_from (now " +
		r.ask.describe() + ") to the networks that are yours alone, [loopback] to ask nowhere else, or give the route client_tls_cert and client_tls_key"
}
