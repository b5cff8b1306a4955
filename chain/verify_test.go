package chain_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// TestCommonNameHonoursNameConstraints: crypto/x509 applies a CA's name
// constraints to SANs only, so a leaf without a dNSName whose CN names a
// host outside a sub-CA's permitted domains passed x509.Verify, and the CN
// fallback then accepted it; OpenSSL (and so libpq's verify-full) refuses
// it with "permitted subtree violation". The proxy must refuse it too, in
// the verifier of every connection and in the decision of a first pin.
func TestCommonNameHonoursNameConstraints(t *testing.T) {
	root := mkCert(t, nil, certSpec{cn: "constraint root", ca: true})
	sub := mkCert(t, root, certSpec{cn: "example.com only", ca: true, permit: []string{"example.com"}})
	excl := mkCert(t, root, certSpec{cn: "not victim.net", ca: true, exclude: []string{"victim.net"}})
	tests := []struct {
		name    string
		issuer  *testpki.Cert
		leaf    certSpec
		host    string
		wantErr string // "" must pass
	}{
		{"no-SAN leaf outside the permitted domain", sub, certSpec{cn: "db.victim.net"}, "db.victim.net", "outside the domains"},
		{"IP-SAN-only leaf outside the permitted domain", sub, certSpec{cn: "db.victim.net", ips: []string{"192.0.2.1"}}, "db.victim.net", "outside the domains"},
		{"wildcard CN outside the permitted domain", sub, certSpec{cn: "*.victim.net"}, "db.victim.net", "outside the domains"},
		{"no-SAN leaf in an excluded domain", excl, certSpec{cn: "db.victim.net"}, "db.victim.net", "must not vouch for"},
		{"control: a permitted SAN", sub, certSpec{cn: "db.victim.net", dns: []string{"db.example.com"}}, "db.example.com", ""},
		{"control: a no-SAN leaf inside the permitted domain", sub, certSpec{cn: "db.example.com"}, "db.example.com", ""},
		{"control: the permitted domain itself", sub, certSpec{cn: "example.com"}, "example.com", ""},
		{"a look-alike suffix is outside the permitted domain", sub, certSpec{cn: "db.notexample.com"}, "db.notexample.com", "outside the domains"},
		{"control: an excluded-only CA vouches for others", excl, certSpec{cn: "db.example.org"}, "db.example.org", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leaf := mkCert(t, tc.issuer, tc.leaf)
			presented := certs(leaf, tc.issuer)
			v := &chain.Verifier{Roots: testpki.Pool(root), ServerName: tc.host}
			_, err := v.Verify(presented)
			_, derr := chain.Decide(&chain.Fetched{Presented: presented}, nil, tc.host, chain.PolicySystem, testpki.Pool(root), nil, time.Now())
			for what, err := range map[string]error{"Verify": err, "Decide": derr} {
				if tc.wantErr == "" {
					if err != nil {
						t.Errorf("%s: %v; want it to pass", what, err)
					}
					continue
				}
				var ve *chain.VerifyError
				if !errors.As(err, &ve) || ve.Kind != chain.KindHostname || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("%s: got %v; want a host-name refusal naming %q", what, err, tc.wantErr)
				}
			}
		})
	}
}

// TestCommonNameConstraintsAnyVerifiedPath: with two verified paths, one
// through a constrained CA and one through an unconstrained one, the CN is
// accepted along the unconstrained path (a trusted CA vouches for it
// without limits), and that path is the one returned.
func TestCommonNameConstraintsAnyVerifiedPath(t *testing.T) {
	rootA := mkCert(t, nil, certSpec{cn: "root A", ca: true})
	rootB := mkCert(t, nil, certSpec{cn: "root B", ca: true})
	key := mkCert(t, nil, certSpec{cn: "k", ca: true}).Key
	subA := mkCert(t, rootA, certSpec{cn: "sub", ca: true, key: key.(*ecdsa.PrivateKey), permit: []string{"example.com"}})
	subB := mkCert(t, rootB, certSpec{cn: "sub", ca: true, key: key.(*ecdsa.PrivateKey)})
	leaf := mkCert(t, subA, certSpec{cn: "db.victim.net"})
	v := &chain.Verifier{Roots: testpki.Pool(rootA, rootB), ServerName: "db.victim.net"}
	path, err := v.Verify(certs(leaf, subA, subB))
	if err != nil {
		t.Fatal(err)
	}
	if got := path[len(path)-1]; !got.Equal(rootB.Cert) {
		t.Fatalf("path ends at %s, want root B (the unconstrained path)", got.Subject)
	}
	v = &chain.Verifier{Roots: testpki.Pool(rootA), ServerName: "db.victim.net"}
	if _, err := v.Verify(certs(leaf, subA, subB)); err == nil {
		t.Fatal("with root A only, the constrained path is the only one: want a refusal")
	}
}

