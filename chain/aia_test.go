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
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// newCA makes a CA certificate issued by parent (self-signed when parent is
// nil) with the given path length (-1: unlimited) and caIssuers URLs. The
// testpki CAs have MaxPathLen 1/0, too short for two intermediates.
func newCA(t *testing.T, parent *testpki.Cert, cn string, maxPathLen int, aia []string) *testpki.Cert {
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
	return &testpki.Cert{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// opensslPKCS7 runs `openssl crl2pkcs7 -nocrl -certfile inter.pem -outform <form>`.
func opensslPKCS7(t *testing.T, form string, certs ...*testpki.Cert) []byte {
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

func TestCompleteAnswerFormats(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia inter", nil))
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
			c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			wantCerts(t, got, inter)
			if err := verifyLeaf(leaf.Cert, testpki.Pool(root), got...); err != nil {
				t.Fatalf("leaf does not verify with the fetched intermediate: %v", err)
			}
			if err := verifyLeaf(leaf.Cert, testpki.Pool(root)); err == nil {
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

	c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
	got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	wantCerts(t, got, inter2, inter1)
	if err := verifyLeaf(leaf.Cert, testpki.Pool(root), got...); err != nil {
		t.Fatalf("leaf does not verify with the fetched chain: %v", err)
	}
	if err := verifyLeaf(leaf.Cert, testpki.Pool(root), inter2.Cert); err == nil {
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
	cas := []*testpki.Cert{root}
	for i := 1; i <= chain.AIAMaxDepth+1; i++ {
		parentPath := "/ca" + strconv.Itoa(i-1)
		ca := newCA(t, cas[i-1], "aia deep i"+strconv.Itoa(i), -1, []string{srv.url(parentPath)})
		srv.serve(parentPath, cas[i-1].Cert.Raw)
		cas = append(cas, ca)
	}
	last := len(cas) - 1
	srv.serve("/ca"+strconv.Itoa(last), cas[last].Cert.Raw)
	leaf := leafWithAIA(t, cas[last], srv.url("/ca"+strconv.Itoa(last)))

	c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
	got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	// AIAMaxDepth levels: i5, i4, i3, i2; i1 is one level too far.
	var want []*testpki.Cert
	for i := last; i > last-chain.AIAMaxDepth; i-- {
		want = append(want, cas[i])
	}
	wantCerts(t, got, want...)
	if n := srv.count("/ca1"); n != 0 {
		t.Errorf("level %d fetched (%d requests), AIAMaxDepth is %d", chain.AIAMaxDepth+1, n, chain.AIAMaxDepth)
	}
}

func TestCompleteLoops(t *testing.T) {
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia loop root"))
	tests := []struct {
		name string
		// build returns the leaf and the certificates Complete must return.
		build     func(t *testing.T, srv *aiaServer) (*testpki.Cert, []*testpki.Cert)
		wantPaths []string // each requested exactly once
	}{
		{
			name: "two intermediates pointing at each other (same URLs)",
			build: func(t *testing.T, srv *aiaServer) (*testpki.Cert, []*testpki.Cert) {
				a := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "loop A", []string{srv.url("/b")}))
				b := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "loop B", []string{srv.url("/a")}))
				srv.serve("/a", a.Cert.Raw)
				srv.serve("/b", b.Cert.Raw)
				// B answers A's URL but is not A's issuer: not followed.
				return leafWithAIA(t, a, srv.url("/a")), []*testpki.Cert{a}
			},
			wantPaths: []string{"/a", "/b"},
		},
		{
			name: "two intermediates pointing at each other (distinct URLs, same certificate)",
			build: func(t *testing.T, srv *aiaServer) (*testpki.Cert, []*testpki.Cert) {
				a := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "loop A", []string{srv.url("/b")}))
				b := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "loop B", []string{srv.url("/a-again")}))
				srv.serve("/a", a.Cert.Raw)
				srv.serve("/a-again", a.CertPEM)
				srv.serve("/b", b.Cert.Raw)
				return leafWithAIA(t, a, srv.url("/a")), []*testpki.Cert{a}
			},
			wantPaths: []string{"/a", "/b"},
		},
		{
			name: "issuer whose AIA points at itself",
			build: func(t *testing.T, srv *aiaServer) (*testpki.Cert, []*testpki.Cert) {
				i := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "loop self", []string{srv.url("/i")}))
				srv.serve("/i", i.Cert.Raw)
				return leafWithAIA(t, i, srv.url("/i")), []*testpki.Cert{i}
			},
			wantPaths: []string{"/i"},
		},
		{
			name: "issuer whose AIA serves the leaf back",
			build: func(t *testing.T, srv *aiaServer) (*testpki.Cert, []*testpki.Cert) {
				i := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "loop back", []string{srv.url("/leaf")}))
				srv.serve("/i", i.Cert.Raw)
				leaf := leafWithAIA(t, i, srv.url("/i"))
				srv.serve("/leaf", leaf.Cert.Raw)
				return leaf, []*testpki.Cert{i}
			},
			wantPaths: []string{"/i", "/leaf"},
		},
		{
			name: "bundle repeating the issuer",
			build: func(t *testing.T, srv *aiaServer) (*testpki.Cert, []*testpki.Cert) {
				i := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "loop dup", []string{srv.url("/i")}))
				srv.serve("/i", bytes.Join([][]byte{i.CertPEM, i.CertPEM, i.CertPEM}, nil))
				srv.serve("/i-pkcs7", pkcs7CertsOnly(t, i, i))
				return leafWithAIA(t, i, srv.url("/i"), srv.url("/i-pkcs7")), []*testpki.Cert{i}
			},
			wantPaths: []string{"/i", "/i-pkcs7"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newAIAServer(t)
			leaf, want := tt.build(t, srv)
			c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
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
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia size root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia size inter", nil))
	other := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia size other", nil))
	// padded is inter's PEM followed by newlines up to n bytes: still a valid
	// answer once trimmed, so only the size limit can reject it.
	padded := func(c *testpki.Cert, n int) []byte {
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
		want     []*testpki.Cert
		errHas   string
	}{
		{name: "exactly AIAMaxBytes is accepted", aia: []string{"/exact"}, want: []*testpki.Cert{inter}},
		{name: "AIAMaxBytes+1 is refused", aia: []string{"/over"}, errHas: "larger than " + strconv.Itoa(chain.AIAMaxBytes) + " bytes"},
		{name: "1 MiB is refused", aia: []string{"/huge"}, errHas: "larger than " + strconv.Itoa(chain.AIAMaxBytes) + " bytes"},
		// "other" is not the leaf's issuer, so nothing usable is fetched.
		{name: "oversized answer is not used, a non-issuer neither", aia: []string{"/over", "/other"}, errHas: "larger than 65536 bytes"},
		{name: "MaxBytes field lowers the limit", maxBytes: int64(len(inter.Cert.Raw) - 1), aia: []string{"/der"}, errHas: "larger than " + strconv.Itoa(len(inter.Cert.Raw)-1) + " bytes"},
		{name: "MaxBytes field at the DER size", maxBytes: int64(len(inter.Cert.Raw)), aia: []string{"/der"}, want: []*testpki.Cert{inter}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var urls []string
			for _, p := range tt.aia {
				urls = append(urls, srv.url(p))
			}
			leaf := leafWithAIA(t, inter, urls...)
			c := chain.Completer{MaxBytes: tt.maxBytes, AllowPrivate: true}
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
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
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia slow root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia slow inter", nil))
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
		{name: "Timeout field, slow headers", c: &chain.Completer{Timeout: 200 * time.Millisecond, AllowPrivate: true}, path: "/slow"},
		{name: "Timeout field, slow body", c: &chain.Completer{Timeout: 200 * time.Millisecond, AllowPrivate: true}, path: "/slow-body"},
		{name: "Timeout field with a custom client without timeout", c: &chain.Completer{Timeout: 200 * time.Millisecond, Client: &http.Client{}}, path: "/slow"},
		{name: "caller's context deadline", c: &chain.Completer{AllowPrivate: true}, ctx: 200 * time.Millisecond, path: "/slow"},
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
				got, err := tt.c.Complete(ctx, []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
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
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia many root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia many inter", nil))
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
			c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
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
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia scheme root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia scheme inter", nil))
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
		want   []*testpki.Cert
		errHas string
	}{
		{name: "https", aia: []string{tlsSrv.URL + "/inter"}, errHas: "only http:// caIssuers URLs are followed"},
		{name: "ftp", aia: []string{"ftp://" + plainHost + "/inter"}, errHas: "only http://"},
		{name: "ldap", aia: []string{"ldap://" + plainHost + "/cn=inter?cACertificate"}, errHas: "only http://"},
		{name: "file", aia: []string{"file:///etc/passwd"}, errHas: "only http://"},
		{name: "no host", aia: []string{"http:///inter"}, errHas: "only http://"},
		{name: "relative", aia: []string{"/inter"}, errHas: "only http://"},
		{name: "https and ftp are skipped, http is followed", aia: []string{tlsSrv.URL + "/inter", "ftp://" + plainHost + "/inter", plain.url("/inter")}, want: []*testpki.Cert{inter}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := plain.total()
			leaf := leafWithAIA(t, inter, tt.aia...)
			c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
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
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia anchor root"))
	other := must[*testpki.Cert](t)(testpki.NewRootCA("aia unrelated root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia anchor inter", []string{srv.url("/root")}))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	srv.serve("/inter", inter.Cert.Raw)
	srv.serve("/root", root.CertPEM)

	tests := []struct {
		name      string
		presented []*testpki.Cert
		roots     *x509.CertPool
		want      []*testpki.Cert
		wantHits  map[string]int
	}{
		{name: "root in pool: stops once the chain verifies", presented: []*testpki.Cert{leaf}, roots: testpki.Pool(root), want: []*testpki.Cert{inter}, wantHits: map[string]int{"/inter": 1, "/root": 0}},
		{name: "root in pool, complete chain presented: no fetch", presented: []*testpki.Cert{leaf, inter}, roots: testpki.Pool(root), wantHits: map[string]int{"/inter": 0, "/root": 0}},
		{name: "nil roots: follows up to the root", presented: []*testpki.Cert{leaf}, roots: nil, want: []*testpki.Cert{inter, root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
		{name: "empty pool: follows up to the root", presented: []*testpki.Cert{leaf}, roots: x509.NewCertPool(), want: []*testpki.Cert{inter, root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
		{name: "unrelated root: follows up to the root", presented: []*testpki.Cert{leaf}, roots: testpki.Pool(other), want: []*testpki.Cert{inter, root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
		{name: "nil roots, intermediate presented: only the root is new", presented: []*testpki.Cert{leaf, inter}, roots: nil, want: []*testpki.Cert{root}, wantHits: map[string]int{"/inter": 1, "/root": 1}},
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
			c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
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
			if err := verifyLeaf(leaf.Cert, testpki.Pool(root), all...); err != nil {
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

func TestCompleteConcurrent(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia concurrent root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia concurrent inter", nil))
	leaf := leafWithAIA(t, inter, srv.url("/inter"))
	srv.serve("/inter", inter.Cert.Raw)
	c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
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
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia client root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia client inter", nil))
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
	got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
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
	c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
	if _, err := c.Complete(context.Background(), nil, nil); err == nil {
		t.Error("Complete(nil) succeeded")
	}
	// A self-signed certificate has no issuer to fetch, even with an AIA.
	srv := newAIAServer(t)
	selfAIA := newCA(t, nil, "aia root with AIA", -1, []string{srv.url("/other-root")})
	srv.serve("/other-root", must[*testpki.Cert](t)(testpki.NewRootCA("aia other root")).Cert.Raw)
	got, err := c.Complete(context.Background(), []*x509.Certificate{selfAIA.Cert}, nil)
	if err != nil || len(got) != 0 {
		t.Errorf("self-signed: got %s, %v; want nothing, nil", names(got), err)
	}
	if n := srv.total(); n != 0 {
		t.Errorf("self-signed: %d requests, want none", n)
	}
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia lone root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCA(root, "aia no-aia inter"))
	leaf := leafWithAIA(t, inter)
	got, err = c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
	if err != nil || len(got) != 0 {
		t.Errorf("no AIA: got %s, %v; want nothing, nil", names(got), err)
	}
}

func TestParseCertificates(t *testing.T) {
	root := must[*testpki.Cert](t)(testpki.NewRootCA("parse root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCA(root, "parse inter"))
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
		want []*testpki.Cert // nil: an error is expected
	}{
		{"DER", inter.Cert.Raw, []*testpki.Cert{inter}},
		{"PEM bundle", append(append([]byte(nil), inter.CertPEM...), root.CertPEM...), []*testpki.Cert{inter, root}},
		{"PEM with a key block first", append(append([]byte(nil), keyPEM...), inter.CertPEM...), []*testpki.Cert{inter}},
		{"PKCS#7 DER with two certificates", pkcs7CertsOnly(t, inter, root), []*testpki.Cert{inter, root}},
		{"PKCS#7 PEM with two certificates", pemPKCS7(pkcs7CertsOnly(t, inter, root)), []*testpki.Cert{inter, root}},
		{"openssl PKCS#7 DER with two certificates", opensslPKCS7(t, "DER", inter, root), []*testpki.Cert{inter, root}},
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

// fakeResolver resolves the names in hosts through the pure Go resolver,
// speaking DNS over a net.Pipe with answerDNS: no DNS server is contacted.
// Other names do not exist.
func fakeResolver(hosts map[string]netip.Addr) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		client, server := net.Pipe()
		go answerDNS(server, hosts)
		return client, nil
	}}
}

// answerDNS answers DNS queries in the TCP framing (the Go resolver uses it
// on a connection that is not a PacketConn): A or AAAA from hosts,
// NXDOMAIN for an unknown name.
func answerDNS(c net.Conn, hosts map[string]netip.Addr) {
	defer c.Close()
	for {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, q); err != nil || len(q) < 12 {
			return
		}
		i := 12
		var labels []string
		for i < len(q) && q[i] != 0 {
			n := int(q[i])
			if i+1+n > len(q) {
				return
			}
			labels = append(labels, string(q[i+1:i+1+n]))
			i += 1 + n
		}
		if i+5 > len(q) {
			return
		}
		qtype := binary.BigEndian.Uint16(q[i+1:])
		a, known := hosts[strings.ToLower(strings.Join(labels, "."))]
		flags := uint16(0x8180) // response, recursion desired and available
		if !known {
			flags |= 3 // NXDOMAIN
		}
		answer := known && (qtype == 1 && a.Is4() || qtype == 28 && a.Is6())
		resp := append([]byte{}, q[0], q[1])
		resp = binary.BigEndian.AppendUint16(resp, flags)
		resp = binary.BigEndian.AppendUint16(resp, 1)
		if answer {
			resp = binary.BigEndian.AppendUint16(resp, 1)
		} else {
			resp = binary.BigEndian.AppendUint16(resp, 0)
		}
		resp = append(resp, 0, 0, 0, 0)
		resp = append(resp, q[12:i+5]...) // the question
		if answer {
			resp = append(resp, 0xc0, 12) // the question's name
			resp = binary.BigEndian.AppendUint16(resp, qtype)
			resp = binary.BigEndian.AppendUint16(resp, 1) // IN
			resp = binary.BigEndian.AppendUint32(resp, 60)
			b := a.AsSlice()
			resp = binary.BigEndian.AppendUint16(resp, uint16(len(b)))
			resp = append(resp, b...)
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
		if _, err := c.Write(append(out, resp...)); err != nil {
			return
		}
	}
}

// TestCompleteRefusesPrivateDestinations: a hostile leaf whose caIssuers
// URLs lead to the proxy's own host, under every spelling, reaches nothing
// without the opt-in, and each error names the URL, the refused address
// and the fix; with AllowPrivate the same fetches work.
func TestCompleteRefusesPrivateDestinations(t *testing.T) {
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia ssrf root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia ssrf inter", nil))
	local := newAIAServer(t) // stands for the admin port, a metadata service...
	local.serve("/inter", inter.Cert.Raw)
	port := local.Listener.Addr().(*net.TCPAddr).Port

	// A forward proxy on loopback (the user's own, allowed): it redirects
	// ca.public.test to the local server, and serves the intermediate
	// as the internal host proxied.hostile.test.
	var mu sync.Mutex
	proxied := map[string]int{}
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		proxied[r.URL.Hostname()]++
		mu.Unlock()
		switch r.URL.Hostname() {
		case "ca.public.test":
			http.Redirect(w, r, local.url("/inter"), http.StatusFound)
		case "proxied.hostile.test":
			_, _ = w.Write(inter.Cert.Raw)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(proxy.Close)
	proxyURL := must[*url.URL](t)(url.Parse(proxy.URL))
	viaProxy := func(r *http.Request) (*url.URL, error) {
		if h := r.URL.Hostname(); h == "ca.public.test" || h == "proxied.hostile.test" {
			return proxyURL, nil
		}
		return nil, nil // like NO_PROXY, and like Go for loopback
	}
	resolver := fakeResolver(map[string]netip.Addr{
		"aia.hostile.test":     netip.MustParseAddr("127.0.0.1"),
		"proxied.hostile.test": netip.MustParseAddr("127.0.0.1"),
		"ca.public.test":       netip.MustParseAddr("203.0.113.7"),
	})

	tests := []struct {
		name    string
		url     string
		wantAny []string // the error names one of these addresses
		errHas  string
		proxied string // the host the proxy sees once with the opt-in
	}{
		{name: "loopback address", url: local.url("/inter"), wantAny: []string{"from 127.0.0.1 (a loopback address)"}},
		{name: "localhost", url: fmt.Sprintf("http://localhost:%d/inter", port), wantAny: []string{"from localhost at 127.0.0.1 (a loopback address)", "from localhost at ::1 (a loopback address)"}},
		{name: "decimal number", url: fmt.Sprintf("http://2130706433:%d/inter", port), wantAny: []string{"from 2130706433 at 127.0.0.1 (a loopback address)"}},
		{name: "hexadecimal short form", url: fmt.Sprintf("http://0x7f.1:%d/inter", port), wantAny: []string{"from 0x7f.1 at 127.0.0.1 (a loopback address)"}},
		{name: "IPv4-mapped IPv6", url: fmt.Sprintf("http://[::ffff:127.0.0.1]:%d/inter", port), wantAny: []string{"from ::ffff:127.0.0.1 (a loopback address)"}},
		{name: "name resolving to loopback", url: fmt.Sprintf("http://aia.hostile.test:%d/inter", port), wantAny: []string{"from aia.hostile.test at 127.0.0.1 (a loopback address)"}},
		{name: "public-looking URL redirecting to loopback", url: "http://ca.public.test/inter", wantAny: []string{"from 127.0.0.1 (a loopback address)"},
			errHas: "aia: http://ca.public.test/inter: redirected to " + local.url("/inter") + ": refusing", proxied: "ca.public.test"},
		{name: "through a proxy, a name resolving to loopback", url: "http://proxied.hostile.test/inter", wantAny: []string{"from proxied.hostile.test at 127.0.0.1 (a loopback address)"}, proxied: "proxied.hostile.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := leafWithAIA(t, inter, tt.url)
			presented := []*x509.Certificate{leaf.Cert}
			before := local.total()
			mu.Lock()
			proxiedBefore := proxied[tt.proxied]
			mu.Unlock()

			c := chain.Completer{Resolver: resolver, Proxy: viaProxy}
			got, err := c.Complete(context.Background(), presented, testpki.Pool(root))
			if err == nil || len(got) != 0 {
				t.Fatalf("Complete: %s, %v; want a refusal", names(got), err)
			}
			if n := local.total() - before; n != 0 {
				t.Fatalf("%d request(s) reached the local server", n)
			}
			msg := err.Error()
			for _, want := range []string{"aia: " + tt.url + ": ", "refusing to fetch from", "the URL comes from a certificate not verified yet", "aia_allow_private: true", "--aia-allow-private", tt.errHas} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			named := false
			for _, want := range tt.wantAny {
				named = named || strings.Contains(msg, want)
			}
			if !named {
				t.Errorf("error %q names none of %q", msg, tt.wantAny)
			}
			var re *chain.RefusedAddressError
			if !errors.As(err, &re) || !re.Addr.Unmap().IsLoopback() || re.URL != tt.url {
				t.Errorf("errors.As(RefusedAddressError) = %+v, want the loopback address and the URL", re)
			}
			if tt.proxied != "ca.public.test" { // that one must reach the proxy to be redirected
				mu.Lock()
				n := proxied[tt.proxied] - proxiedBefore
				mu.Unlock()
				if tt.proxied != "" && n != 0 {
					t.Errorf("%d request(s) for %s reached the proxy", n, tt.proxied)
				}
			}

			c.AllowPrivate = true
			got, err = c.Complete(context.Background(), presented, testpki.Pool(root))
			if err != nil {
				t.Fatalf("with AllowPrivate: %v", err)
			}
			wantCerts(t, got, inter)
			if tt.proxied == "proxied.hostile.test" {
				mu.Lock()
				n := proxied[tt.proxied] - proxiedBefore
				mu.Unlock()
				if n != 1 {
					t.Errorf("with AllowPrivate, %d requests reached the proxy, want 1", n)
				}
			} else if n := local.total() - before; n != 1 {
				t.Errorf("with AllowPrivate, %d requests reached the local server, want 1", n)
			}
		})
	}
}

// TestCompleteRefusalNamesTheFix pins the whole message for an address
// that no test can listen on, and the other refused destinations of a
// caIssuers URL: nothing is dialled, so the refusal is immediate.
func TestCompleteRefusalNamesTheFix(t *testing.T) {
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia fix root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia fix inter", nil))
	leaf := leafWithAIA(t, inter, "http://10.0.0.5/ca.crt")
	var c chain.Completer
	_, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
	want := "aia: http://10.0.0.5/ca.crt: refusing to fetch from 10.0.0.5 (a private address): the URL comes from a certificate not verified yet; set aia_allow_private: true (--aia-allow-private) if your CA's AIA server is on an internal network"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	for _, u := range []string{
		"http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/ca.crt", "http://172.16.0.1/ca.crt",
		"http://192.168.0.1/ca.crt", "http://100.64.0.1/ca.crt", "http://[fc00::1]/ca.crt", "http://0.0.0.0/ca.crt",
		"http://[::]/ca.crt", "http://224.0.0.1/ca.crt", "http://255.255.255.255/ca.crt", "http://0/ca.crt",
	} {
		leaf := leafWithAIA(t, inter, u)
		start := time.Now()
		_, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
		var re *chain.RefusedAddressError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), "aia: "+u+": refusing to fetch from ") {
			t.Errorf("%s: err = %v, want a refusal naming the URL", u, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: refused after %s: something was dialled", u, d)
		}
	}
}

// TestCompleteThroughProxy: a proxy named by the environment (here by
// Completer.Proxy) is the user's own configuration: reached even on
// loopback, for a URL whose host resolves to a public address.
func TestCompleteThroughProxy(t *testing.T) {
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia proxy root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia proxy inter", nil))
	var hits atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.String() != "http://ca.public.test/inter.der" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(inter.Cert.Raw)
	}))
	t.Cleanup(proxy.Close)
	proxyURL := must[*url.URL](t)(url.Parse(proxy.URL))
	c := chain.Completer{
		Proxy:    http.ProxyURL(proxyURL),
		Resolver: fakeResolver(map[string]netip.Addr{"ca.public.test": netip.MustParseAddr("2606:4700::1")}),
	}
	leaf := leafWithAIA(t, inter, "http://ca.public.test/inter.der")
	got, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
	if err != nil {
		t.Fatalf("Complete through the proxy: %v", err)
	}
	wantCerts(t, got, inter)
	if n := hits.Load(); n != 1 {
		t.Errorf("the proxy saw %d requests, want 1", n)
	}
	// A name that does not resolve here is not handed to the proxy.
	leaf = leafWithAIA(t, inter, "http://unknown.hostile.test/inter.der")
	if _, err := c.Complete(context.Background(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root)); err == nil || !strings.Contains(err.Error(), "resolving unknown.hostile.test") {
		t.Errorf("err = %v, want the failed resolution", err)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("the proxy saw %d requests, want still 1", n)
	}
}

// TestCompleteUnder: with a pin, only the leaf's issuer is looked for, at
// most AIAMaxFetchesPinned URLs, and only an issuer that the pinned anchor
// or a pinned intermediate signed is kept.
func TestCompleteUnder(t *testing.T) {
	srv := newAIAServer(t)
	anchor := must[*testpki.Cert](t)(testpki.NewRootCA("aia pinned root"))
	other := must[*testpki.Cert](t)(testpki.NewRootCA("aia other root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCA(anchor, "aia pinned inter"))
	interOther := reissued(t, inter, other) // same name and key, another root
	deep := newCA(t, nil, "aia pinned deep root", 2, nil)
	mid := newCA(t, deep, "aia pinned mid", 1, nil)
	inter2 := newCA(t, mid, "aia new inter under mid", 0, []string{srv.url("/mid")})
	srv.serve("/inter", inter.Cert.Raw)
	srv.serve("/inter-other", interOther.Cert.Raw)
	srv.serve("/bundle", append(append([]byte(nil), interOther.CertPEM...), inter.CertPEM...))
	srv.serve("/inter2", inter2.Cert.Raw)
	srv.serve("/mid", mid.Cert.Raw)
	if chain.AIAMaxFetchesPinned != 2 {
		t.Fatalf("AIAMaxFetchesPinned = %d: the table assumes 2", chain.AIAMaxFetchesPinned)
	}

	tests := []struct {
		name     string
		issuer   *testpki.Cert // signs the leaf
		aia      []string
		extra    []*testpki.Cert // presented after the leaf
		anchors  []*testpki.Cert
		hints    []*testpki.Cert
		want     []*testpki.Cert
		errHas   string
		wantHits map[string]int
	}{
		{name: "issuer signed by the pinned anchor is kept", issuer: inter, aia: []string{"/inter"}, anchors: []*testpki.Cert{anchor},
			want: []*testpki.Cert{inter}, wantHits: map[string]int{"/inter": 1}},
		{name: "issuer signed by another root is discarded", issuer: inter, aia: []string{"/inter-other"}, anchors: []*testpki.Cert{anchor},
			errHas: "is not signed by the pinned anchor", wantHits: map[string]int{"/inter-other": 1}},
		{name: "the second URL gives the issuer under the pin", issuer: inter, aia: []string{"/inter-other", "/inter"}, anchors: []*testpki.Cert{anchor},
			want: []*testpki.Cert{inter}, wantHits: map[string]int{"/inter-other": 1, "/inter": 1}},
		{name: "stops at the first URL that gave one", issuer: inter, aia: []string{"/inter", "/inter-other"}, anchors: []*testpki.Cert{anchor},
			want: []*testpki.Cert{inter}, wantHits: map[string]int{"/inter": 1, "/inter-other": 0}},
		{name: "at most 2 URLs", issuer: inter, aia: []string{"/missing-1", "/missing-2", "/inter"}, anchors: []*testpki.Cert{anchor},
			errHas: "404", wantHits: map[string]int{"/missing-1": 1, "/missing-2": 1, "/inter": 0}},
		{name: "of a bundle, only the issuer under the pin", issuer: inter, aia: []string{"/bundle"}, anchors: []*testpki.Cert{anchor},
			want: []*testpki.Cert{inter}, wantHits: map[string]int{"/bundle": 1}},
		{name: "signed by a pinned intermediate (hint)", issuer: inter2, aia: []string{"/inter2"}, anchors: []*testpki.Cert{deep}, hints: []*testpki.Cert{mid},
			want: []*testpki.Cert{inter2}, wantHits: map[string]int{"/inter2": 1, "/mid": 0}},
		{name: "only the leaf: the issuer's own AIA is not followed", issuer: inter2, aia: []string{"/inter2"}, anchors: []*testpki.Cert{deep},
			errHas: "is not signed by the pinned anchor", wantHits: map[string]int{"/inter2": 1, "/mid": 0}},
		{name: "only the leaf: a presented intermediate's AIA is not followed", issuer: inter2, extra: []*testpki.Cert{inter2}, anchors: []*testpki.Cert{deep},
			wantHits: map[string]int{"/mid": 0}},
		{name: "already chains: no fetch", issuer: inter, aia: []string{"/inter"}, extra: []*testpki.Cert{inter}, anchors: []*testpki.Cert{anchor},
			wantHits: map[string]int{"/inter": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var urls []string
			for _, p := range tt.aia {
				urls = append(urls, srv.url(p))
			}
			leaf := leafWithAIA(t, tt.issuer, urls...)
			presented := []*x509.Certificate{leaf.Cert}
			for _, c := range tt.extra {
				presented = append(presented, c.Cert)
			}
			var anchors, hints []*x509.Certificate
			for _, c := range tt.anchors {
				anchors = append(anchors, c.Cert)
			}
			for _, c := range tt.hints {
				hints = append(hints, c.Cert)
			}
			before := map[string]int{}
			for p := range tt.wantHits {
				before[p] = srv.count(p)
			}
			c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
			got, err := c.CompleteUnder(context.Background(), presented, anchors, hints)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
				}
			} else if err != nil {
				t.Fatalf("CompleteUnder: %v", err)
			}
			wantCerts(t, got, tt.want...)
			for p, want := range tt.wantHits {
				if n := srv.count(p) - before[p]; n != want {
					t.Errorf("%s requested %d times, want %d", p, n, want)
				}
			}
			if len(tt.want) > 0 {
				pool := testpki.Pool(tt.anchors...)
				if err := verifyLeaf(leaf.Cert, pool, append(append([]*x509.Certificate{}, hints...), got...)...); err != nil {
					t.Errorf("does not verify under the pin: %v", err)
				}
			}
		})
	}

	t.Run("the verified cache first, only what leads to the pin", func(t *testing.T) {
		leaf := leafWithAIA(t, inter, srv.url("/inter"))
		presented := []*x509.Certificate{leaf.Cert}
		c := chain.Completer{AllowPrivate: true}
		// Another route verified the cross-sign under the other root: not
		// of use under this pin, so the URL is fetched.
		c.Remember([]*x509.Certificate{leaf.Cert, interOther.Cert, other.Cert}, []*x509.Certificate{interOther.Cert})
		before := srv.count("/inter")
		got, err := c.CompleteUnder(context.Background(), presented, []*x509.Certificate{anchor.Cert}, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantCerts(t, got, inter)
		if n := srv.count("/inter") - before; n != 1 {
			t.Fatalf("/inter requested %d times, want 1", n)
		}
		c.Remember(verifiedPath(t, leaf.Cert, testpki.Pool(anchor), got...), got)
		got, err = c.CompleteUnder(context.Background(), presented, []*x509.Certificate{anchor.Cert}, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantCerts(t, got, inter)
		if n := srv.count("/inter") - before; n != 1 {
			t.Errorf("/inter requested %d times after Remember, want still 1", n)
		}
	})
	t.Run("guarded like Complete", func(t *testing.T) {
		leaf := leafWithAIA(t, inter, srv.url("/inter"))
		before := srv.count("/inter")
		var c chain.Completer
		_, err := c.CompleteUnder(context.Background(), []*x509.Certificate{leaf.Cert}, []*x509.Certificate{anchor.Cert}, nil)
		var re *chain.RefusedAddressError
		if !errors.As(err, &re) || srv.count("/inter") != before {
			t.Errorf("err = %v, %d requests; want a refusal and none", err, srv.count("/inter")-before)
		}
	})
	t.Run("nothing to complete", func(t *testing.T) {
		var c chain.Completer
		if _, err := c.CompleteUnder(context.Background(), nil, []*x509.Certificate{anchor.Cert}, nil); err == nil {
			t.Error("no presented certificate: no error")
		}
		leaf := leafWithAIA(t, inter, srv.url("/inter"))
		if _, err := c.CompleteUnder(context.Background(), []*x509.Certificate{leaf.Cert}, nil, nil); err == nil {
			t.Error("no anchor: no error")
		}
	})
}

// TestCompleteContext: Complete and CompleteUnder stop as soon as the
// caller's context is done, during a fetch and between fetches.
func TestCompleteContext(t *testing.T) {
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia ctx root"))
	inter := must[*testpki.Cert](t)(testpki.NewIntermediateCAWithAIA(root, "aia ctx inter", nil))
	var requests atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		select { // hangs 30s
		case <-release:
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	leaf := leafWithAIA(t, inter, srv.URL+"/a", srv.URL+"/b", srv.URL+"/c")
	presented := []*x509.Certificate{leaf.Cert}
	calls := map[string]func(ctx context.Context, c *chain.Completer) ([]*x509.Certificate, error){
		"Complete": func(ctx context.Context, c *chain.Completer) ([]*x509.Certificate, error) {
			return c.Complete(ctx, presented, testpki.Pool(root))
		},
		"CompleteUnder": func(ctx context.Context, c *chain.Completer) ([]*x509.Certificate, error) {
			return c.CompleteUnder(ctx, presented, []*x509.Certificate{root.Cert}, nil)
		},
	}
	for name, call := range calls {
		t.Run(name+" cancelled during a fetch", func(t *testing.T) {
			before := requests.Load()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				for requests.Load() == before {
					time.Sleep(time.Millisecond)
				}
				cancel()
			}()
			c := &chain.Completer{AllowPrivate: true}
			start := time.Now()
			got, err := call(ctx, c)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("returned after %s while the server hangs 30s", d)
			}
			if !errors.Is(err, context.Canceled) || len(got) != 0 {
				t.Errorf("got %s, %v; want nothing and context.Canceled", names(got), err)
			}
			if n := requests.Load() - before; n != 1 {
				t.Errorf("%d requests, want 1: no fetch after the cancel", n)
			}
		})
		t.Run(name+" with a context already done", func(t *testing.T) {
			before := requests.Load()
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			c := &chain.Completer{AllowPrivate: true}
			_, err := call(ctx, c)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
			if n := requests.Load() - before; n != 0 {
				t.Errorf("%d requests with a context already done", n)
			}
		})
	}
}

// TestCompleteHeapBounded: a man in the middle hands out fresh caIssuers
// URLs at every handshake, each answered with ~63 KiB of certificates that
// are not the issuer. Nothing of it may stay in memory: after 200 such
// handshakes the heap has grown by less than 2 MiB, and nothing unverified
// is cached (the next Complete fetches again).
//
// Measured with this test run against the previous chain/aia.go (an
// unbounded URL -> answer cache, git show HEAD:chain/aia.go at the time):
// the heap grew by 692,122 KiB in the 200 rounds (~3.4 MiB a handshake;
// ~8.2 MiB a handshake with plain 470-byte junk certificates instead), and
// the first handshake coming back made no request (all cached). This code:
// ~40-50 KiB in all, and 20 requests.
func TestCompleteHeapBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("200 hostile rounds")
	}
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia heap root"))
	issuer := must[*testpki.Cert](t)(testpki.NewIntermediateCA(root, "aia heap issuer"))
	// Junk of ~3.5 KiB a certificate (long AIA lists): parsing is what
	// costs time, and it costs per certificate.
	var junkAIA []string
	for i := range 6 {
		junkAIA = append(junkAIA, fmt.Sprintf("http://junk.example.com/%s/%d.crt", strings.Repeat("x", 500), i))
	}
	junk := newCA(t, root, "aia heap junk", 0, junkAIA)
	var bundle []*testpki.Cert
	for len(bundle)*len(junk.Cert.Raw) < 63<<10-len(junk.Cert.Raw) {
		bundle = append(bundle, junk)
	}
	body := pkcs7CertsOnly(t, bundle...)
	if len(body) > chain.AIAMaxBytes || len(body) < 60<<10 {
		t.Fatalf("bundle of %d bytes, want ~63 KiB", len(body))
	}
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)

	// One handshake: a leaf and three intermediates, each with
	// AIAMaxURLsPerCert fresh URLs: AIAMaxFetches fetches.
	next := 0
	freshURLs := func() []string {
		var urls []string
		for range chain.AIAMaxURLsPerCert {
			next++
			urls = append(urls, fmt.Sprintf("%s/%d.p7c", srv.URL, next))
		}
		return urls
	}
	handshake := func(c *chain.Completer) []*x509.Certificate {
		presented := []*x509.Certificate{leafWithAIA(t, issuer, freshURLs()...).Cert}
		for range 3 {
			presented = append(presented, newCA(t, root, "aia heap presented", 0, freshURLs()).Cert)
		}
		got, err := c.Complete(context.Background(), presented, testpki.Pool(root))
		if err != nil || len(got) != 0 {
			t.Fatalf("Complete: %s, %v; want nothing (no answer holds the issuer)", names(got), err)
		}
		return presented
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}

	c := &chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
	first := handshake(c)                     // warm up the HTTP machinery
	before := heap()
	startRequests := requests.Load()
	for range 200 {
		handshake(c)
	}
	after := heap()
	runtime.KeepAlive(c)
	if n := requests.Load() - startRequests; n != 200*chain.AIAMaxFetches {
		t.Fatalf("%d requests in 200 rounds, want %d", n, 200*chain.AIAMaxFetches)
	}
	growth := int64(after) - int64(before)
	t.Logf("heap growth after 200 hostile handshakes: %d KiB (HeapAlloc %d -> %d)", growth>>10, before, after)
	if growth >= 2<<20 {
		t.Errorf("the heap grew by %d KiB in 200 hostile handshakes, want < 2048 KiB", growth>>10)
	}

	// Nothing unverified was kept: the first handshake fetches again.
	startRequests = requests.Load()
	if got, err := c.Complete(context.Background(), first, testpki.Pool(root)); err != nil || len(got) != 0 {
		t.Fatalf("Complete: %s, %v", names(got), err)
	}
	if n := requests.Load() - startRequests; n != chain.AIAMaxFetches {
		t.Errorf("%d requests when the first handshake comes back, want %d: something was cached", n, chain.AIAMaxFetches)
	}
}

// TestCompleteMaxFetches: however many certificates name however many
// URLs, one Complete call makes at most AIAMaxFetches requests, and a URL
// named twice in one call is requested once.
func TestCompleteMaxFetches(t *testing.T) {
	srv := newAIAServer(t)
	root := must[*testpki.Cert](t)(testpki.NewRootCA("aia cap root"))
	issuer := must[*testpki.Cert](t)(testpki.NewIntermediateCA(root, "aia cap issuer"))
	var presented []*x509.Certificate
	for i := range 6 { // 6 certificates x 5 URLs, one of them shared by all
		urls := []string{srv.url("/shared")}
		for j := range chain.AIAMaxURLsPerCert - 1 {
			urls = append(urls, srv.url(fmt.Sprintf("/%d-%d", i, j)))
		}
		if i == 0 {
			presented = append(presented, leafWithAIA(t, issuer, urls...).Cert)
			continue
		}
		presented = append(presented, newCA(t, root, "aia cap presented "+strconv.Itoa(i), 0, urls).Cert)
	}
	c := chain.Completer{AllowPrivate: true} // the test server is on 127.0.0.1
	if _, err := c.Complete(context.Background(), presented, testpki.Pool(root)); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("err = %v, want the 404s", err)
	}
	if n := srv.total(); n != chain.AIAMaxFetches {
		t.Errorf("%d requests, want AIAMaxFetches = %d", n, chain.AIAMaxFetches)
	}
	if n := srv.count("/shared"); n != 1 {
		t.Errorf("/shared requested %d times, want 1", n)
	}
}

// TestCompleteErrorsCarryNoControlCharacters: the AIA server is chosen by a
// certificate not verified yet, and so are its status line and the URL: an
// error quoting them is escaped (it reaches /readyz, logs and terminals),
// and a URL with user info is not shown as a redirect to itself.
func TestCompleteErrorsCarryNoControlCharacters(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				_, _ = c.Read(buf)
				_, _ = c.Write([]byte("HTTP/1.1 404 \x1b]0;owned\x07\u202e\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	root := newCA(t, nil, "escape root", -1, nil)
	inter := newCA(t, root, "escape inter", -1, nil)
	leaf := leafWithAIA(t, inter, "http://"+ln.Addr().String()+"/\u202ex.der")
	_, err = (&chain.Completer{AllowPrivate: true}).Complete(t.Context(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
	if err == nil {
		t.Fatal("want the fetch to fail")
	}
	for i, r := range err.Error() {
		if !unicode.IsPrint(r) {
			t.Fatalf("the error holds %U at byte %d: %q", r, i, err)
		}
	}
	if !strings.Contains(err.Error(), `404 \x1b]0;owned\a\u202e`) {
		t.Errorf("the error does not show the status escaped: %v", err)
	}

	leaf = leafWithAIA(t, inter, "http://user:secret@127.0.0.1:1/ca.der")
	_, err = (&chain.Completer{}).Complete(t.Context(), []*x509.Certificate{leaf.Cert}, testpki.Pool(root))
	if err == nil || strings.Contains(err.Error(), "redirected") || !strings.Contains(err.Error(), "refusing to fetch from 127.0.0.1") {
		t.Errorf("a URL with user info: %v", err)
	}
}
