//go:build unix

package chain

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// readPinFile reads a pin file that must be a regular file, not a symbolic
// link (O_NOFOLLOW), owned by this user or root and writable by nobody else.
func readPinFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("pin: %s is a symbolic link: a pin file must be a regular file of this user; remove the link and pin again (pgverifyproxy chain fetch)", path)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("pin: reading %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("pin: reading %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("pin: %s is not a regular file", path)
	}
	if err := checkPrivate(path, st); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPinFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("pin: reading %s: %w", path, err)
	}
	if len(data) > maxPinFileBytes {
		return nil, fmt.Errorf("pin: %s is larger than %d bytes: not a pin file", path, maxPinFileBytes)
	}
	return data, nil
}

// checkPrivate refuses a pin file or directory that another local user
// could have written, as ssh's StrictModes does: it must be owned by the
// effective user or root and not be writable by group or others. Another
// user able to write there could plant a pin for a server of their own.
func checkPrivate(path string, st fs.FileInfo) error {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	euid := os.Geteuid()
	if int(sys.Uid) != euid && sys.Uid != 0 {
		return fmt.Errorf("pin: %s is owned by uid %d, not by this user (uid %d) or root: another user could plant a pin there; fix: chown %d %s, or use a --pin-dir of your own", path, sys.Uid, euid, euid, path)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		fix := "chmod go-w " + path
		if st.IsDir() {
			fix = "chmod 700 " + path
		}
		return fmt.Errorf("pin: %s is writable by group or others (mode %04o): another local user could plant a pin there; fix: %s", path, perm, fix)
	}
	return nil
}
