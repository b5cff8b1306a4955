package chain

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
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
	// PolicyLive pins nothing: every connection is verified against the
	// system trust store as it is then, like libpq's sslrootcert=system. A
	// change of root is logged and counted, never refused.
	PolicyLive Policy = "live"
)

// ParsePolicy accepts "system", "tofu" and "live" ("" means system).
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case "", PolicySystem:
		return PolicySystem, nil
	case PolicyTOFU:
		return PolicyTOFU, nil
	case PolicyLive:
		return PolicyLive, nil
	}
	return "", fmt.Errorf("--trust must be system, tofu or live (system: pin the public root the chain leads to; tofu: pin what the server presents, after you checked it; live: no pin, the system trust store at every connection), not %s", Quote(s))
}

// SystemRoots returns the system trust store as an explicit pool.
//
// On Linux and the other unix systems but macOS it is the host's roots
// (SSL_CERT_FILE and SSL_CERT_DIR are honoured), or, where the host has
// none (a scratch container), Mozilla's roots embedded by
// golang.org/x/crypto/x509roots/fallback when the binary imports it.
//
// On Windows and macOS Go verifies against this pool with the operating
// system's verifier (its certificate store, SSL_CERT_FILE ignored), so
// Mozilla's roots (golang.org/x/crypto/x509roots/fallback/bundle) are
// added to the pool: a chain the system refuses is verified again by Go
// against those alone. The store there is the system's plus Mozilla's.
func SystemRoots() (*x509.CertPool, error) {
	return systemRootsFor(runtime.GOOS, x509.SystemCertPool)
}

