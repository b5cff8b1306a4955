package chain_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// aiaServer is a loopback HTTP server answering fixed bodies by path and
// counting the requests per path; unknown paths answer 404.
type aiaServer struct {
	*httptest.Server
	mu     sync.Mutex
	hits   map[string]int
	bodies map[string][]byte
}

func newAIAServer(t *testing.T) *aiaServer {
	t.Helper()
	s := &aiaServer{hits: map[string]int{}, bodies: map[string][]byte{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits[r.URL.Path]++
		body, ok := s.bodies[r.URL.Path]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// url returns the absolute URL of path (which starts with "/").
func (s *aiaServer) url(path string) string { return s.URL + path }

// serve makes path answer body.
func (s *aiaServer) serve(path string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bodies[path] = body
}

func (s *aiaServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

func (s *aiaServer) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.hits {
		n += c
	}
	return n
}

// newCA makes a CA certificate issued by parent (self-signed when parent is
// nil) with the given path length (-1: unlimited) and caIssuers URLs. The
// harness CAs have MaxPathLen 1/0, too short for two intermediates.
func newCA(t *testing.T, parent *harness.Cert, cn string, maxPathLen int, aia []string) *harness.Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"pgverifyproxy aia tests"}},
		NotBefore:             now.Add(-2 * time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
		IssuingCertificateURL: aia,
	}
	issuer, signer := tmpl, any(key)
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &harness.Cert{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func leafWithAIA(t *testing.T, parent *harness.Cert, aia ...string) *harness.Cert {
	t.Helper()
	return must[*harness.Cert](t)(harness.IssueLeaf(parent, harness.LeafOptions{CommonName: "db.example.test", DNSNames: []string{"db.example.test"}, AIA: aia}))
}

// pkcs7CertsOnly builds a degenerate (certs-only) PKCS#7 SignedData in DER:
// ContentInfo{signedData, [0] EXPLICIT SignedData{1, {}, {data}, [0] IMPLICIT certs, {}}}.
func pkcs7CertsOnly(t *testing.T, certs ...*harness.Cert) []byte {
	t.Helper()
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Cert.Raw...)
	}
	emptySet := asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true}
	sd := struct {
		Version          int
		DigestAlgorithms asn1.RawValue
		ContentInfo      struct{ ContentType asn1.ObjectIdentifier }
		Certificates     asn1.RawValue
		SignerInfos      asn1.RawValue
	}{
		Version:          1,
		DigestAlgorithms: emptySet,
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: raw},
		SignerInfos:      emptySet,
	}
	sd.ContentInfo.ContentType = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	sdDER, err := asn1.Marshal(sd)
	if err != nil {
		t.Fatal(err)
	}
	ci := struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue
	}{
		ContentType: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2},
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sdDER},
	}
	der, err := asn1.Marshal(ci)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemPKCS7(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: der})
}

// opensslPKCS7 runs `openssl crl2pkcs7 -nocrl -certfile inter.pem -outform <form>`.
func opensslPKCS7(t *testing.T, form string, certs ...*harness.Cert) []byte {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required on PATH to build a real certs-only PKCS#7 (apt-get install openssl): %v", err)
	}
	var pemData []byte
	for _, c := range certs {
		pemData = append(pemData, c.CertPEM...)
	}
	dir := t.TempDir()
	in, out := filepath.Join(dir, "inter.pem"), filepath.Join(dir, "out.p7")
	if err := os.WriteFile(in, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "crl2pkcs7", "-nocrl", "-certfile", in, "-outform", form, "-out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl crl2pkcs7: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func names(certs []*x509.Certificate) string {
	var s []string
	for _, c := range certs {
		s = append(s, c.Subject.CommonName)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// wantCerts checks got is exactly want, in order.
func wantCerts(t *testing.T, got []*x509.Certificate, want ...*harness.Cert) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = bytes.Equal(got[i].Raw, want[i].Cert.Raw)
	}
	if !ok {
		var w []*x509.Certificate
		for _, c := range want {
			w = append(w, c.Cert)
		}
		t.Fatalf("fetched %s, want %s", names(got), names(w))
	}
}

