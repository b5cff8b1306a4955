//go:build linux

package integration

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// pinCluster writes, in dir, the cluster's pin (localhost:PORT) with anchor
// as its only trust anchor, the way chain fetch --repin replaces a pin.
func pinCluster(t *testing.T, dir string, anchor *testpki.Cert) {
	t.Helper()
	now := time.Now()
	p := &chain.Pin{Host: "localhost", Port: cluster.Port, Policy: string(chain.PolicySystem),
		Anchors: []*x509.Certificate{anchor.Cert}, FirstSeen: now, Updated: now}
	if _, err := (&chain.PinStore{Dir: dir}).Save(p); err != nil {
		t.Fatal(err)
	}
}

// TestPrewarmRepinDropsWarmConnections: connections pre-dialled and
// verified under a pin are not handed out once the pin is replaced. The
// new pin names an anchor the server's chain does not lead to, so a client
// must be refused with the identity-changed error even though two warm
// connections, verified under the old pin, were waiting.
func TestPrewarmRepinDropsWarmConnections(t *testing.T) {
	pinDir := t.TempDir()
	pinCluster(t, pinDir, pki.Root)
	ports := freePorts(t, 1)
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	// A long ready window: one readiness probe at start-up, none after,
	// so the handshake count is the pool's dials plus one.
	p := startCLI(t, nil, "--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--pin-dir", pinDir,
		"--prewarm", "2", "--admin", admin, "--ready-window", "10m")
	dials := func() float64 {
		return scrape(t, admin)[`pgverifyproxy_upstream_handshake_seconds_count{result="ok",route="default"}`]
	}
	query := func(what string) psqlResult {
		t.Helper()
		return runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select '"+what+"'")
	}
	warmSessions := func() int { return strings.Count(p.log(), "prewarmed=true") }
	waitFor(t, "the pool is full (two pre-dials and the readiness probe)", func() bool { return dials() >= 3 })

	// Positive control: with the pin unchanged, a client is served over a
	// pre-dialled connection.
	if r := query("warm"); r.code != 0 || r.out != "warm" {
		t.Fatalf("psql through a pre-dialled connection: exit %d %q %q\n%s", r.code, r.out, r.err, p.log())
	}
	waitForLog(t, p, "prewarmed=true")
	waitFor(t, "the pool is refilled", func() bool { return dials() >= 4 })

	// The pin is replaced by one for another anchor while two warm
	// connections verified under the old one wait.
	pinCluster(t, pinDir, pki.OtherRoot)
	r := query("stale")
	if r.code == 0 || !strings.Contains(r.err, "IDENTITY CHANGED") || !strings.Contains(r.err, chain.SPKIHash(pki.OtherRoot.Cert)) {
		t.Fatalf("after the repin: exit %d out %q err %q; want the identity-changed refusal, not a session over a connection verified under the old pin\n%s",
			r.code, r.out, r.err, p.log())
	}
	if n := warmSessions(); n != 1 {
		t.Fatalf("%d sessions over pre-dialled connections, want only the control's:\n%s", n, p.log())
	}

	// Pinned back: the pool fills under the pin in force and serves again.
	before := dials()
	pinCluster(t, pinDir, pki.Root)
	waitFor(t, "the pool refills under the restored pin", func() bool { return dials() >= before+2 })
	if r := query("warm again"); r.code != 0 || r.out != "warm again" {
		t.Fatalf("psql after pinning back: exit %d %q %q\n%s", r.code, r.out, r.err, p.log())
	}
	waitFor(t, "the session runs over a connection pre-dialled under the restored pin", func() bool { return warmSessions() == 2 })
	if strings.Contains(p.log(), "level=ERROR") {
		t.Errorf("errors in the log:\n%s", p.log())
	}
}
