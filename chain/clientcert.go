package chain

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// LoadClientCertificate reads the certificate (chain) and private key the
// proxy presents to upstreams that ask for one (pg_hba "cert" or
// clientcert=verify-full). Like libpq, it refuses a key file that other users
// may read: 0600 or stricter, or 0640 when the file belongs to root. The
// certificate is only ever sent to a server that has already passed
// verify-full (crypto/tls verifies the server before it sends its own).
func LoadClientCertificate(certFile, keyFile string) (*tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("upstream client certificate: upstream_cert and upstream_key go together")
	}
	if err := checkKeyFileMode(keyFile); err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("upstream client certificate: loading %s and %s: %w", certFile, keyFile, err)
	}
	if now := time.Now(); now.After(pair.Leaf.NotAfter) {
		return nil, fmt.Errorf("upstream client certificate: %s expired on %s; the server will refuse it: renew it",
			certFile, pair.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &pair, nil
}

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
