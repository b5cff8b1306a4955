package chain

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// DefaultPinDir is where pins live when no pin directory is given, by the
// platform's convention:
//
//   - Windows: %LocalAppData%\pgverifyproxy;
//   - macOS: $XDG_STATE_HOME/pgverifyproxy when XDG_STATE_HOME is set,
//     else ~/Library/Application Support/pgverifyproxy;
//   - Linux and every other system: $XDG_STATE_HOME/pgverifyproxy, else
//     ~/.local/state/pgverifyproxy.
//
// XDG_STATE_HOME counts only when it is an absolute path (the XDG rule).
func DefaultPinDir() (string, error) {
	return pinDirFor(runtime.GOOS, os.Getenv, os.UserHomeDir)
}

// pinDirFor is DefaultPinDir for the system goos, with its environment
// and home directory from getenv and home: the choice, apart from the
// host, for tests. The path is joined with the host's separator.
func pinDirFor(goos string, getenv func(string) string, home func() (string, error)) (string, error) {
	const name = "pgverifyproxy"
	if goos == "windows" {
		// XDG_STATE_HOME is a unix convention: not consulted here.
		d := getenv("LocalAppData")
		if !isAbsFor(goos, d) {
			return "", errors.New("no pin directory: set --pin-dir (LocalAppData is not set to an absolute path)")
		}
		return filepath.Join(d, name), nil
	}
	if d := getenv("XDG_STATE_HOME"); d != "" && isAbsFor(goos, d) {
		return filepath.Join(d, name), nil
	}
	h, err := home()
	if err != nil || h == "" {
		return "", errors.New("no pin directory: set --pin-dir (no HOME or XDG_STATE_HOME)")
	}
	switch goos {
	case "darwin", "ios":
		// os.UserConfigDir's choice there.
		return filepath.Join(h, "Library", "Application Support", name), nil
	}
	return filepath.Join(h, ".local", "state", name), nil
}

// isAbsFor reports whether p is an absolute path on goos: a drive letter
// and a separator, or a UNC path, on Windows; a leading slash elsewhere.
func isAbsFor(goos, p string) bool {
	if goos != "windows" {
		return strings.HasPrefix(p, "/")
	}
	isSep := func(c byte) bool { return c == '\\' || c == '/' }
	if len(p) >= 3 && p[1] == ':' && isSep(p[2]) && ('a' <= p[0]|0x20 && p[0]|0x20 <= 'z') {
		return true
	}
	return len(p) >= 3 && isSep(p[0]) && isSep(p[1]) && !isSep(p[2])
}
