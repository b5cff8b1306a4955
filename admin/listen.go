package admin

import (
	"fmt"
	"net"
	"strings"
)

// Listen opens the admin endpoint's TCP listener at ResolveAddr(addr). Use
// IsLoopback on the listener's Addr to warn when the endpoint is reachable
// from other hosts.
func Listen(addr string) (net.Listener, error) {
	a, err := ResolveAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listening on %q: %w", addr, err)
	}
	l, err := net.Listen("tcp", a)
	if err != nil {
		return nil, fmt.Errorf("admin: listening on %s: %w", a, err)
	}
	return l, nil
}

// ResolveAddr applies the admin address rules: "PORT" or ":PORT" is
// 127.0.0.1:PORT (loopback by default), "HOST:PORT" is used as given.
func ResolveAddr(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if p := strings.TrimPrefix(addr, ":"); isPort(p) {
		return net.JoinHostPort("127.0.0.1", p), nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || !isPort(port) {
		return "", fmt.Errorf("admin address %q must be PORT, :PORT or HOST:PORT", addr)
	}
	return net.JoinHostPort(host, port), nil
}

// isPort reports whether s is a port number, 0 to 65535.
func isPort(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

// IsLoopback reports whether addr is a TCP or UDP address on a loopback IP
// (127.0.0.0/8 or ::1). Unspecified addresses (0.0.0.0, ::) are not
// loopback: they accept connections from other hosts.
func IsLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UDPAddr:
		return a.IP.IsLoopback()
	}
	return false
}
