package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// listen opens one listener. For a unix socket it first takes the lock
// file PostgreSQL uses (/DIR/.s.PGSQL.PORT.lock, holding the owner's PID):
// while the proxy runs, a PostgreSQL server or a second proxy cannot take
// the socket over, and the proxy will not take one that a live process
// owns. Under that lock a socket file left by a process that died is
// removed; a socket some process still answers on, or a file that is not a
// socket, is an error. It reports whether a stale socket file was removed.
func listen(a ListenAddr) (l net.Listener, staleRemoved bool, err error) {
	if a.Network != "unix" {
		l, err = net.Listen("tcp", a.Address)
		return l, false, err
	}
	dir := filepath.Dir(a.Address)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, false, fmt.Errorf("socket directory %s does not exist: create it (e.g. mkdir -p %s)", dir, dir)
	case err != nil:
		return nil, false, fmt.Errorf("socket directory: %w", err)
	case !fi.IsDir():
		return nil, false, fmt.Errorf("socket directory %s is not a directory", dir)
	}
	lock, err := lockSocket(a.Address + ".lock")
	if err != nil {
		return nil, false, err
	}
	defer func() {
		if err != nil {
			lock.release()
		}
	}()
	if staleRemoved, err = removeStaleSocket(a.Address); err != nil {
		return nil, false, err
	}
	ul, err := listenUnixMode(a.Address, unixSocketMode)
	if err != nil {
		return nil, false, err
	}
	ul.SetUnlinkOnClose(false)
	st, err := os.Lstat(a.Address)
	if err != nil {
		ul.Close()
		return nil, false, err
	}
	return &unixListener{UnixListener: ul, path: a.Address, file: st, lock: lock}, staleRemoved, nil
}

// umaskMu serialises the umask change around socket creation (the umask
// is process-wide).
var umaskMu sync.Mutex

// listenUnixMode creates the socket with its final mode at bind time: a
// chmod afterwards would follow a symlink swapped in meanwhile.
func listenUnixMode(path string, mode os.FileMode) (*net.UnixListener, error) {
	umaskMu.Lock()
	old := syscall.Umask(int(0o777 &^ mode))
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	umaskMu.Unlock()
	return l, err
}

// unixListener removes its socket file and lock file on Close, the socket
// only if it is still the file it created.
type unixListener struct {
	*net.UnixListener
	path string
	file os.FileInfo
	lock *socketLock
	once sync.Once
}

// Close stops listening and removes the files it owns.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if st, serr := os.Lstat(l.path); serr == nil && os.SameFile(st, l.file) {
			_ = os.Remove(l.path)
		}
		l.lock.release()
	})
	return err
}

// socketLock is a held lock file.
type socketLock struct {
	f    *os.File
	path string
}

// lockSocket takes path in PostgreSQL's lock-file format (PID on the first
// line), with flock against a second proxy starting at the same moment.
func lockSocket(path string) (*socketLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("socket lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("socket lock file %s is held by another running process (another pgverifyproxy?)", path)
	}
	b := make([]byte, 64)
	n, _ := f.ReadAt(b, 0)
	if line, _, _ := strings.Cut(string(b[:n]), "\n"); line != "" {
		if pid, err := strconv.Atoi(strings.TrimSpace(line)); err == nil && pid > 0 && pid != os.Getpid() && processAlive(pid) {
			f.Close()
			return nil, fmt.Errorf("socket lock file %s belongs to running process %d (a PostgreSQL server or another proxy uses this socket path): pick another directory or port", path, pid)
		}
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("socket lock file: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("socket lock file: %w", err)
	}
	return &socketLock{f: f, path: path}, nil
}

// release removes the lock file and drops the lock.
func (l *socketLock) release() {
	if l == nil {
		return
	}
	_ = os.Remove(l.path)
	l.f.Close()
}

// processAlive reports whether pid names a running process.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
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
		return false, fmt.Errorf("%s is in use: another process accepts connections on it (is this address listed twice, or another server running there?)", path)
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
