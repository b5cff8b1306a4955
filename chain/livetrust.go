package chain

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"sync"
)

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
	// OnRootChange, when set, is called when a verified chain leads to
	// another root (by public key) than the last verified chain did. It is
	// not called for the first chain after start.
	OnRootChange func(from, to *x509.Certificate)

	mu   sync.Mutex
	last *x509.Certificate
}

// Verifier implements TrustSource.
func (t *LiveTrust) Verifier(context.Context) (*Verifier, error) {
	if t.System == nil {
		return nil, &VerifyError{Kind: KindUnknownAuthority, Err: errors.New("no system trust store loaded")}
	}
	return &Verifier{Roots: t.System, AIA: t.AIA, OnVerified: t.observe}, nil
}

// LastRoot returns the root of the last verified chain, or nil.
func (t *LiveTrust) LastRoot() *x509.Certificate {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// observe remembers the root of a verified path and reports a change.
func (t *LiveTrust) observe(path []*x509.Certificate) {
	if len(path) == 0 {
		return
	}
	root := path[len(path)-1]
	t.mu.Lock()
	from := t.last
	changed := from != nil && !bytes.Equal(from.RawSubjectPublicKeyInfo, root.RawSubjectPublicKeyInfo)
	t.last = root
	t.mu.Unlock()
	if changed && t.OnRootChange != nil {
		t.OnRootChange(from, root)
	}
}
