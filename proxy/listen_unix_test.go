//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package proxy

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// shortTempDir returns a directory whose socket paths fit sockaddr_un.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "pgvp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestListenUnixSocketFiles(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, ".s.PGSQL.5432")
	lockPath := path + ".lock"
	addr := ListenAddr{Network: "unix", Address: path}

	t.Run("fresh", func(t *testing.T) {
		l, stale, err := listen(addr)
		if err != nil || stale {
			t.Fatalf("listen: stale=%v err=%v", stale, err)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != unixSocketMode {
			t.Fatalf("socket file: %v, %v; want mode %o", fi, err, unixSocketMode)
		}
		if b, err := os.ReadFile(lockPath); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
			t.Fatalf("lock file holds %q (%v); want this PID", b, err)
		}
		t.Run("second listener on the same path", func(t *testing.T) {
			if _, _, err := listen(addr); err == nil || !strings.Contains(err.Error(), "is held by another running process") {
				t.Fatalf("second listen: %v; want the lock refusal", err)
			}
		})
		l.Close()
		for _, f := range []string{path, lockPath} {
			if _, err := os.Stat(f); !os.IsNotExist(err) {
				t.Fatalf("%s after Close: %v; want it removed", f, err)
			}
		}
	})
	t.Run("stale file from a crash", func(t *testing.T) {
		// A listener whose file is not unlinked on close, as after a crash,
		// and a lock file naming a PID that no longer runs.
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		if err := os.WriteFile(lockPath, []byte(strconv.Itoa(deadPID(t))+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		l2, stale, err := listen(addr)
		if err != nil || !stale {
			t.Fatalf("listen over a stale socket: stale=%v err=%v", stale, err)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("dialing the new socket: %v", err)
		}
		c.Close()
		l2.Close()
	})
	t.Run("lock file of a live process (a PostgreSQL server)", func(t *testing.T) {
		if err := os.WriteFile(lockPath, []byte("1\n/var/lib/postgresql/15/main\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(lockPath)
		if _, _, err := listen(addr); err == nil || !strings.Contains(err.Error(), "belongs to running process 1") {
			t.Fatalf("listen: %v; want the refusal naming PID 1", err)
		}
		if b, _ := os.ReadFile(lockPath); !strings.HasPrefix(string(b), "1\n") {
			t.Fatalf("someone else's lock file changed to %q", b)
		}
	})
	t.Run("live socket without a lock file", func(t *testing.T) {
		other, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if _, _, err := listen(addr); err == nil || !strings.Contains(err.Error(), "is in use") {
			t.Fatalf("listen: %v; want 'is in use'", err)
		}
		if _, err := os.Stat(lockPath); !os.IsNotExist(err) {
			t.Fatalf("lock file left behind after a refusal: %v", err)
		}
	})
	t.Run("close leaves a socket that replaced ours", func(t *testing.T) {
		l, _, err := listen(addr)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(path)
		other, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		l.Close()
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("our Close removed a socket that was not ours: %v", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(path)
		if _, _, err := listen(addr); err == nil || !strings.Contains(err.Error(), "is not a socket") {
			t.Fatalf("listen over a regular file: %v; want 'is not a socket'", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Fatalf("regular file changed to %q", b)
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		_, _, err := listen(ListenAddr{Network: "unix", Address: filepath.Join(dir, "nope", ".s.PGSQL.5432")})
		if err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("listen in a missing dir: %v", err)
		}
	})
}

// deadPID returns the PID of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// TestUnixSocketModeAndGroup: unix_socket_permissions and
// unix_socket_group give the socket file its mode and group at creation
// (the kernel then lets only the group's members connect); a group the
// proxy cannot give is an error that says why, and leaves no socket file.
func TestUnixSocketModeAndGroup(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, ".s.PGSQL.5433")
	gid := os.Getgid()
	l, _, err := listen(ListenAddr{Network: "unix", Address: path, SocketMode: 0o770, SocketGroup: strconv.Itoa(gid)})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o770 || int(st.Gid) != gid {
		t.Fatalf("socket file mode %o group %d; want 0770 and %d", fi.Mode().Perm(), st.Gid, gid)
	}
	l.Close()

	if _, _, err := listen(ListenAddr{Network: "unix", Address: path, SocketGroup: "no-such-group-pgvp"}); err == nil || !strings.Contains(err.Error(), "unix_socket_group") {
		t.Fatalf("an unknown group: %v, want an error naming unix_socket_group", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("the refused listener left its socket file: %v", err)
	}
	r := Route{Name: "m", Listen: []string{"unix:" + dir}, Dial: neverDial(t), ClientTLS: ClientTLSDisable, UnixSocketMode: 0o1777}
	if err := r.validate(); err == nil || !strings.Contains(err.Error(), "unix_socket_permissions") {
		t.Fatalf("mode 1777: %v, want a refusal naming unix_socket_permissions", err)
	}
}