func verifyLeaf(leaf *x509.Certificate, roots *x509.CertPool, intermediates ...*x509.Certificate) error {
	pool := x509.NewCertPool()
	for _, c := range intermediates {
		pool.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, DNSName: "db.example.test"})
	return err
}

func TestCompleteAnswerFormats(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*harness.Cert](t)(harness.NewRootCA("aia root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia inter", nil))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	tests := []struct {
		name string
		body []byte
	}{
		{"DER", inter.Cert.Raw},
		{"PEM", inter.CertPEM},
		{"PEM with surrounding whitespace", append(append([]byte("\r\n\n  "), inter.CertPEM...), "\n\n"...)},
		{"PKCS#7 DER (encoding/asn1)", pkcs7CertsOnly(t, inter)},
		{"PKCS#7 PEM (encoding/asn1)", pemPKCS7(pkcs7CertsOnly(t, inter))},
		{"PKCS#7 DER (openssl crl2pkcs7)", opensslPKCS7(t, "DER", inter)},
		{"PKCS#7 PEM (openssl crl2pkcs7)", opensslPKCS7(t, "PEM", inter)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.serve("/inter", tt.body)
			// A fresh Completer per case: the cache must not hide the format.
			var c chain.Completer
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			wantCerts(t, got, inter)
			if err := verifyLeaf(leaf.Cert, harness.Pool(root), got...); err != nil {
				t.Fatalf("leaf does not verify with the fetched intermediate: %v", err)
			}
			if err := verifyLeaf(leaf.Cert, harness.Pool(root)); err == nil {
				t.Fatal("leaf verifies without the intermediate: the test proves nothing")
			}
		})
	}
}

func TestCompleteTwoLevels(t *testing.T) {
	srv := newAIAServer(t)
	root := newCA(t, nil, "aia root (path length 2)", 2, nil)
	inter1 := newCA(t, root, "aia inter1", 1, []string{srv.url("/root")})
	inter2 := newCA(t, inter1, "aia inter2", 0, []string{srv.url("/inter1")})
	leaf := leafWithAIA(t, inter2, srv.url("/inter2"))
	srv.serve("/root", root.Cert.Raw)
	srv.serve("/inter1", inter1.CertPEM)
	srv.serve("/inter2", inter2.Cert.Raw)

	var c chain.Completer
	got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	wantCerts(t, got, inter2, inter1)
	if err := verifyLeaf(leaf.Cert, harness.Pool(root), got...); err != nil {
		t.Fatalf("leaf does not verify with the fetched chain: %v", err)
	}
	if err := verifyLeaf(leaf.Cert, harness.Pool(root), inter2.Cert); err == nil {
		t.Fatal("leaf verifies with inter2 alone: the test proves nothing")
	}
	if n := srv.count("/root"); n != 0 {
		t.Errorf("root fetched %d times although the chain already verified", n)
	}
}

func TestCompleteMaxDepth(t *testing.T) {
	srv := newAIAServer(t)
	// root <- i1 <- i2 <- i3 <- i4 <- i5 <- leaf, each AIA served.
	root := newCA(t, nil, "aia deep root", -1, nil)
	cas := []*harness.Cert{root}
	for i := 1; i <= chain.AIAMaxDepth+1; i++ {
		parentPath := "/ca" + strconv.Itoa(i-1)
		ca := newCA(t, cas[i-1], "aia deep i"+strconv.Itoa(i), -1, []string{srv.url(parentPath)})
		srv.serve(parentPath, cas[i-1].Cert.Raw)
		cas = append(cas, ca)
	}
	last := len(cas) - 1
	srv.serve("/ca"+strconv.Itoa(last), cas[last].Cert.Raw)
	leaf := leafWithAIA(t, cas[last], srv.url("/ca"+strconv.Itoa(last)))

	var c chain.Completer
	got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	// AIAMaxDepth levels: i5, i4, i3, i2; i1 is one level too far.
	var want []*harness.Cert
	for i := last; i > last-chain.AIAMaxDepth; i-- {
		want = append(want, cas[i])
	}
	wantCerts(t, got, want...)
	if n := srv.count("/ca1"); n != 0 {
		t.Errorf("level %d fetched (%d requests), AIAMaxDepth is %d", chain.AIAMaxDepth+1, n, chain.AIAMaxDepth)
	}
}

