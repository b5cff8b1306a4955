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
	"net/http"
	"net/url"
	"sync"
	"time"
)

// AIA completion limits (DESIGN.md, "Trust model of the chain").
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
)

// Completer fetches missing intermediates from the caIssuers URLs of the
// Authority Information Access extension. What it fetches is only ever used
// to build a path: it is never a trust anchor.
type Completer struct {
	// Client does the HTTP requests; nil means a client with AIATimeout.
	Client *http.Client
	// Timeout bounds each fetch; zero means AIATimeout.
	Timeout time.Duration
	// MaxBytes bounds each response; zero means AIAMaxBytes.
	MaxBytes int64
	// Logf, when set, receives one line per fetch.
	Logf func(format string, args ...any)

	mu    sync.Mutex
	cache map[string][]*x509.Certificate // URL -> certificates
}

// Complete returns the certificates fetched through AIA, level by level from
// the presented ones, until roots (may be nil) and the presented plus fetched
// intermediates chain the leaf, or nothing new can be fetched, or
// AIAMaxDepth levels were followed. Certificates already seen are skipped.
func (c *Completer) Complete(ctx context.Context, presented []*x509.Certificate, roots *x509.CertPool) ([]*x509.Certificate, error) {
	if len(presented) == 0 {
		return nil, errors.New("aia: no certificate to complete")
	}
	seen := map[[32]byte]bool{}
	pool := x509.NewCertPool()
	for _, cert := range presented {
		seen[sha256.Sum256(cert.Raw)] = true
		pool.AddCert(cert)
	}
	var fetched []*x509.Certificate
	var errs []error
	frontier := presented
	fetches := 0
	for depth := 0; depth < AIAMaxDepth && len(frontier) > 0; depth++ {
		if roots != nil && chains(presented[0], roots, pool) {
			break
		}
		var next []*x509.Certificate
		for _, cert := range frontier {
			if isSelfSigned(cert) {
				continue // a root has no issuer to fetch
			}
			urls := cert.IssuingCertificateURL
			if len(urls) > AIAMaxURLsPerCert {
				urls = urls[:AIAMaxURLsPerCert]
			}
			for _, u := range urls {
				if fetches >= AIAMaxFetches {
					break
				}
				fetches++
				certs, err := c.fetch(ctx, u)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				for _, nc := range certs {
					h := sha256.Sum256(nc.Raw)
					// Only the certificate's issuer is of use; anything
					// else in the answer is not followed.
					if seen[h] || !bytes.Equal(nc.RawSubject, cert.RawIssuer) {
						continue
					}
					seen[h] = true
					pool.AddCert(nc)
					fetched = append(fetched, nc)
					next = append(next, nc)
				}
			}
		}
		frontier = next
	}
	if len(fetched) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return fetched, nil
}

// chains reports whether leaf verifies against roots with intermediates,
// ignoring host name and validity period (only the path matters here).
func chains(leaf *x509.Certificate, roots, intermediates *x509.CertPool) bool {
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, CurrentTime: leaf.NotBefore.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// fetch gets one caIssuers URL (http only), with cache, time and size limits.
func (c *Completer) fetch(ctx context.Context, rawURL string) ([]*x509.Certificate, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("aia: %q: only http:// caIssuers URLs are followed", rawURL)
	}
	c.mu.Lock()
	if certs, ok := c.cache[rawURL]; ok {
		c.mu.Unlock()
		return certs, nil
	}
	c.mu.Unlock()

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
		client = &http.Client{Timeout: timeout, CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if r.URL.Scheme != "http" || len(via) >= 3 {
				return fmt.Errorf("aia: redirect to %s refused: only http:// and at most 3 redirects", r.URL.Redacted())
			}
			return nil
		}}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("aia: %s: %w", rawURL, err)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("aia: fetching %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("aia: fetching %s: HTTP %s", rawURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("aia: reading %s: %w", rawURL, err)
	}
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("aia: %s: response larger than %d bytes", rawURL, maxBytes)
	}
	certs, err := ParseCertificates(body)
	if err != nil {
		return nil, fmt.Errorf("aia: %s: %w", rawURL, err)
	}
	if c.Logf != nil {
		c.Logf("aia: fetched %d certificate(s) from %s in %s", len(certs), rawURL, time.Since(start).Round(time.Millisecond))
	}
	c.mu.Lock()
	if c.cache == nil {
		c.cache = map[string][]*x509.Certificate{}
	}
	c.cache[rawURL] = certs
	c.mu.Unlock()
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
