package chain

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"iter"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// The public chain shared with cmd/pgverifyproxy's tests (see its
// testdata/README.md): www.google.com > GTS CA 1C3, valid at googleTime,
// under GTS Root R1, which only the embedded Mozilla bundle holds here.
const (
	googleChainFile = "../cmd/pgverifyproxy/testdata/www.google.com-2023.pem"
	googleTime      = 1677615892
	gtsRootR1       = "d947432abde7b7fa90fc2e6b59101b1280e0e1c7e4e40fa3c6887fff57a7f4cf"
)

// verifyGoogle verifies the public chain against roots and returns the
// SHA-256 of the root it reached.
func verifyGoogle(t *testing.T, roots *x509.CertPool) (string, error) {
	t.Helper()
	data, err := os.ReadFile(googleChainFile)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	inter.AddCert(certs[1])
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		CurrentTime: time.Unix(googleTime, 0), DNSName: "www.google.com"})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(chains[0][len(chains[0])-1].Raw)
	return hex.EncodeToString(sum[:]), nil
}

// TestSystemRootsPerOS: where Go hands verification to the system's
// verifier (windows, darwin, ios), the system pool gets Mozilla's roots
// added; elsewhere the pool is returned as loaded, so that
// SSL_CERT_FILE/SSL_CERT_DIR and the no-store fallback work as before. The
// loaded pool here is an empty stand-in for the system's, whatever system
// runs the test.
func TestSystemRootsPerOS(t *testing.T) {
	for _, tc := range []struct {
		goos        string
		withMozilla bool
	}{
		{"linux", false}, {"freebsd", false}, {"openbsd", false},
		{"windows", true}, {"darwin", true}, {"ios", true},
	} {
		t.Run(tc.goos, func(t *testing.T) {
			loaded := x509.NewCertPool()
			pool, err := systemRootsFor(tc.goos, func() (*x509.CertPool, error) { return loaded, nil })
			if err != nil {
				t.Fatal(err)
			}
			if pool != loaded {
				t.Fatal("systemRootsFor returned another pool than the system's")
			}
			root, err := verifyGoogle(t, pool)
			if !tc.withMozilla {
				if err == nil || !pool.Equal(x509.NewCertPool()) {
					t.Fatalf("on %s the loaded pool was changed (the public chain verified to %s, %v)", tc.goos, root, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("on %s the public chain does not verify against the system pool plus Mozilla's roots: %v", tc.goos, err)
			}
			if root != gtsRootR1 {
				t.Errorf("on %s the chain ends at a root with SHA-256 %s, want GTS Root R1 %s", tc.goos, root, gtsRootR1)
			}
		})
	}
}

// TestSystemRootsLoadError names the step that failed.
func TestSystemRootsLoadError(t *testing.T) {
	_, err := systemRootsFor("windows", func() (*x509.CertPool, error) { return nil, errors.New("no store") })
	if err == nil || !strings.HasPrefix(err.Error(), "loading the system trust store: no store") {
		t.Fatalf("err = %v", err)
	}
}

// TestMozillaRootsKeepConstraints: a root the bundle marks with a
// constraint (a distrust-after date) is added with it, so a chain it
// refuses does not verify; a root without one is added plainly.
func TestMozillaRootsKeepConstraints(t *testing.T) {
	ca, leaf := testCAAndLeaf(t)
	refuse := errors.New("issued after the distrust date")
	for _, tc := range []struct {
		name       string
		constraint func([]*x509.Certificate) error
		wantOK     bool
	}{
		{"no constraint", nil, true},
		{"constraint passes", func([]*x509.Certificate) error { return nil }, true},
		{"constraint refuses", func([]*x509.Certificate) error { return refuse }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq := iter.Seq[bundle.Root](func(yield func(bundle.Root) bool) {
				yield(bundle.Root{Certificate: ca.Raw, Constraint: tc.constraint})
			})
			roots, err := parseRoots(seq)
			if err != nil {
				t.Fatal(err)
			}
			pool := x509.NewCertPool()
			addRoots(pool, roots)
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: time.Now()})
			if tc.wantOK != (err == nil) {
				t.Fatalf("verify: %v, want ok %v", err, tc.wantOK)
			}
		})
	}
	bad := iter.Seq[bundle.Root](func(yield func(bundle.Root) bool) {
		yield(bundle.Root{Certificate: []byte("not DER")})
	})
	if _, err := parseRoots(bad); err == nil || !strings.HasPrefix(err.Error(), "loading the embedded Mozilla roots: root 1:") {
		t.Fatalf("parseRoots(bad) = %v", err)
	}
}

// TestMozillaRootsParse: the real bundle parses, and is parsed once.
func TestMozillaRootsParse(t *testing.T) {
	a, err := mozillaRoots()
	if err != nil {
		t.Fatal(err)
	}
	if len(a) < 100 {
		t.Fatalf("%d Mozilla roots, want the whole bundle", len(a))
	}
	b, _ := mozillaRoots()
	if &a[0] != &b[0] {
		t.Error("the bundle was parsed twice")
	}
}

// testCAAndLeaf makes a private CA and a server certificate it issued.
func testCAAndLeaf(t *testing.T) (ca, leaf *x509.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sysroots test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "db.example.com"},
		DNSNames: []string{"db.example.com"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if leaf, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	return ca, leaf
}
