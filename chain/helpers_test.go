package chain_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// certSpec describes a test certificate for mkCert.
type certSpec struct {
	cn       string
	dns      []string
	ips      []string
	ca       bool
	key      *ecdsa.PrivateKey // nil: a new key (pass one to cross-sign)
	subject  *pkix.Name        // overrides cn as the whole subject
	permit   []string          // permitted DNS name constraints
	exclude  []string          // excluded DNS name constraints
	notAfter time.Time
}

// mkCert issues a certificate from spec, signed by parent (self-signed when
// parent is nil).
func mkCert(t *testing.T, parent *testpki.Cert, spec certSpec) *testpki.Cert {
	t.Helper()
	key := spec.key
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	subject := pkix.Name{CommonName: spec.cn, Organization: []string{"pgverifyproxy chain tests"}}
	if spec.subject != nil {
		subject = *spec.subject
	}
	notAfter := spec.notAfter
	if notAfter.IsZero() {
		notAfter = now.Add(48 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               subject,
		DNSNames:              spec.dns,
		NotBefore:             now.Add(-2 * time.Hour),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  spec.ca,
		PermittedDNSDomains:   spec.permit,
		ExcludedDNSDomains:    spec.exclude,
	}
	for _, s := range spec.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(s))
	}
	if spec.ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		tmpl.MaxPathLen = -1
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
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

// certs returns the parsed certificates of cs.
func certs(cs ...*testpki.Cert) []*x509.Certificate {
	out := make([]*x509.Certificate, len(cs))
	for i, c := range cs {
		out[i] = c.Cert
	}
	return out
}

// crossSigned is a CA whose one key is vouched for by two roots, as Let's
// Encrypt's ISRG Root X1 was by itself and by DST Root CA X3.
type crossSigned struct {
	rootA, rootB, interA, interB, leaf *testpki.Cert
}

func newCrossSigned(t *testing.T) crossSigned {
	t.Helper()
	var cs crossSigned
	cs.rootA = mkCert(t, nil, certSpec{cn: "root A", ca: true})
	cs.rootB = mkCert(t, nil, certSpec{cn: "root B", ca: true})
	cs.interA = mkCert(t, cs.rootA, certSpec{cn: "issuing CA", ca: true})
	cs.interB = mkCert(t, cs.rootB, certSpec{cn: "issuing CA", ca: true, key: cs.interA.Key.(*ecdsa.PrivateKey)})
	cs.leaf = mkCert(t, cs.interA, certSpec{cn: "db.example.com", dns: []string{"db.example.com"}})
	return cs
}

// caFile writes certificates as a PEM file.
func caFile(t *testing.T, certs ...*testpki.Cert) string {
	t.Helper()
	var pems [][]byte
	for _, c := range certs {
		pems = append(pems, c.CertPEM)
	}
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := testpki.WritePEMFile(path, pems...); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeFuzzSeeds writes one-argument ([]byte) corpus files of a fuzz target
// when PGVP_FUZZ_WRITE_SEEDS is set (seeds are generated certificates).
func writeFuzzSeeds(f *testing.F, seeds map[string][]byte) {
	if os.Getenv("PGVP_FUZZ_WRITE_SEEDS") == "" {
		return
	}
	dir := filepath.Join("testdata", "fuzz", f.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.Fatal(err)
	}
	for name, b := range seeds {
		if err := os.WriteFile(filepath.Join(dir, "seed_"+name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
			f.Fatal(err)
		}
	}
}

// pkcs7CertsOnly builds a degenerate (certs-only) PKCS#7 SignedData in DER:
// ContentInfo{signedData, [0] EXPLICIT SignedData{1, {}, {data}, [0] IMPLICIT certs, {}}}.
func pkcs7CertsOnly(t *testing.T, certs ...*testpki.Cert) []byte {
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

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func leafWithAIA(t *testing.T, parent *testpki.Cert, aia ...string) *testpki.Cert {
	t.Helper()
	return must[*testpki.Cert](t)(testpki.IssueLeaf(parent, testpki.LeafOptions{CommonName: "db.example.test", DNSNames: []string{"db.example.test"}, AIA: aia}))
}

func names(certs []*x509.Certificate) string {
	var s []string
	for _, c := range certs {
		s = append(s, c.Subject.CommonName)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// wantCerts checks got is exactly want, in order.
func wantCerts(t *testing.T, got []*x509.Certificate, want ...*testpki.Cert) {
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

// verifiedPath verifies leaf against roots with intermediates and returns
// the first chain, as the verifier passes it to Remember.
func verifiedPath(t *testing.T, leaf *x509.Certificate, roots *x509.CertPool, intermediates ...*x509.Certificate) []*x509.Certificate {
	t.Helper()
	pool := x509.NewCertPool()
	for _, c := range intermediates {
		pool.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, DNSName: "db.example.test"})
	if err != nil {
		t.Fatalf("verifying the path to remember: %v", err)
	}
	return chains[0]
}

// reissued returns a certificate with ca's name and key issued by by: the
// same intermediate cross-signed under another root (mkCert does the work).
func reissued(t *testing.T, ca, by *testpki.Cert) *testpki.Cert {
	t.Helper()
	return mkCert(t, by, certSpec{subject: &ca.Cert.Subject, ca: true, key: ca.Key.(*ecdsa.PrivateKey)})
}
