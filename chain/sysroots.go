package chain

import (
	"crypto/x509"
	"fmt"
	"iter"
	"sync"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// platformVerifier reports whether crypto/x509 hands a chain to the
// operating system's verifier on goos when the roots are a pool from
// x509.SystemCertPool (see "Use platform verifiers" in crypto/x509's
// verify.go). Such a pool holds no certificates of its own; certificates
// added to it are used by Go's verifier only when the system's refuses.
func platformVerifier(goos string) bool {
	switch goos {
	case "windows", "darwin", "ios":
		return true
	}
	return false
}

// systemRootsFor is SystemRoots on goos with the system pool from load.
func systemRootsFor(goos string, load func() (*x509.CertPool, error)) (*x509.CertPool, error) {
	pool, err := load()
	if err != nil {
		return nil, fmt.Errorf("loading the system trust store: %w", err)
	}
	if !platformVerifier(goos) {
		// SSL_CERT_FILE/SSL_CERT_DIR or the host's files, or, with no
		// host store, the fallback set by x509.SetFallbackRoots: as is.
		return pool, nil
	}
	roots, err := mozillaRoots()
	if err != nil {
		return nil, err
	}
	addRoots(pool, roots)
	return pool, nil
}

// bundleRoot is a parsed root of the Mozilla bundle.
type bundleRoot struct {
	cert *x509.Certificate
	// constraint is the root's condition that X.509 cannot express (a
	// distrust-after date), or nil.
	constraint func([]*x509.Certificate) error
}

// mozillaRoots is the embedded Mozilla bundle, parsed once.
var mozillaRoots = sync.OnceValues(func() ([]bundleRoot, error) {
	return parseRoots(bundle.Roots())
})

// parseRoots parses the roots of a bundle.
func parseRoots(seq iter.Seq[bundle.Root]) ([]bundleRoot, error) {
	var out []bundleRoot
	for r := range seq {
		c, err := x509.ParseCertificate(r.Certificate)
		if err != nil {
			return nil, fmt.Errorf("loading the embedded Mozilla roots: root %d: %w", len(out)+1, err)
		}
		out = append(out, bundleRoot{cert: c, constraint: r.Constraint})
	}
	return out, nil
}

// addRoots adds roots to pool, each with its constraint when it has one.
func addRoots(pool *x509.CertPool, roots []bundleRoot) {
	for _, r := range roots {
		if r.constraint != nil {
			pool.AddCertWithConstraint(r.cert, r.constraint)
		} else {
			pool.AddCert(r.cert)
		}
	}
}