func TestCompleteLoops(t *testing.T) {
	root := must[*harness.Cert](t)(harness.NewRootCA("aia loop root"))
	tests := []struct {
		name string
		// build returns the leaf and the certificates Complete must return.
		build     func(t *testing.T, srv *aiaServer) (*harness.Cert, []*harness.Cert)
		wantPaths []string // each requested exactly once
	}{
		{
			name: "two intermediates pointing at each other (same URLs)",
			build: func(t *testing.T, srv *aiaServer) (*harness.Cert, []*harness.Cert) {
				a := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "loop A", []string{srv.url("/b")}))
				b := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "loop B", []string{srv.url("/a")}))
				srv.serve("/a", a.Cert.Raw)
				srv.serve("/b", b.Cert.Raw)
				// B answers A's URL but is not A's issuer: not followed.
				return leafWithAIA(t, a, srv.url("/a")), []*harness.Cert{a}
			},
			wantPaths: []string{"/a", "/b"},
		},
		{
			name: "two intermediates pointing at each other (distinct URLs, same certificate)",
			build: func(t *testing.T, srv *aiaServer) (*harness.Cert, []*harness.Cert) {
				a := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "loop A", []string{srv.url("/b")}))
				b := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "loop B", []string{srv.url("/a-again")}))
				srv.serve("/a", a.Cert.Raw)
				srv.serve("/a-again", a.CertPEM)
				srv.serve("/b", b.Cert.Raw)
				return leafWithAIA(t, a, srv.url("/a")), []*harness.Cert{a}
			},
			wantPaths: []string{"/a", "/b"},
		},
		{
			name: "issuer whose AIA points at itself",
			build: func(t *testing.T, srv *aiaServer) (*harness.Cert, []*harness.Cert) {
				i := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "loop self", []string{srv.url("/i")}))
				srv.serve("/i", i.Cert.Raw)
				return leafWithAIA(t, i, srv.url("/i")), []*harness.Cert{i}
			},
			wantPaths: []string{"/i"},
		},
		{
			name: "issuer whose AIA serves the leaf back",
			build: func(t *testing.T, srv *aiaServer) (*harness.Cert, []*harness.Cert) {
				i := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "loop back", []string{srv.url("/leaf")}))
				srv.serve("/i", i.Cert.Raw)
				leaf := leafWithAIA(t, i, srv.url("/i"))
				srv.serve("/leaf", leaf.Cert.Raw)
				return leaf, []*harness.Cert{i}
			},
			wantPaths: []string{"/i", "/leaf"},
		},
		{
			name: "bundle repeating the issuer",
			build: func(t *testing.T, srv *aiaServer) (*harness.Cert, []*harness.Cert) {
				i := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "loop dup", []string{srv.url("/i")}))
				srv.serve("/i", bytes.Join([][]byte{i.CertPEM, i.CertPEM, i.CertPEM}, nil))
				srv.serve("/i-pkcs7", pkcs7CertsOnly(t, i, i))
				return leafWithAIA(t, i, srv.url("/i"), srv.url("/i-pkcs7")), []*harness.Cert{i}
			},
			wantPaths: []string{"/i", "/i-pkcs7"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newAIAServer(t)
			leaf, want := tt.build(t, srv)
			var c chain.Completer
			// roots nil: nothing ever "verifies", so only loop detection stops it.
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, nil)
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			wantCerts(t, got, want...)
			for _, p := range tt.wantPaths {
				if n := srv.count(p); n != 1 {
					t.Errorf("%s requested %d times, want 1", p, n)
				}
			}
			if n := srv.total(); n != len(tt.wantPaths) {
				t.Errorf("%d requests in all, want %d", n, len(tt.wantPaths))
			}
		})
	}
}

