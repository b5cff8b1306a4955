//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package proxy

import (
	"fmt"
	"net"
	"runtime"
)

// unixListenersUnavailable says why a unix-socket listen address is
// refused here, and what to listen on instead: a loopback TCP port, the
// socket's port. The lock file, umask and stale-socket handling of
// listen_unix.go are written for Linux, macOS and the BSDs.
func unixListenersUnavailable(port int) error {
	name := runtime.GOOS
	if name == "windows" {
		name = "Windows"
	}
	return fmt.Errorf("unix-socket listeners are not available on %s: listen on 127.0.0.1:%d", name, port)
}

// listenUnix refuses: ParseListenAddr does not make unix addresses here.
func listenUnix(a ListenAddr) (net.Listener, bool, error) {
	return nil, false, unixListenersUnavailable(suggestedPort(a.Address, defaultSocketPort))
}

// openFilesLimit is Windows' (and any other system's without
// RLIMIT_NOFILE) stand-in: sockets are handles there, limited by memory;
// 16384 gives the 4096 cap.
func openFilesLimit() int { return 16384 }
