package chain_test

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// crossSigned is a CA whose one key is vouched for by two roots, as Let's
// Encrypt's ISRG Root X1 was by itself and by DST Root CA X3.
type crossSigned struct {
	rootA, rootB, interA, interB, leaf *harness.Cert
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

// TestPinSetSurvivesASwitchBetweenCrossSignedRoots: a chain that verifies
// along two paths pins both anchors, so a server that later presents only
// the other path has not changed its identity; a third root still has.
func TestPinSetSurvivesASwitchBetweenCrossSignedRoots(t *testing.T) {
	cs := newCrossSigned(t)
	system := harness.Pool(cs.rootA, cs.rootB)
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
		System: harness.Pool(cs.rootA, cs.rootB, other)}
	for _, tc := range []struct {
		name      string
		presented []*x509.Certificate
		wantRoot  *harness.Cert
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

// TestLiveTrustFollowsARootChange: a live-trust route verifies against the
// system store at each connection and reports (never refuses) a change of
// root, while a pinned route refuses the same change.
func TestLiveTrustFollowsARootChange(t *testing.T) {
	cs := newCrossSigned(t)
	var changes []string
	live := &chain.LiveTrust{System: harness.Pool(cs.rootA, cs.rootB), OnRootChange: func(from, to *x509.Certificate) {
		name := "start"
		if from != nil {
			name = from.Subject.CommonName
		}
		changes = append(changes, name+" -> "+to.Subject.CommonName)
	}}
	pinned := &chain.Verifier{Roots: harness.Pool(cs.rootA), Pinned: certs(cs.rootA), ServerName: "db.example.com",
		System: harness.Pool(cs.rootA, cs.rootB)}
	steps := []struct {
		presented   []*x509.Certificate
		pinnedKind  chain.Kind // 0: passes
		wantChanges int
	}{
		{certs(cs.leaf, cs.interA), 0, 1}, // the first root, reported as such
		{certs(cs.leaf, cs.interA), 0, 1},
		{certs(cs.leaf, cs.interB), chain.KindIdentityChanged, 2},
		{certs(cs.leaf, cs.interB), chain.KindIdentityChanged, 2},
		// Back to a root seen before: servers alternating between two
		// CAs are reported once, not at every connection.
		{certs(cs.leaf, cs.interA), 0, 2},
	}
	for i, s := range steps {
		v, err := live.Verifier(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		v.ServerName = "db.example.com"
		path, err := v.Verify(s.presented)
		if err != nil {
			t.Fatalf("step %d: live trust refused: %v", i, err)
		}
		live.Verified(path) // as the Dialer does once the handshake completed
		if len(changes) != s.wantChanges {
			t.Fatalf("step %d: %d root changes reported (%v), want %d", i, len(changes), changes, s.wantChanges)
		}
		_, err = pinned.Verify(s.presented)
		var ve *chain.VerifyError
		switch {
		case s.pinnedKind == 0 && err != nil:
			t.Fatalf("step %d: pinned route refused: %v", i, err)
		case s.pinnedKind != 0 && (!errors.As(err, &ve) || ve.Kind != s.pinnedKind):
			t.Fatalf("step %d: pinned route: %v, want %v", i, err, s.pinnedKind)
		}
	}
	if changes[0] != "start -> root A" || changes[1] != "root A -> root B" || !live.LastRoot().Equal(cs.rootA.Cert) {
		t.Errorf("changes %v, last root %s", changes, live.LastRoot().Subject)
	}
	// Live trust is still verify-full: another name, or a root outside the
	// system store, is refused.
	v, _ := live.Verifier(t.Context())
	v.ServerName = "other.example.com"
	if _, err := v.Verify(certs(cs.leaf, cs.interA)); err == nil {
		t.Error("live trust accepted a certificate for another name")
	}
	rogue := mkCert(t, nil, certSpec{cn: "rogue", ca: true})
	v.ServerName = "db.example.com"
	if _, err := v.Verify(certs(mkCert(t, rogue, certSpec{cn: "db.example.com", dns: []string{"db.example.com"}}))); err == nil {
		t.Error("live trust accepted a root outside the system store")
	}
}

func subjects(cs []*x509.Certificate) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.Subject.CommonName)
	}
	return strings.Join(s, ", ")
}

// TestLiveTrustIgnoresAReplayedChain: a man in the middle can present any
// valid public chain for the name without its key. Go calls the
// verification before the server proves it holds the key, so a change of
// root must be recorded only once the handshake completed: a replayed
// chain fails the handshake and changes nothing.
func TestLiveTrustIgnoresAReplayedChain(t *testing.T) {
	cs := newCrossSigned(t)
	leafB := mkCert(t, cs.interB, certSpec{cn: "localhost", dns: []string{"localhost"}})
	leafA := mkCert(t, cs.interA, certSpec{cn: "localhost", dns: []string{"localhost"}})
	var reports int
	live := &chain.LiveTrust{System: harness.Pool(cs.rootA, cs.rootB), OnRootChange: func(from, to *x509.Certificate) { reports++ }}
	dial := func(cert tls.Certificate) error {
		s, err := harness.StartFakeUpstream(harness.AnswerTLS(cert, nil))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		d := &chain.Dialer{Host: "localhost", Port: s.Port, Trust: live, ConnectTimeout: 10 * time.Second}
		c, err := d.Dial(t.Context())
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(leafA.TLSCertificate(cs.interA)); err != nil {
		t.Fatal(err)
	}
	// Root B's chain, replayed with another key than its leaf's.
	replayed := leafB.TLSCertificate(cs.interB)
	replayed.PrivateKey = leafA.Key
	for range 3 {
		if err := dial(replayed); err == nil {
			t.Fatal("a handshake with a replayed chain succeeded")
		}
	}
	if reports != 1 || !live.LastRoot().Equal(cs.rootA.Cert) {
		t.Fatalf("after 3 replayed chains: %d reports, last root %s; want 1 (the first root) and root A", reports, live.LastRoot().Subject)
	}
}