func TestCompleteSizeLimit(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*harness.Cert](t)(harness.NewRootCA("aia size root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia size inter", nil))
	other := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia size other", nil))
	// padded is inter's PEM followed by newlines up to n bytes: still a valid
	// answer once trimmed, so only the size limit can reject it.
	padded := func(c *harness.Cert, n int) []byte {
		return append(append([]byte(nil), c.CertPEM...), bytes.Repeat([]byte("\n"), n-len(c.CertPEM))...)
	}
	srv.serve("/exact", padded(inter, chain.AIAMaxBytes))
	srv.serve("/over", padded(inter, chain.AIAMaxBytes+1))
	srv.serve("/huge", padded(inter, 1<<20))
	srv.serve("/der", inter.Cert.Raw)
	srv.serve("/other", other.Cert.Raw)
	tests := []struct {
		name     string
		maxBytes int64
		aia      []string
		want     []*harness.Cert
		errHas   string
	}{
		{name: "exactly AIAMaxBytes is accepted", aia: []string{"/exact"}, want: []*harness.Cert{inter}},
		{name: "AIAMaxBytes+1 is refused", aia: []string{"/over"}, errHas: "larger than " + strconv.Itoa(chain.AIAMaxBytes) + " bytes"},
		{name: "1 MiB is refused", aia: []string{"/huge"}, errHas: "larger than " + strconv.Itoa(chain.AIAMaxBytes) + " bytes"},
		// "other" is not the leaf's issuer, so nothing usable is fetched.
		{name: "oversized answer is not used, a non-issuer neither", aia: []string{"/over", "/other"}, errHas: "larger than 65536 bytes"},
		{name: "MaxBytes field lowers the limit", maxBytes: int64(len(inter.Cert.Raw) - 1), aia: []string{"/der"}, errHas: "larger than " + strconv.Itoa(len(inter.Cert.Raw)-1) + " bytes"},
		{name: "MaxBytes field at the DER size", maxBytes: int64(len(inter.Cert.Raw)), aia: []string{"/der"}, want: []*harness.Cert{inter}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var urls []string
			for _, p := range tt.aia {
				urls = append(urls, srv.url(p))
			}
			leaf := leafWithAIA(t, inter, urls...)
			c := chain.Completer{MaxBytes: tt.maxBytes}
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
				}
			} else if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			wantCerts(t, got, tt.want...)
		})
	}
}

func TestCompleteSlowAnswer(t *testing.T) {
	root := must[*harness.Cert](t)(harness.NewRootCA("aia slow root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia slow inter", nil))
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow-body" {
			w.Header().Set("Content-Length", strconv.Itoa(len(inter.Cert.Raw)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(inter.Cert.Raw[:10])
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: lets srv.Close return
	tests := []struct {
		name string
		c    *chain.Completer
		ctx  time.Duration // 0: context.Background
		path string
	}{
		{name: "Timeout field, slow headers", c: &chain.Completer{Timeout: 200 * time.Millisecond}, path: "/slow"},
		{name: "Timeout field, slow body", c: &chain.Completer{Timeout: 200 * time.Millisecond}, path: "/slow-body"},
		{name: "Timeout field with a custom client without timeout", c: &chain.Completer{Timeout: 200 * time.Millisecond, Client: &http.Client{}}, path: "/slow"},
		{name: "caller's context deadline", c: &chain.Completer{}, ctx: 200 * time.Millisecond, path: "/slow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			leaf := leafWithAIA(t, inter, srv.URL+tt.path)
			ctx := context.Background()
			if tt.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctx)
				defer cancel()
			}
			type result struct {
				got []*x509.Certificate
				err error
			}
			done := make(chan result, 1)
			go func() {
				got, err := tt.c.Complete(ctx, []*x509.Certificate{leaf.Cert}, harness.Pool(root))
				done <- result{got, err}
			}()
			var got []*x509.Certificate
			var err error
			select {
			case r := <-done:
				got, err = r.got, r.err
			case <-time.After(5 * time.Second):
				t.Fatal("Complete still waiting on a hanging server after 5s")
			}
			if err == nil {
				t.Fatalf("Complete succeeded on a hanging server: %s", names(got))
			}
			if len(got) != 0 {
				t.Errorf("fetched %s", names(got))
			}
			if !strings.Contains(err.Error(), tt.path) {
				t.Errorf("error %q does not name the URL", err)
			}
		})
	}
}

