package chain

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Policy says how a first pin may be chosen.
type Policy string

const (
	// PolicySystem pins the root that the completed chain leads to in the
	// system trust store (default).
	PolicySystem Policy = "system"
	// PolicyTOFU trusts on first use: the top of the presented chain (or the
	// self-signed leaf) is pinned as it is, after the host-name check.
	PolicyTOFU Policy = "tofu"
	// PolicyCAFile pins the root from a CA file the user gave.
	PolicyCAFile Policy = "ca-file"
)

// ParsePolicy accepts "system" and "tofu" ("" means system).
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case "", PolicySystem:
		return PolicySystem, nil
	case PolicyTOFU:
		return PolicyTOFU, nil
	}
	return "", fmt.Errorf("--trust must be system or tofu, not %q", s)
}

// SystemRoots returns the system trust store as an explicit pool: the
// platform's roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured), or, where
// the host has none (a scratch container), Mozilla's roots embedded by
// golang.org/x/crypto/x509roots/fallback when the binary imports it.
func SystemRoots() (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		return nil, fmt.Errorf("loading the system trust store: %w", err)
	}
	return pool, nil
}

// Decision is a chain that may be pinned.
type Decision struct {
	// Policy is how the anchor was chosen.
	Policy Policy
	// Chain is the verified path, leaf first, anchor last.
	Chain []*x509.Certificate
	// Anchor is the certificate to pin.
	Anchor *x509.Certificate
	// Intermediates are the certificates between leaf and anchor.
	Intermediates []*x509.Certificate
}

// TrustError explains why a chain may not be pinned, and what to do.
type TrustError struct {
	// Kind classifies it like a VerifyError.
	Kind Kind
	// Reason says what is wrong.
	Reason string
	// Hint says what to do.
	Hint string
	// Retryable means waiting may help (a self-signed leaf that a
	// provider replaces with a CA-signed one).
	Retryable bool
}

func (e *TrustError) Error() string { return e.Reason }

// Decide chooses what to pin for a fetched chain (completed with AIA
// certificates in extra) under policy. caRoots, when set, are the only
// acceptable anchors (--ca-file). name is the certificate name to check.
func Decide(f *Fetched, extra []*x509.Certificate, name string, policy Policy, system, caRoots *x509.CertPool, now time.Time) (*Decision, error) {
	leaf := f.Presented[0]
	inter := x509.NewCertPool()
	for _, c := range f.Presented[1:] {
		inter.AddCert(c)
	}
	for _, c := range extra {
		inter.AddCert(c)
	}
	verifyWith := func(roots *x509.CertPool) ([]*x509.Certificate, error) {
		chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			return nil, classify(err, f.Presented, now)
		}
		if _, err := VerifyHostname(leaf, name); err != nil {
			return nil, &VerifyError{Kind: KindHostname, Leaf: leaf, Err: err}
		}
		return chains[0], nil
	}
	decided := func(p Policy, chain []*x509.Certificate) *Decision {
		d := &Decision{Policy: p, Chain: chain, Anchor: chain[len(chain)-1]}
		if len(chain) > 2 {
			d.Intermediates = chain[1 : len(chain)-1]
		}
		return d
	}

	if caRoots != nil {
		chain, err := verifyWith(caRoots)
		if err != nil {
			return nil, err
		}
		return decided(PolicyCAFile, chain), nil
	}
	chain, err := verifyWith(system)
	if err == nil {
		return decided(PolicySystem, chain), nil
	}
	var ve *VerifyError
	if !errors.As(err, &ve) || (ve.Kind != KindSelfSigned && ve.Kind != KindUnknownAuthority) {
		return nil, err // expired, host name, ...: no policy makes these trustworthy
	}
	if ve.Kind == KindSelfSigned {
		if policy != PolicyTOFU {
			return nil, &TrustError{Kind: KindSelfSigned, Retryable: true,
				Reason: fmt.Sprintf("the server presents a self-signed certificate (%s, SPKI SHA-256 %s): no public CA vouches for it, so it is not pinned", leaf.Subject.String(), SPKIHash(leaf)),
				Hint:   "new managed services (Timescale Cloud, for one) start with a self-signed certificate and switch to a CA-signed one within about 30 minutes: retry later, or keep trying with --wait 45m; if this certificate is the server's lasting identity and you have checked its fingerprint with the provider, pin it with --trust tofu, or pass it as --ca-file"}
		}
		pool := x509.NewCertPool()
		pool.AddCert(leaf)
		chain, err := verifyWith(pool)
		if err != nil {
			return nil, err
		}
		return decided(PolicyTOFU, chain), nil
	}
	top := topOfChain(leaf, append(append([]*x509.Certificate{}, f.Presented[1:]...), extra...))
	if policy != PolicyTOFU {
		return nil, &TrustError{Kind: KindUnknownAuthority,
			Reason: fmt.Sprintf("the server's chain ends at %q (SPKI SHA-256 %s), which is not in the system trust store: a private CA, or someone intercepting", top.Subject.String(), SPKIHash(top)),
			Hint:   "if the provider documents this CA (RDS, Cloud SQL and Azure publish theirs), pass its certificate with --ca-file; if you have checked the fingerprint above with the provider, pin it with --trust tofu"}
	}
	pool := x509.NewCertPool()
	pool.AddCert(top)
	chain, err = verifyWith(pool)
	if err != nil {
		return nil, err
	}
	return decided(PolicyTOFU, chain), nil
}

