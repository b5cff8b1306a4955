package chain

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// AIA completion limits (docs/trust-model.md, "What the AIA fetcher contacts").
const (
	// AIATimeout bounds one caIssuers fetch.
	AIATimeout = 10 * time.Second
	// AIAMaxBytes bounds one caIssuers response.
	AIAMaxBytes = 64 << 10
	// AIAMaxURLsPerCert bounds the caIssuers URLs followed per certificate.
	AIAMaxURLsPerCert = 5
	// AIAMaxDepth bounds how many issuer levels are fetched.
	AIAMaxDepth = 4
	// AIAMaxFetches bounds the fetches of one Complete call: the URLs come
	// from certificates an attacker on the path may have made.
	AIAMaxFetches = AIAMaxDepth * AIAMaxURLsPerCert
	// AIAMaxFetchesPinned bounds the fetches of one CompleteUnder call: a
	// route with a pin only looks for a new issuer of its leaf.
	AIAMaxFetchesPinned = 2
)

// Completer fetches missing intermediates from the caIssuers URLs of the
// Authority Information Access extension. What it fetches is only ever used
// to build a path: it is never a trust anchor.
//
// The URLs come from certificates that are not verified yet, so the
// default client refuses to connect to loopback, link-local, private and
// other non-public addresses (see AllowPrivate), and nothing fetched is
// cached: only intermediates of a chain that verified, handed back through
// Remember, are kept, in a cache bounded in count and age.
//
// A Completer is safe for concurrent use; its zero value is ready to use.
type Completer struct {
	// Client does the HTTP requests; nil means the guarded default client
	// (http only, at most 3 redirects, Timeout, every destination
	// checked unless AllowPrivate, proxies from Proxy). A Client set here
	// is used as it is: the destination guard, AllowPrivate and Proxy
	// do not apply to it.
	Client *http.Client
	// Timeout bounds each fetch; zero means AIATimeout.
	Timeout time.Duration
	// MaxBytes bounds each response; zero means AIAMaxBytes.
	MaxBytes int64
	// Logf, when set, receives one line per fetch and per use of a cached
	// intermediate.
	Logf func(format string, args ...any)

	// AllowPrivate lets the default client fetch from loopback,
	// link-local, private (RFC 1918, the CGNAT range 100.64.0.0/10, IPv6
	// ULA fc00::/7), unspecified, multicast and broadcast addresses,
	// which it refuses otherwise: the explicit opt-in (aia_allow_private,
	// --aia-allow-private) for a CA whose AIA server is on an internal
	// network, and for tests.
	AllowPrivate bool
	// Proxy chooses the HTTP proxy of a request, as http.Transport.Proxy;
	// nil means http.ProxyFromEnvironment (HTTP_PROXY, NO_PROXY). The
	// connection to the proxy is allowed wherever it is; the URL's own
	// host is resolved and checked before the request goes to the proxy.
	Proxy func(*http.Request) (*url.URL, error)
	// Resolver resolves the host names of caIssuers URLs for the default
	// client (the dial, and the check before a request goes to a proxy);
	// nil means net.DefaultResolver.
	Resolver *net.Resolver

	// CacheSize bounds the verified intermediates kept (see Remember);
	// zero means AIACacheSize, a negative value keeps none.
	CacheSize int
	// CacheTTL bounds how long a verified intermediate is kept; zero
	// means AIACacheTTL.
	CacheTTL time.Duration
	// Now returns the time used for the cache's ages and for dropping
	// cached certificates past their NotAfter; nil means time.Now.
	Now func() time.Time

	cache verifiedCache
}