func TestCompleteURLsPerCert(t *testing.T) {
	root := must[*harness.Cert](t)(harness.NewRootCA("aia many root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia many inter", nil))
	tests := []struct {
		good      int // 1-based index of the URL that serves the intermediate
		wantFound bool
	}{
		{good: 8},
		{good: chain.AIAMaxURLsPerCert + 1},
		{good: chain.AIAMaxURLsPerCert, wantFound: true},
	}
	for _, tt := range tests {
		t.Run("good URL #"+strconv.Itoa(tt.good), func(t *testing.T) {
			srv := newAIAServer(t)
			var urls []string
			for i := 1; i <= 8; i++ {
				urls = append(urls, srv.url("/u"+strconv.Itoa(i)))
			}
			srv.serve("/u"+strconv.Itoa(tt.good), inter.Cert.Raw)
			leaf := leafWithAIA(t, inter, urls...)
			var c chain.Completer
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
			if tt.wantFound {
				if err != nil {
					t.Fatalf("Complete: %v", err)
				}
				wantCerts(t, got, inter)
			} else {
				if err == nil || !strings.Contains(err.Error(), "404") {
					t.Fatalf("err = %v, want the 404s", err)
				}
				wantCerts(t, got)
			}
			last := min(tt.good, chain.AIAMaxURLsPerCert)
			for i := 1; i <= 8; i++ {
				want := 0
				if i <= last {
					want = 1
				}
				if n := srv.count("/u" + strconv.Itoa(i)); n != want {
					t.Errorf("URL #%d requested %d times, want %d", i, n, want)
				}
			}
		})
	}
}

func TestCompleteOnlyHTTP(t *testing.T) {
	root := must[*harness.Cert](t)(harness.NewRootCA("aia scheme root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia scheme inter", nil))
	plain := newAIAServer(t)
	plain.serve("/inter", inter.Cert.Raw)
	var tlsConns atomic.Int32
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(inter.Cert.Raw)
	}))
	tlsSrv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			tlsConns.Add(1)
		}
	}
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	plainHost := strings.TrimPrefix(plain.URL, "http://")

	tests := []struct {
		name   string
		aia    []string
		want   []*harness.Cert
		errHas string
	}{
		{name: "https", aia: []string{tlsSrv.URL + "/inter"}, errHas: "only http:// caIssuers URLs are followed"},
		{name: "ftp", aia: []string{"ftp://" + plainHost + "/inter"}, errHas: "only http://"},
		{name: "ldap", aia: []string{"ldap://" + plainHost + "/cn=inter?cACertificate"}, errHas: "only http://"},
		{name: "file", aia: []string{"file:///etc/passwd"}, errHas: "only http://"},
		{name: "no host", aia: []string{"http:///inter"}, errHas: "only http://"},
		{name: "relative", aia: []string{"/inter"}, errHas: "only http://"},
		{name: "https and ftp are skipped, http is followed", aia: []string{tlsSrv.URL + "/inter", "ftp://" + plainHost + "/inter", plain.url("/inter")}, want: []*harness.Cert{inter}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := plain.total()
			leaf := leafWithAIA(t, inter, tt.aia...)
			var c chain.Completer
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
				}
				if n := plain.total() - before; n != 0 {
					t.Errorf("%d requests reached the plain server", n)
				}
			} else if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			wantCerts(t, got, tt.want...)
			if n := tlsConns.Load(); n != 0 {
				t.Errorf("%d connections reached the https server", n)
			}
		})
	}
}

