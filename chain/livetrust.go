package chain

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"
)

// maxRootsRemembered bounds the roots a LiveTrust remembers having seen.
const maxRootsRemembered = 16

// VerifiedObserver is implemented by a TrustSource that wants the verified
// path of each connection once its handshake completed: after the server
// proved it holds the certificate's key, not merely presented a chain it
// may have replayed.
type VerifiedObserver interface {
	// Verified gets the verified path, leaf first, anchor last.
	Verified(path []*x509.Certificate)
}

// LiveTrust is the TrustSource of a route with trust: live. It writes no
// pin: every connection is verified against the system trust store as it
// is at that moment, with libpq's host-name rules, as libpq's
// sslrootcert=system does. A pin would also refuse a certificate
// mis-issued by another public CA; live trust never blocks a legitimate
// change of CA. A change of root is reported, never refused.
type LiveTrust struct {
	// System is the system trust store (SystemRoots). Required.
	System *x509.CertPool
	// AIA completes chains of servers that send only their leaf.
	AIA *Completer
	// OnRootChange, when set, is called when a completed handshake's chain
	// leads to a root (by public key) this LiveTrust has not seen before:
	// from is the root of the previous connection, nil for the first root
	// after start. A root seen before is not reported again, so an
	// upstream whose servers alternate between two CAs is reported once.
	OnRootChange func(from, to *x509.Certificate)

	mu   sync.Mutex
	last *x509.Certificate
	seen [][]byte // SPKIs of the roots seen, oldest first
}

var _ VerifiedObserver = (*LiveTrust)(nil)

// Verifier implements TrustSource.
func (t *LiveTrust) Verifier(context.Context) (*Verifier, error) {
	if t.System == nil {
		return nil, &VerifyError{Kind: KindUnknownAuthority, Err: errors.New("no system trust store loaded")}
	}
	return &Verifier{Roots: t.System, AIA: t.AIA, Source: SourceSystem}, nil
}

// LastRoot returns the root of the last completed handshake, or nil.
func (t *LiveTrust) LastRoot() *x509.Certificate {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// Verified implements VerifiedObserver: it remembers the root of a
// completed handshake and reports a root not seen before.
func (t *LiveTrust) Verified(path []*x509.Certificate) {
	if len(path) == 0 {
		return
	}
	root := path[len(path)-1]
	t.mu.Lock()
	from := t.last
	t.last = root
	known := false
	for _, s := range t.seen {
		if string(s) == string(root.RawSubjectPublicKeyInfo) {
			known = true
			break
		}
	}
	if !known {
		if len(t.seen) == maxRootsRemembered {
			t.seen = t.seen[1:]
		}
		t.seen = append(t.seen, root.RawSubjectPublicKeyInfo)
	}
	t.mu.Unlock()
	if !known && t.OnRootChange != nil {
		t.OnRootChange(from, root)
	}
}
