package chain_test

import (
	"crypto/ecdsa"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
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
		issuer  *harness.Cert
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
			v := &chain.Verifier{Roots: harness.Pool(root), ServerName: tc.host}
			_, err := v.Verify(presented)
			_, derr := chain.Decide(&chain.Fetched{Presented: presented}, nil, tc.host, chain.PolicySystem, harness.Pool(root), nil, time.Now())
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
	v := &chain.Verifier{Roots: harness.Pool(rootA, rootB), ServerName: "db.victim.net"}
	path, err := v.Verify(certs(leaf, subA, subB))
	if err != nil {
		t.Fatal(err)
	}
	if got := path[len(path)-1]; !got.Equal(rootB.Cert) {
		t.Fatalf("path ends at %s, want root B (the unconstrained path)", got.Subject)
	}
	v = &chain.Verifier{Roots: harness.Pool(rootA), ServerName: "db.victim.net"}
	if _, err := v.Verify(certs(leaf, subA, subB)); err == nil {
		t.Fatal("with root A only, the constrained path is the only one: want a refusal")
	}
}

// TestPinSetOnlyAnchorsThatVouchForTheName: the issuing CA is cross-signed
// by a root whose path constrains it to example.com and by an unconstrained
// root; a leaf without a dNSName names db.victim.net by its CN. Only the
// anchor along which the name holds is pinned.
func TestPinSetOnlyAnchorsThatVouchForTheName(t *testing.T) {
	r1 := mkCert(t, nil, certSpec{cn: "constrained root", ca: true})
	r2 := mkCert(t, nil, certSpec{cn: "open root", ca: true})
	k1 := mkCert(t, r1, certSpec{cn: "issuing CA", ca: true, permit: []string{"example.com"}})
	k2 := mkCert(t, r2, certSpec{cn: "issuing CA", ca: true, key: k1.Key.(*ecdsa.PrivateKey)})
	leaf := mkCert(t, k1, certSpec{cn: "db.victim.net"})
	dec, err := chain.Decide(&chain.Fetched{Presented: certs(leaf, k1, k2)}, nil, "db.victim.net", chain.PolicySystem, harness.Pool(r1, r2), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Anchors) != 1 || !dec.Anchors[0].Equal(r2.Cert) {
		t.Fatalf("pinned %s; want only the open root", subjects(dec.Anchors))
	}
	for _, c := range dec.Intermediates {
		if c.Equal(k1.Cert) {
			t.Errorf("the constrained path's intermediate is kept as a hint")
		}
	}
}
