package admin

import (
	"fmt"
	"net"
	"strings"
)

// Listen opens the admin endpoint's TCP listener. addr is "PORT" or
// ":PORT", which listen on loopback (127.0.0.1:PORT), or "HOST:PORT",
// used as given. Use IsLoopback on the listener's Addr to warn when the
// endpoint is reachable from other hosts.
func Listen(addr string) (net.Listener, error) {
	a, err := resolveAddr(addr)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", a)
	if err != nil {
		return nil, fmt.Errorf("admin: listening on %s: %w", a, err)
	}
	return l, nil
}

// resolveAddr applies Listen's address rules.
func resolveAddr(addr string) (string, error) {
	switch {
	case addr == "":
		return "", fmt.Errorf("admin: listening on %q: empty address (want PORT, :PORT or HOST:PORT)", addr)
	case isPort(addr):
		return net.JoinHostPort("127.0.0.1", addr), nil
	case strings.HasPrefix(addr, ":") && isPort(addr[1:]):
		return net.JoinHostPort("127.0.0.1", addr[1:]), nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("admin: listening on %s: address must be PORT, :PORT or HOST:PORT: %w", addr, err)
	}
	return addr, nil
}

// isPort reports whether s is a decimal port number.
func isPort(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
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
