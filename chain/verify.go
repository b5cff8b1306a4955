package chain

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// Verifier implements libpq's sslmode=verify-full for one upstream: the
// presented chain must lead to one of Roots, and the leaf must be valid for
// ServerName under libpq's host-name rules.
type Verifier struct {
	// Roots are the only trust anchors. Never nil in use.
	Roots *x509.CertPool
	// Intermediates are path-building hints (pinned intermediates); never
	// anchors.
	Intermediates []*x509.Certificate
	// AIA, when set, fetches missing intermediates for servers that send
	// only their leaf; with Pinned, only an issuer of the leaf signed by a
	// pinned anchor or intermediate is taken (Completer.CompleteUnder). The
	// intermediates of a chain that verified are remembered for later
	// connections (Completer.Remember).
	AIA *Completer
	// Pinned, when set, are the pinned anchors behind Roots: a chain that
	// no longer leads to them is reported as a changed identity.
	Pinned []*x509.Certificate
	// PinnedSince is when the anchor was first pinned.
	PinnedSince time.Time
	// PinFile is where the pin lives, for messages.
	PinFile string
	// Upstream is host:port, for messages.
	Upstream string
	// System, when set, names a public root that a changed chain leads to.
	System *x509.CertPool
	// ServerName is the name checked against the certificate: the configured
	// server_name, or the upstream host. Never a resolved address.
	ServerName string
	// Now returns the time used for validity checks; nil means time.Now.
	Now func() time.Time
	// OnCommonName, when set, is called when the host name matched the CN
	// only (libpq's fallback), so the caller can log it.
	OnCommonName func(cert *x509.Certificate)
	// Repin is the command that replaces the pin, named when the identity
	// changed; empty means a generic form of it.
	Repin string
	// Source is where Roots come from, for the advice given on a failure.
	Source AnchorSource
}

// AnchorSource says where a Verifier's trust anchors come from.
type AnchorSource int

const (
	// SourceConfigured: roots the user gave (a CA file), or a pin when
	// Pinned is set.
	SourceConfigured AnchorSource = iota
	// SourceSystem: the system trust store at each connection (trust:
	// live); there is no file to update.
	SourceSystem
)

// VerifyConnection is suitable for tls.Config.VerifyConnection.
func (v *Verifier) VerifyConnection(cs tls.ConnectionState) error {
	_, err := v.Verify(cs.PeerCertificates)
	return err
}

// Verify checks a presented chain (leaf first) and returns the verified chain
// from leaf to anchor.
func (v *Verifier) Verify(presented []*x509.Certificate) ([]*x509.Certificate, error) {
	return v.VerifyContext(context.Background(), presented)
}