// Decision is a chain that may be pinned.
type Decision struct {
	// Policy is how the anchor was chosen.
	Policy Policy
	// Chain is the verified path, leaf first, anchor last.
	Chain []*x509.Certificate
	// Anchor is the anchor of Chain.
	Anchor *x509.Certificate
	// Anchors are every anchor a verified path reaches, Anchor first: a
	// chain with cross-signed CAs verifies along several paths, and a
	// server that switches between them has not changed its identity.
	Anchors []*x509.Certificate
	// Intermediates are the certificates between leaf and anchor on every
	// verified path (hints for building paths, never anchors).
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
	verifyWith := func(roots *x509.CertPool) ([][]*x509.Certificate, error) {
		chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			return nil, classify(err, f.Presented, now)
		}
		// Only chains along which the name holds count: an anchor reached
		// only through a CA whose name constraints exclude the name is not
		// pinned.
		passed, _, err := verifyHostnameChains(chains, name)
		if err != nil {
			return nil, &VerifyError{Kind: KindHostname, Leaf: leaf, Err: err}
		}
		return passed, nil
	}
	decided := func(p Policy, chains [][]*x509.Certificate) *Decision {
		chain := chains[0]
		d := &Decision{Policy: p, Chain: chain, Anchor: chain[len(chain)-1]}
		seen := map[[32]byte]bool{}
		for _, c := range chains {
			if a := c[len(c)-1]; !seen[sha256.Sum256(a.Raw)] {
				seen[sha256.Sum256(a.Raw)] = true
				d.Anchors = append(d.Anchors, a)
			}
		}
		for _, c := range chains {
			if len(c) < 3 {
				continue // no certificate between leaf and anchor
			}
			for _, ic := range c[1 : len(c)-1] {
				if !seen[sha256.Sum256(ic.Raw)] {
					seen[sha256.Sum256(ic.Raw)] = true
					d.Intermediates = append(d.Intermediates, ic)
				}
			}
		}
		return d
	}

	if caRoots != nil {
		chains, err := verifyWith(caRoots)
		if err != nil {
			return nil, err
		}
		return decided(PolicyCAFile, chains), nil
	}
	chains, err := verifyWith(system)
	if err == nil {
		return decided(PolicySystem, chains), nil
	}
	var ve *VerifyError
	if !errors.As(err, &ve) || (ve.Kind != KindSelfSigned && ve.Kind != KindUnknownAuthority) {
		return nil, err // expired, host name, ...: no policy makes these trustworthy
	}
	if ve.Kind == KindSelfSigned {
		if policy != PolicyTOFU {
			return nil, &TrustError{Kind: KindSelfSigned, Retryable: true,
				Reason: fmt.Sprintf("the server presents a self-signed certificate (%s, SPKI SHA-256 %s): no public CA vouches for it, so it is not pinned", Quote(leaf.Subject.String()), SPKIHash(leaf)),
				Hint:   "new managed services (Timescale Cloud, for one) start with a self-signed certificate and switch to a CA-signed one within about 30 minutes: retry later, or keep trying with --wait 45m; if this certificate is the server's lasting identity and you have checked its fingerprint with the provider, pin it with --trust tofu, or pass it as --ca-file"}
		}
		pool := x509.NewCertPool()
		pool.AddCert(leaf)
		chains, err := verifyWith(pool)
		if err != nil {
			return nil, err
		}
		return decided(PolicyTOFU, chains), nil
	}
	top := topOfChain(leaf, append(append([]*x509.Certificate{}, f.Presented[1:]...), extra...))
	if policy != PolicyTOFU {
		return nil, &TrustError{Kind: KindUnknownAuthority,
			Reason: fmt.Sprintf("the server's chain ends at %s (SPKI SHA-256 %s), which is not in the system trust store: a private CA, or someone intercepting", Quote(top.Subject.String()), SPKIHash(top)),
			Hint:   "if the provider documents this CA (RDS, Cloud SQL and Azure publish theirs), pass its certificate with --ca-file; if you have checked the fingerprint above with the provider, pin it with --trust tofu"}
	}
	if top == leaf || !top.IsCA {
		// Pinning a leaf that is not self-signed would refuse every
		// connection after the server's next certificate renewal (RDS
		// renews leaves by itself).
		return nil, &TrustError{Kind: KindUnknownAuthority,
			Reason: fmt.Sprintf("the server sent only its own certificate %s (issued by %s), not the CA that signed it, and the CA could not be found: trust on first use pins a CA, never a server certificate that changes at each renewal", Quote(leaf.Subject.String()), Quote(leaf.Issuer.String())),
			Hint:   "pass the provider's CA bundle with --ca-file (RDS, Cloud SQL and Azure publish theirs; for a private CA, ask the server's operator for its root certificate)"}
	}
	if !isSelfSigned(top) {
		// libpq's verify-full needs the root in its root file (OpenSSL
		// refuses a chain that ends at an intermediate), and the proxy
		// accepts nothing it refuses: pinning this CA would give a pin,
		// and a root.crt, that libpq cannot use.
		return nil, &TrustError{Kind: KindUnknownAuthority,
			Reason: fmt.Sprintf("the server's chain ends at the CA %s (SPKI SHA-256 %s), issued by %s, whose certificate neither the server nor AIA provides: trust on first use pins a root CA, as libpq's verify-full needs one, never an intermediate", Quote(top.Subject.String()), SPKIHash(top), Quote(top.Issuer.String())),
			Hint:   fmt.Sprintf("get the root CA certificate %s from the server's operator and pass it with --ca-file (or have the server send its whole chain, root included, in its ssl_cert_file)", Quote(top.Issuer.String()))}
	}
	pool := x509.NewCertPool()
	pool.AddCert(top)
	chains, err = verifyWith(pool)
	if err != nil {
		return nil, err
	}
	return decided(PolicyTOFU, chains), nil
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
	if err == nil && len(extra) > 0 {
		aia.Remember(dec.Chain, extra)
	}
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
	var refused *RefusedAddressError
	if errors.As(aiaErr, &refused) {
		return &TrustError{Kind: KindUnknownAuthority,
			Reason: fmt.Sprintf("the server's chain stops at %s (SPKI SHA-256 %s), which is not a root, and its issuer's address is not fetched: %v", Quote(top.Subject.String()), SPKIHash(top), aiaErr),
			Hint:   "if this CA's AIA server is on your internal network, set aia_allow_private: true (--aia-allow-private); or pass the CA's certificate with --ca-file. A public CA never publishes its certificates on a private address: if this server should have a public certificate, someone may be intercepting the connection"}
	}
	return &TrustError{Kind: KindUnknownAuthority, Retryable: true,
		Reason: fmt.Sprintf("the server's chain stops at %s (SPKI SHA-256 %s), which is not a root, and fetching its issuer through AIA failed: %v", Quote(top.Subject.String()), SPKIHash(top), aiaErr),
		Hint:   "the proxy completes a server's chain by downloading the missing issuer from the address in its certificate: check that this machine can reach it over HTTP (port 80, any outbound proxy), then retry (--wait 10m keeps trying); or pass the CA's certificate with --ca-file. Do not pin this with --trust tofu: it would pin a certificate that changes when the server's is renewed"}
}

// describeCerts lists subjects for messages.
func describeCerts(certs []*x509.Certificate) string {
	var s []string
	for _, c := range certs {
		s = append(s, fmt.Sprintf("%s (SPKI SHA-256 %s)", Quote(c.Subject.String()), SPKIHash(c)))
	}
	return strings.Join(s, ", ")
}
