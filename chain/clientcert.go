package chain

import (
	"crypto/tls"
	"errors"
	"fmt"
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
