//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// unixSocketMode is the mode of socket files, PostgreSQL's default
// unix_socket_permissions: like a loopback TCP port, the socket is open to
// every local user; the directory's permissions restrict it further.
const unixSocketMode = 0o777

// unixListenersUnavailable returns nil: unix-socket listeners work here.
func unixListenersUnavailable(int) error { return nil }

// listenUnix opens a unix-socket listener. It first takes the lock
// file PostgreSQL uses (/DIR/.s.PGSQL.PORT.lock, holding the owner's PID):
// while the proxy runs, a PostgreSQL server or a second proxy cannot take
// the socket over, and the proxy will not take one that a live process
// owns. Under that lock a socket file left by a process that died is
// removed; a socket some process still answers on, or a file that is not a
// socket, is an error. It reports whether a stale socket file was removed.
func listenUnix(a ListenAddr) (l net.Listener, staleRemoved bool, err error) {
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
	mode := a.SocketMode
	if mode == 0 {
		mode = unixSocketMode
	}
	ul, err := listenUnixMode(a.Address, mode)
	if err != nil {
		return nil, false, err
	}
	ul.SetUnlinkOnClose(false)
	if a.SocketGroup != "" {
		if err := chgrpSocket(a.Address, a.SocketGroup); err != nil {
			ul.Close()
			_ = os.Remove(a.Address)
			return nil, false, err
		}
	}
	st, err := os.Lstat(a.Address)
	if err != nil {
		ul.Close()
		return nil, false, err
	}
	return &unixListener{UnixListener: ul, path: a.Address, file: st, lock: lock}, staleRemoved, nil
}

// chgrpSocket gives the socket file at path the group named (or numbered)
// group, as PostgreSQL's unix_socket_group: the process must be a member
// of that group, or root.
func chgrpSocket(path, group string) error {
	gid, err := strconv.Atoi(group)
	if err != nil {
		g, lerr := user.LookupGroup(group)
		if lerr != nil {
			return fmt.Errorf("unix_socket_group %s: %w", strconv.Quote(group), lerr)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return fmt.Errorf("unix_socket_group %s: gid %s is not a number", strconv.Quote(group), g.Gid)
		}
	}
	if err := os.Lchown(path, -1, gid); err != nil {
		return fmt.Errorf("unix_socket_group %s: giving the socket %s that group: %w (the proxy must run as a member of the group, or as root)", strconv.Quote(group), path, err)
	}
	return nil
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

// openFilesLimit is the soft RLIMIT_NOFILE (1024 when unknown).
func openFilesLimit() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur == 0 {
		return 1024
	}
	if r.Cur > 1<<30 {
		return 1 << 30
	}
	return int(r.Cur)
}
