package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// unixPrefix marks a unix-socket listen address.
const unixPrefix = "unix:"

// socketFilePrefix is the base name libpq looks for in a socket directory:
// psql -h /dir -p 5432 connects to /dir/.s.PGSQL.5432.
const socketFilePrefix = ".s.PGSQL."

// defaultSocketPort is the port in the socket file name when none is given.
const defaultSocketPort = 5432

// unixSocketMode is the mode of socket files, PostgreSQL's default
// unix_socket_permissions: like a loopback TCP port, the socket is open to
// every local user; the directory's permissions restrict it further.
const unixSocketMode = 0o777

// ListenAddr is a parsed listen address.
type ListenAddr struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is host:port, or the socket file's path.
	Address string
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
	if !filepath.IsAbs(rest) {
		return ListenAddr{}, fmt.Errorf("listen address %q: the socket directory must be an absolute path", s)
	}
	path := filepath.Clean(rest)
	if !strings.HasPrefix(filepath.Base(path), socketFilePrefix) {
		path = filepath.Join(path, socketFilePrefix+strconv.Itoa(port))
	}
	// sockaddr_un holds 108 bytes including the terminating NUL.
	if len(path) > 107 {
		return ListenAddr{}, fmt.Errorf("listen address %q: socket path %s is %d bytes long; the limit is 107", s, path, len(path))
	}
	return ListenAddr{Network: "unix", Address: path}, nil
}

// listen opens one listener. For a unix socket, a file left behind by a
// process that died is removed first; a socket some process still answers
// on, or a file that is not a socket, is an error.
// It reports whether a stale socket file was removed.
func listen(a ListenAddr) (l net.Listener, staleRemoved bool, err error) {
	if a.Network != "unix" {
		l, err = net.Listen("tcp", a.Address)
		return l, false, err
	}
	dir := filepath.Dir(a.Address)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, false, fmt.Errorf("socket directory %s does not exist: create it (e.g. mkdir -p %s)", dir, dir)
	}
	if staleRemoved, err = removeStaleSocket(a.Address); err != nil {
		return nil, false, err
	}
	if l, err = net.Listen("unix", a.Address); err != nil {
		return nil, false, err
	}
	if err := os.Chmod(a.Address, unixSocketMode); err != nil {
		l.Close()
		return nil, false, fmt.Errorf("setting the mode of %s: %w", a.Address, err)
	}
	return l, staleRemoved, nil
}

// removeStaleSocket deletes path when it is a socket nobody listens on.
func removeStaleSocket(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return false, fmt.Errorf("%s exists and is not a socket: not touching it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return false, fmt.Errorf("%s is in use: another process accepts connections on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return false, fmt.Errorf("%s exists and cannot be checked (%v): remove it if no server uses it", path, err)
	}
	// Nobody answers: left behind by a process that did not shut down.
	if err := os.Remove(path); err != nil {
		return false, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return true, nil
}
