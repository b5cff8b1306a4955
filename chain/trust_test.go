package chain_test

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

func TestDecide(t *testing.T) {
	pki, err := harness.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	system := harness.Pool(pki.OtherRoot) // "public" roots: not our test root
	fetched := func(certs ...*harness.Cert) *chain.Fetched {
		f := &chain.Fetched{}
		for _, c := range certs {
			f.Presented = append(f.Presented, c.Cert)
		}
		return f
	}
	tests := []struct {
		name       string
		f          *chain.Fetched
		extra      []*harness.Cert
		policy     chain.Policy
		system     *x509.CertPool
		ca         *x509.CertPool
		wantAnchor *harness.Cert
		wantPolicy chain.Policy
		wantErr    string
		retryable  bool
	}{
		{name: "public chain pins its root", f: fetched(pki.Leaf, pki.Intermediate), system: harness.Pool(pki.Root), wantAnchor: pki.Root, wantPolicy: chain.PolicySystem},
		{name: "leaf only, intermediate from AIA", f: fetched(pki.Leaf), extra: []*harness.Cert{pki.Intermediate}, system: harness.Pool(pki.Root), wantAnchor: pki.Root, wantPolicy: chain.PolicySystem},
		{name: "private CA refused", f: fetched(pki.Leaf, pki.Intermediate), system: system, wantErr: "not in the system trust store"},
		{name: "private CA with tofu pins the top presented", f: fetched(pki.Leaf, pki.Intermediate), system: system, policy: chain.PolicyTOFU, wantAnchor: pki.Intermediate, wantPolicy: chain.PolicyTOFU},
		{name: "private CA with its root fetched, tofu pins the root", f: fetched(pki.Leaf, pki.Intermediate), extra: []*harness.Cert{pki.Root}, system: system, policy: chain.PolicyTOFU, wantAnchor: pki.Root, wantPolicy: chain.PolicyTOFU},
		{name: "private CA with --ca-file", f: fetched(pki.Leaf, pki.Intermediate), system: system, ca: harness.Pool(pki.Root), wantAnchor: pki.Root, wantPolicy: chain.PolicyCAFile},
		{name: "self-signed refused, retryable", f: fetched(pki.SelfSigned), system: system, wantErr: "self-signed certificate", retryable: true},
		{name: "self-signed with tofu", f: fetched(pki.SelfSigned), system: system, policy: chain.PolicyTOFU, wantAnchor: pki.SelfSigned, wantPolicy: chain.PolicyTOFU},
		{name: "expired refused even with tofu", f: fetched(pki.Expired, pki.Intermediate), system: harness.Pool(pki.Root), policy: chain.PolicyTOFU, wantErr: "expired"},
		{name: "wrong name refused", f: fetched(pki.WrongName, pki.Intermediate), system: harness.Pool(pki.Root), wantErr: "not valid for host name"},
		{name: "wrong name refused with tofu", f: fetched(pki.WrongName, pki.Intermediate), system: system, policy: chain.PolicyTOFU, wantErr: "not valid for host name"},
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

func TestPinnedVerifierReportsIdentityChange(t *testing.T) {
	pki, err := harness.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	v := &chain.Verifier{Roots: harness.Pool(pki.Root), Pinned: []*x509.Certificate{pki.Root.Cert}, ServerName: "localhost",
		System: harness.Pool(pki.OtherRoot), PinnedSince: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)}
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