// Complete returns the certificates fetched through AIA, level by level from
// the presented ones, until roots (may be nil) and the presented plus fetched
// intermediates chain the leaf, or nothing new can be fetched, or
// AIAMaxDepth levels were followed, or AIAMaxFetches fetches were made.
// Certificates already seen are skipped, and of each answer only the
// certificates named as the asking certificate's issuer are kept.
//
// A certificate whose issuer is in the cache of verified intermediates (see
// Remember) gets that issuer and is not fetched for; when roots are given
// and the chain still does not verify with what the cache gave, the URLs
// are fetched after all. Complete itself caches nothing.
//
// Every fetch runs under ctx, and Complete stops as soon as ctx is done,
// returning what it has with an error that wraps ctx.Err().
func (c *Completer) Complete(ctx context.Context, presented []*x509.Certificate, roots *x509.CertPool) ([]*x509.Certificate, error) {
	if len(presented) == 0 {
		return nil, errors.New("aia: no certificate to complete")
	}
	cp := &completion{c: c, ctx: ctx, seen: map[[32]byte]bool{}, pool: x509.NewCertPool(), answers: map[string][]*x509.Certificate{}}
	for _, cert := range presented {
		cp.seen[sha256.Sum256(cert.Raw)] = true
		cp.pool.AddCert(cert)
	}
	usedCache, err := cp.levels(presented, roots, true)
	if err == nil && usedCache && roots != nil && !chains(presented[0], roots, cp.pool) {
		// What the cache gave leads elsewhere (another anchor's
		// cross-sign, say): fetch as if nothing were cached.
		_, err = cp.levels(presented, roots, false)
	}
	if err != nil {
		return cp.fetched, err
	}
	if len(cp.fetched) == 0 && len(cp.errs) > 0 {
		return nil, errors.Join(cp.errs...)
	}
	return cp.fetched, nil
}

// completion is the state of one Complete call.
type completion struct {
	c       *Completer
	ctx     context.Context
	seen    map[[32]byte]bool
	pool    *x509.CertPool
	fetched []*x509.Certificate
	errs    []error
	fetches int
	// answers are this call's answers by URL, so that a URL named twice
	// (loops) is fetched once; dropped with the call.
	answers map[string][]*x509.Certificate
}

// levels follows AIA from presented, level by level; with useCache, a
// certificate whose issuer is cached gets it instead of a fetch. It
// returns whether the cache was used, and an error only when ctx is done.
func (cp *completion) levels(presented []*x509.Certificate, roots *x509.CertPool, useCache bool) (usedCache bool, err error) {
	frontier := presented
	for depth := 0; depth < AIAMaxDepth && len(frontier) > 0; depth++ {
		if roots != nil && chains(presented[0], roots, cp.pool) {
			break
		}
		var next []*x509.Certificate
		for _, cert := range frontier {
			if isSelfSigned(cert) {
				continue // a root has no issuer to fetch
			}
			if useCache {
				if hits := cp.c.cachedIssuers(cert); len(hits) > 0 {
					usedCache = true
					for _, h := range hits {
						if cp.add(h) {
							cp.c.logf("aia: using the cached verified intermediate %q for %q", h.Subject.String(), cert.Subject.String())
							next = append(next, h)
						}
					}
					continue
				}
			}
			urls := cert.IssuingCertificateURL
			if len(urls) > AIAMaxURLsPerCert {
				urls = urls[:AIAMaxURLsPerCert]
			}
			for _, u := range urls {
				if err := cp.ctx.Err(); err != nil {
					return usedCache, cp.stopped(err)
				}
				certs, done := cp.answers[u]
				if !done {
					if cp.fetches >= AIAMaxFetches {
						break
					}
					cp.fetches++
					var err error
					certs, err = cp.c.fetch(cp.ctx, u)
					cp.answers[u] = certs // nil after an error: not retried
					if err != nil {
						cp.errs = append(cp.errs, err)
						if cerr := cp.ctx.Err(); cerr != nil {
							return usedCache, cp.stopped(cerr)
						}
						continue
					}
				}
				for _, nc := range certs {
					// Only the certificate's issuer is of use; anything
					// else in the answer is not followed.
					if bytes.Equal(nc.RawSubject, cert.RawIssuer) && cp.add(nc) {
						next = append(next, nc)
					}
				}
			}
		}
		frontier = next
	}
	return usedCache, nil
}

// add records nc as found, unless it was seen already.
func (cp *completion) add(nc *x509.Certificate) bool {
	h := sha256.Sum256(nc.Raw)
	if cp.seen[h] {
		return false
	}
	cp.seen[h] = true
	cp.pool.AddCert(nc)
	cp.fetched = append(cp.fetched, nc)
	return true
}

