package chain_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

func TestDecide(t *testing.T) {
	pki, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	system := testpki.Pool(pki.OtherRoot) // "public" roots: not our test root
	fetched := func(certs ...*testpki.Cert) *chain.Fetched {
		f := &chain.Fetched{}
		for _, c := range certs {
			f.Presented = append(f.Presented, c.Cert)
		}
		return f
	}
	tests := []struct {
		name       string
		f          *chain.Fetched
		extra      []*testpki.Cert
		policy     chain.Policy
		system     *x509.CertPool
		ca         *x509.CertPool
		wantAnchor *testpki.Cert
		wantPolicy chain.Policy
		wantErr    string
		retryable  bool
	}{
		{name: "public chain pins its root", f: fetched(pki.Leaf, pki.Intermediate), system: testpki.Pool(pki.Root), wantAnchor: pki.Root, wantPolicy: chain.PolicySystem},
		{name: "leaf only, intermediate from AIA", f: fetched(pki.Leaf), extra: []*testpki.Cert{pki.Intermediate}, system: testpki.Pool(pki.Root), wantAnchor: pki.Root, wantPolicy: chain.PolicySystem},
		{name: "private CA refused", f: fetched(pki.Leaf, pki.Intermediate), system: system, wantErr: "not in the system trust store"},
		// libpq's verify-full needs the root: an intermediate is never
		// pinned (it would make a pin and a root.crt libpq refuses).
		{name: "private CA, an intermediate on top, not pinned with tofu", f: fetched(pki.Leaf, pki.Intermediate), system: system, policy: chain.PolicyTOFU, wantErr: "pins a root CA, as libpq's verify-full needs one, never an intermediate"},
		{name: "private CA sending its whole chain, tofu pins the root", f: fetched(pki.Leaf, pki.Intermediate, pki.Root), system: system, policy: chain.PolicyTOFU, wantAnchor: pki.Root, wantPolicy: chain.PolicyTOFU},
		{name: "private CA with its root fetched, tofu pins the root", f: fetched(pki.Leaf, pki.Intermediate), extra: []*testpki.Cert{pki.Root}, system: system, policy: chain.PolicyTOFU, wantAnchor: pki.Root, wantPolicy: chain.PolicyTOFU},
		{name: "private CA with --ca-file", f: fetched(pki.Leaf, pki.Intermediate), system: system, ca: testpki.Pool(pki.Root), wantAnchor: pki.Root, wantPolicy: chain.PolicyCAFile},
		{name: "self-signed refused, retryable", f: fetched(pki.SelfSigned), system: system, wantErr: "self-signed certificate", retryable: true},
		{name: "self-signed with tofu", f: fetched(pki.SelfSigned), system: system, policy: chain.PolicyTOFU, wantAnchor: pki.SelfSigned, wantPolicy: chain.PolicyTOFU},
		{name: "expired refused even with tofu", f: fetched(pki.Expired, pki.Intermediate), system: testpki.Pool(pki.Root), policy: chain.PolicyTOFU, wantErr: "expired"},
		{name: "wrong name refused", f: fetched(pki.WrongName, pki.Intermediate), system: testpki.Pool(pki.Root), wantErr: "not valid for host name"},
		{name: "wrong name refused with tofu", f: fetched(pki.WrongName, pki.Intermediate, pki.Root), system: system, policy: chain.PolicyTOFU, wantErr: "not valid for host name"},
		// A private leaf sent without its issuer: tofu would pin the leaf,
		// and the server's next renewal would refuse every connection.
		{name: "leaf without its issuer is not pinned with tofu", f: fetched(pki.Leaf), system: system, policy: chain.PolicyTOFU, wantErr: "pins a CA, never a server certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var extra []*x509.Certificate
			for _, c := range tc.extra {
				extra = append(extra, c.Cert)
			}
			policy := tc.policy
			if policy == "" {
				policy = chain.PolicySystem
			}
			dec, err := chain.Decide(tc.f, extra, "localhost", policy, tc.system, tc.ca, time.Now())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want error with %q", dec, err, tc.wantErr)
				}
				if tc.retryable {
					var te *chain.TrustError
					if !errors.As(err, &te) || !te.Retryable || !strings.Contains(te.Hint, "--wait") {
						t.Fatalf("want a retryable TrustError whose hint names --wait, got %#v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !dec.Anchor.Equal(tc.wantAnchor.Cert) || dec.Policy != tc.wantPolicy {
				t.Fatalf("pinned %q (%s), want %q (%s)", dec.Anchor.Subject, dec.Policy, tc.wantAnchor.Cert.Subject, tc.wantPolicy)
			}
		})
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
	dec, err := chain.Decide(&chain.Fetched{Presented: certs(leaf, k1, k2)}, nil, "db.victim.net", chain.PolicySystem, testpki.Pool(r1, r2), nil, time.Now())
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

// TestPinSetSurvivesASwitchBetweenCrossSignedRoots: a chain that verifies
// along two paths pins both anchors, so a server that later presents only
// the other path has not changed its identity; a third root still has.
func TestPinSetSurvivesASwitchBetweenCrossSignedRoots(t *testing.T) {
	cs := newCrossSigned(t)
	system := testpki.Pool(cs.rootA, cs.rootB)
	dec, err := chain.Decide(&chain.Fetched{Presented: certs(cs.leaf, cs.interA, cs.interB)}, nil, "db.example.com",
		chain.PolicySystem, system, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Anchors) != 2 || !dec.Anchors[0].Equal(dec.Anchor) {
		t.Fatalf("pinned %d anchors (%v); want both roots, the chain's own first", len(dec.Anchors), subjects(dec.Anchors))
	}
	got := subjects(dec.Anchors)
	if !strings.Contains(got, "root A") || !strings.Contains(got, "root B") {
		t.Fatalf("anchors %s; want root A and root B", got)
	}
	pin := chain.PinFromDecision(&chain.Dialer{Host: "db.example.com", Port: 5432}, dec, time.Now())
	if len(pin.Anchors) != 2 {
		t.Fatalf("the pin holds %d anchors, want 2", len(pin.Anchors))
	}
	other := mkCert(t, nil, certSpec{cn: "root C", ca: true})
	v := &chain.Verifier{Roots: pin.Pool(), Intermediates: pin.Intermediates, Pinned: pin.Anchors, ServerName: "db.example.com",
		System: testpki.Pool(cs.rootA, cs.rootB, other)}
	for _, tc := range []struct {
		name      string
		presented []*x509.Certificate
		wantRoot  *testpki.Cert
	}{
		{"the path through root A", certs(cs.leaf, cs.interA), cs.rootA},
		{"switched to the path through root B", certs(cs.leaf, cs.interB), cs.rootB},
	} {
		path, err := v.Verify(tc.presented)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !path[len(path)-1].Equal(tc.wantRoot.Cert) {
			t.Errorf("%s: verified to %s", tc.name, path[len(path)-1].Subject)
		}
	}
	// A chain to another root (a new issuing CA too: the pinned
	// intermediates would still chain a leaf of the old one).
	interC := mkCert(t, other, certSpec{cn: "issuing CA", ca: true})
	_, err = v.Verify(certs(mkCert(t, interC, certSpec{cn: "db.example.com", dns: []string{"db.example.com"}}), interC))
	var ve *chain.VerifyError
	if !errors.As(err, &ve) || ve.Kind != chain.KindIdentityChanged {
		t.Fatalf("a third root: %v; want identity changed", err)
	}
	for _, want := range []string{"--repin", "trust: live"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the identity-changed refusal does not name %q: %v", want, err)
		}
	}
}

func subjects(cs []*x509.Certificate) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.Subject.CommonName)
	}
	return strings.Join(s, ", ")
}