// VerifyContext is Verify with the context of the connection being
// verified: the AIA fetches it may need end with it.
func (v *Verifier) VerifyContext(ctx context.Context, presented []*x509.Certificate) ([]*x509.Certificate, error) {
	if v.Roots == nil {
		return nil, &VerifyError{Kind: KindUnknownAuthority, Err: errors.New("no trust anchors configured")}
	}
	if len(presented) == 0 {
		return nil, &VerifyError{Kind: KindNoCertificate, Err: errors.New("the server presented no certificate")}
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	leaf := presented[0]
	inter := x509.NewCertPool()
	for _, c := range presented[1:] {
		inter.AddCert(c)
	}
	for _, c := range v.Intermediates {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{
		Roots:         v.Roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	chains, err := leaf.Verify(opts)
	var extra []*x509.Certificate
	if err != nil && v.AIA != nil && isUnknownAuthority(err) {
		// The server may send only its leaf, or a new intermediate:
		// complete the path through AIA (fetched certificates are hints).
		actx, cancel := context.WithTimeout(ctx, AIATimeout)
		if len(v.Pinned) > 0 {
			extra, _ = v.AIA.CompleteUnder(actx, presented, v.Pinned, v.Intermediates)
		} else {
			extra, _ = v.AIA.Complete(actx, presented, v.Roots)
		}
		cancel()
		for _, c := range extra {
			inter.AddCert(c)
		}
		if len(extra) > 0 {
			chains, err = leaf.Verify(opts)
		}
	}
	if err != nil {
		verr := classify(err, presented, now)
		var ve *VerifyError
		if len(v.Pinned) > 0 && errors.As(verr, &ve) && (ve.Kind == KindUnknownAuthority || ve.Kind == KindSelfSigned) {
			return nil, v.identityChanged(leaf, append(append([]*x509.Certificate{}, presented[1:]...), extra...), now)
		}
		if ve != nil || errors.As(verr, &ve) {
			ve.Source = v.Source
		}
		return nil, verr
	}
	if chains, err = rootedChains(chains); err != nil {
		return nil, &VerifyError{Kind: KindUnknownAuthority, Leaf: leaf, Err: err, Source: v.Source}
	}
	passed, match, err := verifyHostnameChains(chains, v.ServerName)
	if err != nil {
		return nil, &VerifyError{Kind: KindHostname, Leaf: leaf, Err: err, Source: v.Source}
	}
	path := passed[0]
	if match == MatchCommonName && v.OnCommonName != nil {
		v.OnCommonName(leaf)
	}
	if len(extra) > 0 {
		v.AIA.Remember(path, extra)
	}
	return path, nil
}

// PartialChainError is a chain that verified up to a trust anchor which
// is not a self-signed root. libpq (OpenSSL without
// X509_V_FLAG_PARTIAL_CHAIN) refuses it: its root file must hold the whole
// chain up to the root CA. So does the proxy, which accepts what
// verify-full accepts and nothing more.
type PartialChainError struct {
	// Anchor is the certificate of the anchors the chain ended at.
	Anchor *x509.Certificate
}

func (e *PartialChainError) Error() string {
	return fmt.Sprintf("the chain ends at %s in the trust anchors, which is not a self-signed root CA (it was issued by %s): libpq's verify-full refuses such a chain, as the proxy does; add the root CA certificate that issued it",
		Quote(e.Anchor.Subject.String()), Quote(e.Anchor.Issuer.String()))
}

// rootedChains keeps the chains that end at a self-signed certificate, or
// returns a PartialChainError naming the anchor of the first chain.
func rootedChains(chains [][]*x509.Certificate) ([][]*x509.Certificate, error) {
	var rooted [][]*x509.Certificate
	for _, c := range chains {
		if len(c) > 0 && isSelfSigned(c[len(c)-1]) {
			rooted = append(rooted, c)
		}
	}
	if len(rooted) == 0 && len(chains) > 0 && len(chains[0]) > 0 {
		return nil, &PartialChainError{Anchor: chains[0][len(chains[0])-1]}
	}
	return rooted, nil
}

func isUnknownAuthority(err error) bool {
	var ua x509.UnknownAuthorityError
	return errors.As(err, &ua)
}

// identityChanged builds the SSH-style error for a chain that no longer
// leads to the pinned anchor.
func (v *Verifier) identityChanged(leaf *x509.Certificate, others []*x509.Certificate, now time.Time) error {
	newTop := topOfChain(leaf, others)
	public := ""
	if v.System != nil {
		inter := x509.NewCertPool()
		for _, c := range others {
			inter.AddCert(c)
		}
		if chains, err := leaf.Verify(x509.VerifyOptions{Roots: v.System, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
			newTop = chains[0][len(chains[0])-1]
			public = " (a root in the system trust store)"
		}
	}
	since := ""
	if !v.PinnedSince.IsZero() {
		since = ", pinned " + v.PinnedSince.UTC().Format("2006-01-02")
	}
	repin := v.Repin
	if repin == "" {
		repin = "pgverifyproxy chain fetch --upstream HOST:PORT --repin"
	}
	return &VerifyError{Kind: KindIdentityChanged, Leaf: leaf, Err: fmt.Errorf(
		"THE UPSTREAM'S IDENTITY CHANGED: its certificate chain no longer leads to the pinned anchor %s%s; it now leads to %s (SPKI SHA-256 %s)%s. Someone could be intercepting the connection (man-in-the-middle), or the provider changed its CA. Every connection is refused until either: after confirming the change with the provider, re-pin (%s), or give this route trust: live (verified against the system trust store at each connection, no pin)",
		describeCerts(v.Pinned), since, Quote(newTop.Subject.String()), SPKIHash(newTop), public, repin)}
}

// Kind is the class of a verification failure.
type Kind int

const (
	// KindOther is any failure not listed below.
	KindOther Kind = iota
	// KindNoCertificate: the server sent no certificate.
	KindNoCertificate
	// KindUnknownAuthority: the chain does not lead to a trusted root.
	KindUnknownAuthority
	// KindSelfSigned: the leaf is self-signed and not itself trusted.
	KindSelfSigned
	// KindExpired: a certificate in the chain has expired.
	KindExpired
	// KindNotYetValid: a certificate in the chain is not valid yet.
	KindNotYetValid
	// KindHostname: the chain is trusted but not for this host name.
	KindHostname
	// KindIdentityChanged: the chain no longer leads to the pinned anchor.
	KindIdentityChanged
)

// String names the kind in a few words, as used in logs and metrics.
func (k Kind) String() string {
	switch k {
	case KindNoCertificate:
		return "no certificate"
	case KindUnknownAuthority:
		return "unknown authority"
	case KindSelfSigned:
		return "self-signed certificate"
	case KindExpired:
		return "expired certificate"
	case KindNotYetValid:
		return "certificate not yet valid"
	case KindHostname:
		return "host name mismatch"
	case KindIdentityChanged:
		return "identity changed"
	default:
		return "invalid certificate"
	}
}

// VerifyError is a failed verify-full check.
type VerifyError struct {
	// Kind classifies the failure.
	Kind Kind
	// Source is where the verifier's anchors came from.
	Source AnchorSource
	// Leaf is the server's certificate, when there was one.
	Leaf *x509.Certificate
	// Err is the underlying error.
	Err error
}

func (e *VerifyError) Error() string {
	switch e.Kind {
	case KindHostname:
		return e.Err.Error()
	case KindSelfSigned:
		return fmt.Sprintf("certificate is self-signed (subject %s, SPKI sha256 %s) and is not a trusted root", Quote(e.Leaf.Subject.String()), SPKIHash(e.Leaf))
	case KindUnknownAuthority:
		var pc *PartialChainError
		if errors.As(e.Err, &pc) {
			return pc.Error()
		}
		if e.Leaf != nil {
			return fmt.Sprintf("certificate signed by unknown authority (leaf %s issued by %s)", Quote(e.Leaf.Subject.String()), Quote(e.Leaf.Issuer.String()))
		}
		return fmt.Sprintf("certificate signed by unknown authority: %s", EscapeControls(e.Err.Error()))
	default:
		return EscapeControls(e.Err.Error())
	}
}

// Unwrap returns the underlying error.
func (e *VerifyError) Unwrap() error { return e.Err }

// classify turns a crypto/x509 error into a VerifyError with a kind.
func classify(err error, presented []*x509.Certificate, now time.Time) error {
	leaf := presented[0]
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		switch inv.Reason {
		case x509.Expired:
			c := inv.Cert
			if c == nil {
				c = leaf
			}
			if now.Before(c.NotBefore) {
				return &VerifyError{Kind: KindNotYetValid, Leaf: leaf, Err: fmt.Errorf("certificate %s is not valid before %s (now %s)", Quote(c.Subject.String()), c.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
			}
			return &VerifyError{Kind: KindExpired, Leaf: leaf, Err: fmt.Errorf("certificate %s expired at %s (now %s)", Quote(c.Subject.String()), c.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
		}
		return &VerifyError{Kind: KindOther, Leaf: leaf, Err: err}
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		if isSelfSigned(leaf) {
			return &VerifyError{Kind: KindSelfSigned, Leaf: leaf, Err: err}
		}
		return &VerifyError{Kind: KindUnknownAuthority, Leaf: leaf, Err: err}
	}
	return &VerifyError{Kind: KindOther, Leaf: leaf, Err: err}
}

// isSelfSigned reports whether c names itself as issuer and its own key signs it.
func isSelfSigned(c *x509.Certificate) bool {
	if !bytes.Equal(c.RawIssuer, c.RawSubject) {
		return false
	}
	return c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// SPKIHash returns the base64 SHA-256 of the certificate's public key info,
// the form used by HPKP and by `openssl ... | openssl dgst -sha256 -binary | base64`.
func SPKIHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// pemCertificates parses every CERTIFICATE block of data and returns the
// types of the other blocks it passed over.
func pemCertificates(data []byte) (certs []*x509.Certificate, otherTypes []string, err error) {
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return certs, otherTypes, nil
		}
		if block.Type != "CERTIFICATE" {
			otherTypes = append(otherTypes, block.Type)
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
}

// LoadCAFile reads a PEM bundle of trust anchors. It fails when the file holds
// no certificate, so a wrong path or a key file is caught at start-up.
func LoadCAFile(path string) (*x509.CertPool, []*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading CA file: %w", err)
	}
	certs, _, err := pemCertificates(data)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing CA file %s: %w", path, err)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("CA file %s holds no PEM certificate", path)
	}
	if !slices.ContainsFunc(certs, isSelfSigned) {
		return nil, nil, fmt.Errorf("CA file %s holds no self-signed root CA certificate (its first is %s, issued by %s): libpq's verify-full refuses a root file without the root, so the proxy does too; add the root CA certificate that issued it (pgverifyproxy chain fetch --out FILE writes the whole chain's root)",
			path, Quote(certs[0].Subject.String()), Quote(certs[0].Issuer.String()))
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, certs, nil
}

// HintContext is what a hint about a failed verification may name.
type HintContext struct {
	// Trust describes the trust anchors in a few words, e.g. "the roots in
	// --ca-file /etc/pg/root.crt".
	Trust string
	// Repin is the command that replaces the upstream's pin. Empty when the
	// upstream is trusted through a CA file rather than a pin.
	Repin string
}

// VerifyHint says what to do about a failed verify-full check: err is, or
// wraps, the VerifyError.
func VerifyHint(err error, hc HintContext) string {
	trust := hc.Trust
	if trust == "" {
		trust = "the configured trust anchors"
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		return "the server's certificate could not be verified against " + trust
	}
	if ve.Source == SourceSystem && (ve.Kind == KindUnknownAuthority || ve.Kind == KindSelfSigned) {
		return "the server's chain does not lead to a root of the system trust store (trust: live): if the server uses a private CA, give its certificate as ca_file (--ca-file), or pin what it presents after checking its fingerprint (trust: tofu); if it should have a public certificate, someone may be intercepting the connection"
	}
	switch ve.Kind {
	case KindIdentityChanged:
		repin := hc.Repin
		if repin == "" {
			repin = "pgverifyproxy chain fetch --upstream HOST:PORT --repin"
		}
		return "if the provider has confirmed a change of CA, re-pin with: " + repin + " (running proxies pick up the new pin by themselves); or, for a server with a publicly trusted certificate, set trust: live on this route (--trust live: the system trust store at every connection, no pin, a change of CA never blocks); until then every connection is refused"
	case KindHostname:
		return "connect with a name the certificate carries (in upstream, or in server_name / --server-name when the address differs from the certificate's name); if it should carry this name, the server's certificate is wrong"
	case KindExpired:
		return "the server's certificate (or a CA in its chain) has expired: the server's operator must renew it; also check this machine's clock"
	case KindNotYetValid:
		return "a certificate in the chain is not valid yet: check this machine's clock, or wait until the certificate's start date"
	case KindSelfSigned:
		return "the server presents a self-signed certificate that is not among " + trust + "; if you have checked its fingerprint out of band, put that certificate in --ca-file"
	case KindUnknownAuthority:
		if hc.Repin == "" {
			return "the server's chain does not lead to " + trust + ": if the server's CA changed, put the new CA (as the provider publishes it) in that file; otherwise someone may be intercepting the connection"
		}
		return "the server's chain does not lead to " + trust + "; if the server's CA changed, re-pin with: " + hc.Repin + "; otherwise someone may be intercepting the connection"
	}
	return "the server's certificate could not be verified against " + trust
}