// stopped is the error of a call whose context is done: the fetch errors
// so far, and the context's error.
func (cp *completion) stopped(ctxErr error) error {
	return errors.Join(append(cp.errs, fmt.Errorf("aia: completing the chain stopped: %w", ctxErr))...)
}

// CompleteUnder is Complete for a route that has a pin: it looks for a new
// issuer of the leaf (presented[0]) only, one that leads to the pinned
// anchors. It uses the cache of verified intermediates first (see
// Remember); otherwise it fetches at most AIAMaxFetchesPinned of the
// leaf's caIssuers URLs, and never those of other certificates (depth 1).
// A certificate is kept only when it is the leaf's issuer (name and
// signature) and is itself signed (name and signature) by one of anchors
// or hints, the pinned intermediates; it stops at the first URL that gave
// one. ctx bounds every fetch as in Complete.
func (c *Completer) CompleteUnder(ctx context.Context, presented []*x509.Certificate, anchors, hints []*x509.Certificate) ([]*x509.Certificate, error) {
	if len(presented) == 0 {
		return nil, errors.New("aia: no certificate to complete")
	}
	if len(anchors) == 0 {
		return nil, errors.New("aia: no pinned anchor to complete the chain under")
	}
	leaf := presented[0]
	if isSelfSigned(leaf) {
		return nil, nil
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	for _, h := range append(append([]*x509.Certificate{}, presented[1:]...), hints...) {
		inter.AddCert(h)
	}
	if chains(leaf, roots, inter) {
		return nil, nil
	}
	parents := append(append([]*x509.Certificate{}, anchors...), hints...)
	underPin := func(nc *x509.Certificate) bool {
		for _, p := range parents {
			if bytes.Equal(nc.RawIssuer, p.RawSubject) && nc.CheckSignatureFrom(p) == nil {
				return true
			}
		}
		return false
	}

	var out []*x509.Certificate
	for _, h := range c.cachedIssuers(leaf) {
		if underPin(h) {
			c.logf("aia: using the cached verified intermediate %q for %q", h.Subject.String(), leaf.Subject.String())
			out = append(out, h)
		}
	}
	if len(out) > 0 {
		return out, nil
	}

	seen := map[[32]byte]bool{}
	for _, cert := range presented {
		seen[sha256.Sum256(cert.Raw)] = true
	}
	var errs []error
	urls := leaf.IssuingCertificateURL
	if len(urls) > AIAMaxFetchesPinned {
		urls = urls[:AIAMaxFetchesPinned]
	}
	for _, u := range urls {
		if err := ctx.Err(); err != nil {
			return out, errors.Join(append(errs, fmt.Errorf("aia: completing the chain stopped: %w", err))...)
		}
		certs, err := c.fetch(ctx, u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, nc := range certs {
			h := sha256.Sum256(nc.Raw)
			if seen[h] || !bytes.Equal(nc.RawSubject, leaf.RawIssuer) {
				continue
			}
			seen[h] = true
			if leaf.CheckSignatureFrom(nc) != nil {
				errs = append(errs, fmt.Errorf("aia: %s: %q is named as the leaf's issuer but did not sign it: not used", u, nc.Subject.String()))
				continue
			}
			if !underPin(nc) {
				errs = append(errs, fmt.Errorf("aia: %s: %q (issued by %q) is not signed by the pinned anchor or a pinned intermediate: not used", u, nc.Subject.String(), nc.Issuer.String()))
				continue
			}
			out = append(out, nc)
		}
		if len(out) > 0 {
			break
		}
	}
	if err := ctx.Err(); err != nil && len(out) == 0 {
		return nil, errors.Join(append(errs, fmt.Errorf("aia: completing the chain stopped: %w", err))...)
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func (c *Completer) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// chains reports whether leaf verifies against roots with intermediates,
// ignoring host name and validity period (only the path matters here).
func chains(leaf *x509.Certificate, roots, intermediates *x509.CertPool) bool {
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, CurrentTime: leaf.NotBefore.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// fetch gets one caIssuers URL (http only), with time and size limits,
// through the guarded client unless a Client was set. It caches nothing.
func (c *Completer) fetch(ctx context.Context, rawURL string) ([]*x509.Certificate, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("aia: %q: only http:// caIssuers URLs are followed", rawURL)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = AIATimeout
	}
	maxBytes := c.MaxBytes
	if maxBytes <= 0 {
		maxBytes = AIAMaxBytes
	}
	client := c.Client
	if client == nil {
		var tr *http.Transport
		client, tr = newGuard(c, timeout).client(timeout)
		defer tr.CloseIdleConnections()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("aia: %s: %w", EscapeControls(rawURL), err)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		if re, ok := refused(rawURL, err); ok {
			return nil, re
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			// The transport's own timeouts and the context's race: one
			// message whichever fired first.
			return nil, fmt.Errorf("aia: fetching %s: no answer within %s: %w", EscapeControls(rawURL), time.Since(start).Round(time.Second), context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("aia: fetching %s: %w", EscapeControls(rawURL), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The status line is the AIA server's text, and that server was
		// chosen by a certificate not verified yet.
		return nil, fmt.Errorf("aia: fetching %s: HTTP %s", EscapeControls(rawURL), EscapeControls(resp.Status))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("aia: reading %s: %w", EscapeControls(rawURL), err)
	}
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("aia: %s: response larger than %d bytes", EscapeControls(rawURL), maxBytes)
	}
	certs, err := ParseCertificates(body)
	if err != nil {
		return nil, fmt.Errorf("aia: %s: %w", rawURL, err)
	}
	c.logf("aia: fetched %d certificate(s) from %s in %s", len(certs), rawURL, time.Since(start).Round(time.Millisecond))
	return certs, nil
}

// ParseCertificates reads certificates in any of the forms caIssuers URLs
// serve: PEM (one or more CERTIFICATE blocks), DER, or a certs-only PKCS#7
// SignedData (DER or PEM "PKCS7").
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		var out []*x509.Certificate
		rest := trimmed
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			switch block.Type {
			case "CERTIFICATE":
				c, err := x509.ParseCertificate(block.Bytes)
				if err != nil {
					return nil, fmt.Errorf("parsing PEM certificate: %w", err)
				}
				out = append(out, c)
			case "PKCS7":
				cs, err := parsePKCS7Certs(block.Bytes)
				if err != nil {
					return nil, err
				}
				out = append(out, cs...)
			}
		}
		if len(out) == 0 {
			return nil, errors.New("no certificate in PEM data")
		}
		return out, nil
	}
	if c, err := x509.ParseCertificate(data); err == nil {
		return []*x509.Certificate{c}, nil
	}
	certs, err := parsePKCS7Certs(data)
	if err != nil {
		return nil, errors.New("not a certificate: neither PEM, DER nor certs-only PKCS#7")
	}
	return certs, nil
}

var oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}

// pkcs7ContentInfo is RFC 5652 ContentInfo.
type pkcs7ContentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,optional,tag:0"`
}

// pkcs7SignedData is the part of RFC 5652 SignedData needed to read the
// certificates of a "certs-only" (degenerate) message.
type pkcs7SignedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	ContentInfo      asn1.RawValue
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
}

// parsePKCS7Certs reads the certificates of a certs-only PKCS#7 message.
// The standard library has no PKCS#7; this degenerate form is small enough
// to read with encoding/asn1 rather than add a dependency.
func parsePKCS7Certs(der []byte) ([]*x509.Certificate, error) {
	var ci pkcs7ContentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil || len(rest) != 0 {
		return nil, errors.New("pkcs7: not a ContentInfo")
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("pkcs7: content type %v is not signedData", ci.ContentType)
	}
	var sd pkcs7SignedData
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil {
		return nil, fmt.Errorf("pkcs7: signedData: %w", err)
	}
	if len(sd.Certificates.Bytes) == 0 {
		return nil, errors.New("pkcs7: no certificates")
	}
	certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pkcs7: certificates: %w", err)
	}
	return certs, nil
}
