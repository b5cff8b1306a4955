package proxy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// unixPrefix marks a unix-socket listen address.
const unixPrefix = "unix:"

// socketFilePrefix is the base name libpq looks for in a socket directory:
// psql -h /dir -p 5432 connects to /dir/.s.PGSQL.5432.
const socketFilePrefix = ".s.PGSQL."

// defaultSocketPort is the port in the socket file name when none is given.
const defaultSocketPort = 5432

// ListenAddr is a parsed listen address.
type ListenAddr struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is host:port, or the socket file's path.
	Address string
	// SocketMode is a unix socket file's mode; zero means 0777, as
	// PostgreSQL's default unix_socket_permissions (Route.UnixSocketMode).
	SocketMode os.FileMode
	// SocketGroup, when set, is the group a unix socket file is given
	// (Route.UnixSocketGroup).
	SocketGroup string
}

// String returns the address as a user would write it.
func (a ListenAddr) String() string {
	if a.Network == "unix" {
		return unixPrefix + a.Address
	}
	return a.Address
}

// ParseListenAddr reads a listen address: "HOST:PORT" for TCP, or a unix
// socket in libpq's layout:
//
//	unix:/dir          /dir/.s.PGSQL.5432  (psql -h /dir)
//	unix:/dir:6432     /dir/.s.PGSQL.6432  (psql -h /dir -p 6432)
//	unix:/dir/.s.PGSQL.6432                the same, spelled out
//
// Unix-socket listeners exist on Linux, macOS and the BSDs
// (listen_unix.go); elsewhere (Windows) a unix: address is refused here,
// with the TCP address to use instead.
func ParseListenAddr(s string) (ListenAddr, error) {
	if !strings.HasPrefix(s, unixPrefix) {
		if _, port, err := net.SplitHostPort(s); err != nil || port == "" {
			return ListenAddr{}, fmt.Errorf("listen address %q: want HOST:PORT or unix:/DIR[:PORT]", s)
		}
		return ListenAddr{Network: "tcp", Address: s}, nil
	}
	rest := strings.TrimPrefix(s, unixPrefix)
	port := defaultSocketPort
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		p, err := strconv.Atoi(rest[i+1:])
		if err != nil || p <= 0 || p > 65535 {
			return ListenAddr{}, fmt.Errorf("listen address %q: port %q is not a number from 1 to 65535", s, rest[i+1:])
		}
		rest, port = rest[:i], p
	}
	if err := unixListenersUnavailable(suggestedPort(rest, port)); err != nil {
		return ListenAddr{}, fmt.Errorf("listen address %q: %w", s, err)
	}
	if !filepath.IsAbs(rest) {
		return ListenAddr{}, fmt.Errorf("listen address %q: the socket directory must be an absolute path", s)
	}
	path := filepath.Clean(rest)
	if strings.HasPrefix(filepath.Base(path), socketFilePrefix) {
		if port != defaultSocketPort || strings.Contains(strings.TrimPrefix(s, unixPrefix), path+":") {
			return ListenAddr{}, fmt.Errorf("listen address %q: the port is given twice; write unix:/DIR:PORT or unix:/DIR/.s.PGSQL.PORT", s)
		}
	} else {
		path = filepath.Join(path, socketFilePrefix+strconv.Itoa(port))
	}
	// sockaddr_un holds 108 bytes including the terminating NUL.
	if len(path) > 107 {
		return ListenAddr{}, fmt.Errorf("listen address %q: socket path %s is %d bytes long; the limit is 107", s, path, len(path))
	}
	return ListenAddr{Network: "unix", Address: path}, nil
}

// suggestedPort is the port of a unix-socket address whose path is rest
// and whose :PORT, or default, is port: the one in a spelled-out socket
// file name (.s.PGSQL.PORT) if any, else port.
func suggestedPort(rest string, port int) int {
	if b := filepath.Base(rest); strings.HasPrefix(b, socketFilePrefix) {
		if p, err := strconv.Atoi(strings.TrimPrefix(b, socketFilePrefix)); err == nil && p > 0 && p <= 65535 {
			return p
		}
	}
	return port
}

// listen opens one listener: TCP, or a unix socket (see listenUnix). It
// reports whether a stale socket file was removed.
func listen(a ListenAddr) (l net.Listener, staleRemoved bool, err error) {
	if a.Network != "unix" {
		l, err = net.Listen("tcp", a.Address)
		return l, false, err
	}
	return listenUnix(a)
}