func TestPinnedVerifierReportsIdentityChange(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	v := &chain.Verifier{Roots: testpki.Pool(pki.Root), Pinned: []*x509.Certificate{pki.Root.Cert}, ServerName: "localhost",
		System: testpki.Pool(pki.OtherRoot), PinnedSince: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)}
	if _, err := v.Verify([]*x509.Certificate{pki.Leaf.Cert, pki.Intermediate.Cert}); err != nil {
		t.Fatalf("pinned chain: %v", err)
	}
	_, err = v.Verify([]*x509.Certificate{pki.OtherLeaf.Cert})
	var ve *chain.VerifyError
	if !errors.As(err, &ve) || ve.Kind != chain.KindIdentityChanged {
		t.Fatalf("got %v, want identity changed", err)
	}
	for _, want := range []string{"IDENTITY CHANGED", chain.SPKIHash(pki.Root.Cert), "pinned 2026-01-02", chain.SPKIHash(pki.OtherRoot.Cert), "system trust store"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
	// Under the pinned root, a wrong name is still a name error, not a new identity.
	_, err = v.Verify([]*x509.Certificate{pki.WrongName.Cert, pki.Intermediate.Cert})
	if !errors.As(err, &ve) || ve.Kind != chain.KindHostname {
		t.Fatalf("got %v, want a host-name error", err)
	}
}

// TestAnchorsMustIncludeTheRoot: as libpq (OpenSSL without
// X509_V_FLAG_PARTIAL_CHAIN), a chain must end at a self-signed root in the
// anchors: a CA file holding only the intermediate is refused at load, and
// anchors that hold the intermediate without its root (a pin, a mixed file)
// refuse the chain, naming what to add.
func TestAnchorsMustIncludeTheRoot(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, certs ...*testpki.Cert) string {
		var pem []byte
		for _, c := range certs {
			pem = append(pem, c.CertPEM...)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	if _, _, err := chain.LoadCAFile(write("inter.crt", pki.Intermediate)); err == nil ||
		!strings.Contains(err.Error(), "no self-signed root CA certificate") || !strings.Contains(err.Error(), "add the root CA certificate") {
		t.Fatalf("an intermediate-only CA file: %v, want a refusal that says to add the root", err)
	}
	if _, _, err := chain.LoadCAFile(write("both.crt", pki.Intermediate, pki.Root)); err != nil {
		t.Fatalf("intermediate and root: %v", err)
	}
	tests := []struct {
		name    string
		anchors []*testpki.Cert
		wantErr string
	}{
		{name: "root", anchors: []*testpki.Cert{pki.Root}},
		{name: "intermediate and root", anchors: []*testpki.Cert{pki.Intermediate, pki.Root}},
		{name: "intermediate alone (a pin)", anchors: []*testpki.Cert{pki.Intermediate},
			wantErr: `the chain ends at "CN=pgverifyproxy test intermediate CA,O=pgverifyproxy tests" in the trust anchors, which is not a self-signed root CA`},
		{name: "intermediate and an unrelated root", anchors: []*testpki.Cert{pki.Intermediate, pki.OtherRoot},
			wantErr: "add the root CA certificate that issued it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := &chain.Verifier{Roots: testpki.Pool(tc.anchors...), ServerName: "localhost"}
			path, err := v.Verify([]*x509.Certificate{pki.Leaf.Cert, pki.Intermediate.Cert})
			if tc.wantErr == "" {
				if err != nil || !path[len(path)-1].Equal(pki.Root.Cert) {
					t.Fatalf("got %v, %v; want a chain to the root", path, err)
				}
				return
			}
			var pc *chain.PartialChainError
			if err == nil || !errors.As(err, &pc) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v; want a PartialChainError with %q", err, tc.wantErr)
			}
		})
	}
}
