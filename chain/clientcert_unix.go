//go:build unix

package chain

import (
	"fmt"
	"os"
	"syscall"
)

// checkKeyFileMode applies libpq's rule for private key files: a key owned
// by the current user must have no group or other bits; one owned by root
// may be group-readable (0640) and nothing more. Other owners are not
// checked, as in libpq.
func checkKeyFileMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("upstream client certificate: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("upstream client certificate: key file %s is not a regular file", path)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	perm := uint32(fi.Mode().Perm())
	switch {
	case int(st.Uid) == os.Geteuid() && perm&0o077 != 0:
		return fmt.Errorf("upstream client certificate: key file %s has permissions %04o: group or others have access; chmod 0600 %s", path, perm, path)
	case st.Uid == 0 && perm&0o037 != 0:
		return fmt.Errorf("upstream client certificate: key file %s (owned by root) has permissions %04o: at most 0640 is allowed; chmod 0640 %s", path, perm, path)
	}
	return nil
}