// topOfChain follows issuers from leaf through certs (by signature) and
// returns the highest certificate reached.
func topOfChain(leaf *x509.Certificate, certs []*x509.Certificate) *x509.Certificate {
	cur := leaf
	for i := 0; i < 10 && !isSelfSigned(cur); i++ {
		var next *x509.Certificate
		for _, c := range certs {
			if c != cur && cur.CheckSignatureFrom(c) == nil {
				next = c
				break
			}
		}
		if next == nil {
			break
		}
		cur = next
	}
	return cur
}

// FetchAndDecide fetches the upstream's chain, completes it through AIA and
// decides what to pin. It returns the handshake facts too, for reports.
func FetchAndDecide(ctx context.Context, d *Dialer, aia *Completer, policy Policy, system, caRoots *x509.CertPool) (*Fetched, []*x509.Certificate, *Decision, error) {
	f, err := Fetch(ctx, d)
	if err != nil {
		return nil, nil, nil, err
	}
	roots := system
	if caRoots != nil {
		roots = caRoots
	}
	extra, aiaErr := aia.Complete(ctx, f.Presented, roots)
	dec, err := Decide(f, extra, d.VerifyName(), policy, system, caRoots, time.Now())
	if err != nil && aiaErr != nil {
		if ie := incompleteChain(err, f, extra, aiaErr); ie != nil {
			return f, extra, nil, ie
		}
		err = fmt.Errorf("%w (completing the chain through AIA also failed: %v)", err, aiaErr)
	}
	return f, extra, dec, err
}

// incompleteChain rewords an unknown-authority refusal whose chain stops
// below a root because the AIA fetch of the next issuer failed: the cause
// is the fetch, not the CA, and pinning what was reached (--trust tofu)
// would pin a certificate that changes at renewal. It returns nil when
// that is not the case.
func incompleteChain(err error, f *Fetched, extra []*x509.Certificate, aiaErr error) *TrustError {
	var te *TrustError
	if !errors.As(err, &te) || te.Kind != KindUnknownAuthority || len(f.Presented) == 0 {
		return nil
	}
	top := topOfChain(f.Presented[0], append(append([]*x509.Certificate{}, f.Presented[1:]...), extra...))
	if isSelfSigned(top) {
		return nil
	}
	return &TrustError{Kind: KindUnknownAuthority, Retryable: true,
		Reason: fmt.Sprintf("the server's chain stops at %q (SPKI SHA-256 %s), which is not a root, and fetching its issuer through AIA failed: %v", top.Subject.String(), SPKIHash(top), aiaErr),
		Hint:   "the proxy completes a server's chain by downloading the missing issuer from the address in its certificate: check that this machine can reach it over HTTP (port 80, any outbound proxy), then retry (--wait 10m keeps trying); or pass the CA's certificate with --ca-file. Do not pin this with --trust tofu: it would pin a certificate that changes when the server's is renewed"}
}

// describeCerts lists subjects for messages.
func describeCerts(certs []*x509.Certificate) string {
	var s []string
	for _, c := range certs {
		s = append(s, fmt.Sprintf("%q (SPKI SHA-256 %s)", c.Subject.String(), SPKIHash(c)))
	}
	return strings.Join(s, ", ")
}