func TestCompleteRootsPool(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*harness.Cert](t)(harness.NewRootCA("aia anchor root"))
	other := must[*harness.Cert](t)(harness.NewRootCA("aia unrelated root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia anchor inter", []string{srv.url("/root")}))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	srv.serve("/inter", inter.Cert.Raw)
	srv.serve("/root", root.CertPEM)

	tests := []struct {
		name      string
		presented []*harness.Cert
		roots     *x509.CertPool
		want      []*harness.Cert
		wantHits  map[string]int
	}{
		{name: "root in pool: stops once the chain verifies", presented: []*harness.Cert{leaf}, roots: harness.Pool(root), want: []*harness.Cert{inter}, wantHits: map[string]int{"/inter": 1, "/root": 0}},
		{name: "root in pool, complete chain presented: no fetch", presented: []*harness.Cert{leaf, inter}, roots: harness.Pool(root), wantHits: map[string]int{"/inter": 0, "/root": 0}},
		{name: "nil roots: follows up to the root", presented: []*harness.Cert{leaf}, roots: nil, want: []*harness.Cert{inter, root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
		{name: "empty pool: follows up to the root", presented: []*harness.Cert{leaf}, roots: x509.NewCertPool(), want: []*harness.Cert{inter, root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
		{name: "unrelated root: follows up to the root", presented: []*harness.Cert{leaf}, roots: harness.Pool(other), want: []*harness.Cert{inter, root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
		{name: "nil roots, intermediate presented: only the root is new", presented: []*harness.Cert{leaf, inter}, roots: nil, want: []*harness.Cert{root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string]int{}
			for p := range tt.wantHits {
				before[p] = srv.count(p)
			}
			var presented []*x509.Certificate
			for _, c := range tt.presented {
				presented = append(presented, c.Cert)
			}
			var c chain.Completer
			got, err := c.Complete(context.Background(), presented, tt.roots)
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			wantCerts(t, got, tt.want...)
			for p, want := range tt.wantHits {
				if n := srv.count(p) - before[p]; n != want {
					t.Errorf("%s requested %d times, want %d", p, n, want)
				}
			}
			all := append(presented[1:len(presented):len(presented)], got...)
			if err := verifyLeaf(leaf.Cert, harness.Pool(root), all...); err != nil {
				t.Errorf("leaf does not verify against the real root: %v", err)
			}
			// What AIA fetched (the root included) is never an anchor.
			err = verifyLeaf(leaf.Cert, x509.NewCertPool(), all...)
			var ua x509.UnknownAuthorityError
			if !errors.As(err, &ua) {
				t.Errorf("verify with an empty root pool: err = %v, want an unknown authority", err)
			}
		})
	}
}

func TestCompleteCache(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*harness.Cert](t)(harness.NewRootCA("aia cache root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia cache inter", []string{srv.url("/root")}))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	srv.serve("/inter", inter.Cert.Raw)
	srv.serve("/root", root.Cert.Raw)
	presented := []*x509.Certificate{leaf.Cert}

	var c chain.Completer
	for i := range 3 {
		got, err := c.Complete(context.Background(), presented, nil)
		if err != nil {
			t.Fatalf("Complete #%d: %v", i+1, err)
		}
		wantCerts(t, got, inter, root)
	}
	// With the root as anchor only the intermediate is needed: from cache.
	got, err := c.Complete(context.Background(), presented, harness.Pool(root))
	if err != nil {
		t.Fatalf("Complete with roots: %v", err)
	}
	wantCerts(t, got, inter)
	for _, p := range []string{"/inter", "/root"} {
		if n := srv.count(p); n != 1 {
			t.Errorf("%s requested %d times, want 1 (cached)", p, n)
		}
	}
	// The cache belongs to the Completer.
	var fresh chain.Completer
	if _, err := fresh.Complete(context.Background(), presented, harness.Pool(root)); err != nil {
		t.Fatal(err)
	}
	if n := srv.count("/inter"); n != 2 {
		t.Errorf("/inter requested %d times after a new Completer, want 2", n)
	}
}

func TestCompleteConcurrent(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*harness.Cert](t)(harness.NewRootCA("aia concurrent root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia concurrent inter", nil))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	srv.serve("/inter", inter.Cert.Raw)
	var c chain.Completer
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
			if err == nil && (len(got) != 1 || !got[0].Equal(inter.Cert)) {
				err = fmt.Errorf("fetched %s", names(got))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestCompleteClientAndLogf(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*harness.Cert](t)(harness.NewRootCA("aia client root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCAWithAIA(root, "aia client inter", nil))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	srv.serve("/inter", inter.Cert.Raw)
	var trips atomic.Int32
	var logs []string
	c := chain.Completer{
		Client: &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			trips.Add(1)
			return http.DefaultTransport.RoundTrip(r)
		})},
		Logf: func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) },
	}
	got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
	if err != nil {
		t.Fatal(err)
	}
	wantCerts(t, got, inter)
	if n := trips.Load(); n != 1 {
		t.Errorf("custom client used %d times, want 1", n)
	}
	if len(logs) != 1 || !strings.Contains(logs[0], srv.url("/inter")) {
		t.Errorf("Logf lines = %q, want one naming the URL", logs)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestCompleteNothingToDo(t *testing.T) {
	var c chain.Completer
	if _, err := c.Complete(context.Background(), nil, nil); err == nil {
		t.Error("Complete(nil) succeeded")
	}
	// A self-signed certificate has no issuer to fetch, even with an AIA.
	srv := newAIAServer(t)
	selfAIA := newCA(t, nil, "aia root with AIA", -1, []string{srv.url("/other-root")})
	srv.serve("/other-root", must[*harness.Cert](t)(harness.NewRootCA("aia other root")).Cert.Raw)
	got, err := c.Complete(context.Background(), []*x509.Certificate{selfAIA.Cert}, nil)
	if err != nil || len(got) != 0 {
		t.Errorf("self-signed: got %s, %v; want nothing, nil", names(got), err)
	}
	if n := srv.total(); n != 0 {
		t.Errorf("self-signed: %d requests, want none", n)
	}
	root := must[*harness.Cert](t)(harness.NewRootCA("aia lone root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCA(root, "aia no-aia inter"))
	leaf := leafWithAIA(t, inter)
	got, err = c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, harness.Pool(root))
	if err != nil || len(got) != 0 {
		t.Errorf("no AIA: got %s, %v; want nothing, nil", names(got), err)
	}
}

func TestParseCertificates(t *testing.T) {
	root := must[*harness.Cert](t)(harness.NewRootCA("parse root"))
	inter := must[*harness.Cert](t)(harness.NewIntermediateCA(root, "parse inter"))
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	dataOnly := func() []byte { // ContentInfo of type data, not signedData
		der, err := asn1.Marshal(struct {
			ContentType asn1.ObjectIdentifier
			Content     asn1.RawValue
		}{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{4, 0}}})
		if err != nil {
			t.Fatal(err)
		}
		return der
	}()
	garbage := make([]byte, 512)
	if _, err := rand.Read(garbage); err != nil {
		t.Fatal(err)
	}
	garbage[0] = 0x30 // looks like a SEQUENCE
	tests := []struct {
		name string
		data []byte
		want []*harness.Cert // nil: an error is expected
	}{
		{"DER", inter.Cert.Raw, []*harness.Cert{inter}},
		{"PEM bundle", append(append([]byte(nil), inter.CertPEM...), root.CertPEM...), []*harness.Cert{inter, root}},
		{"PEM with a key block first", append(append([]byte(nil), keyPEM...), inter.CertPEM...), []*harness.Cert{inter}},
		{"PKCS#7 DER with two certificates", pkcs7CertsOnly(t, inter, root), []*harness.Cert{inter, root}},
		{"PKCS#7 PEM with two certificates", pemPKCS7(pkcs7CertsOnly(t, inter, root)), []*harness.Cert{inter, root}},
		{"openssl PKCS#7 DER with two certificates", opensslPKCS7(t, "DER", inter, root), []*harness.Cert{inter, root}},
		{"empty", nil, nil},
		{"whitespace", []byte(" \n\t "), nil},
		{"text", []byte("hello, this is not a certificate"), nil},
		{"HTML error page", []byte("<html><body>404 Not Found</body></html>"), nil},
		{"random bytes", garbage, nil},
		{"truncated DER", inter.Cert.Raw[:len(inter.Cert.Raw)/2], nil},
		{"DER with trailing junk", append(append([]byte(nil), inter.Cert.Raw...), 0, 0), nil},
		{"PEM header only", []byte("-----BEGIN CERTIFICATE-----\n"), nil},
		{"PEM key only", keyPEM, nil},
		{"PEM certificate with bad bytes", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")}), nil},
		{"PEM PKCS7 with bad bytes", pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: []byte("nope")}), nil},
		{"PKCS#7 of type data", dataOnly, nil},
		{"PKCS#7 without certificates", pkcs7CertsOnly(t), nil},
		{"PKCS#7 with trailing junk", append(pkcs7CertsOnly(t, inter), 0), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := chain.ParseCertificates(tt.data)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("parsed %s from garbage", names(got))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCertificates: %v", err)
			}
			wantCerts(t, got, tt.want...)
		})
	}
}
