package chain_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// TestLiveTrustFollowsARootChange: a live-trust route verifies against the
// system store at each connection and reports (never refuses) a change of
// root, while a pinned route refuses the same change.
func TestLiveTrustFollowsARootChange(t *testing.T) {
	cs := newCrossSigned(t)
	var changes []string
	live := &chain.LiveTrust{System: testpki.Pool(cs.rootA, cs.rootB), OnRootChange: func(from, to *x509.Certificate) {
		name := "start"
		if from != nil {
			name = from.Subject.CommonName
		}
		changes = append(changes, name+" -> "+to.Subject.CommonName)
	}}
	pinned := &chain.Verifier{Roots: testpki.Pool(cs.rootA), Pinned: certs(cs.rootA), ServerName: "db.example.com",
		System: testpki.Pool(cs.rootA, cs.rootB)}
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
	live := &chain.LiveTrust{System: testpki.Pool(cs.rootA, cs.rootB), OnRootChange: func(from, to *x509.Certificate) { reports++ }}
	dial := func(cert tls.Certificate) error {
		s, err := testpki.StartFakeUpstream(testpki.AnswerTLS(cert, nil))
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
