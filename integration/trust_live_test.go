//go:build linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// TestLiveTrustFollowsARootChangeAPinRefusesIt: one proxy, two routes to
// the same server, one pinned (the default trust) and one with trust: live.
// The provider moves the server to a chain under another public root. The
// live route goes on serving, logs the change, counts it and shows it in
// /readyz; the pinned route refuses with IDENTITY CHANGED naming both fixes,
// and /readyz shows that.
func TestLiveTrustFollowsARootChangeAPinRefusesIt(t *testing.T) {
	restoreClusterCert(t)
	rootA, rootB := mustCA(t, nil, "live root A"), mustCA(t, nil, "live root B")
	interA, interB := mustCA(t, rootA, "live intermediate A"), mustCA(t, rootB, "live intermediate B")
	leafA, leafB := mustLeaf(t, interA), mustLeaf(t, interB)
	serveCert(t, leafA.ChainPEM(interA), leafA.KeyPEM)
	// Both roots are in the "system" trust store of the proxy.
	sysTrust := "SSL_CERT_FILE=" + writeBundle(t, "system.pem", rootA, rootB)

	ports := freePorts(t, 3)
	pinnedPort, livePort, adminPort := ports[0], ports[1], ports[2]
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, cfg, fmt.Sprintf(`pin_dir: %s
admin: %s
ready_window: 1m
routes:
  - name: pinned
    listen: [127.0.0.1:%d]
    upstream: localhost:%d
  - name: live
    listen: [127.0.0.1:%d]
    upstream: localhost:%d
    trust: live
`, t.TempDir(), admin, pinnedPort, cluster.Port, livePort, cluster.Port))
	p := startCLIArgs(t, []string{sysTrust}, "run", "--config", cfg)
	waitForLog(t, p, "admin endpoint")

	query := func(port int) psqlResult {
		return runPsql(t, port, "sslmode=require user="+harness.MD5User, harness.MD5Password, "select 'served'")
	}
	for _, port := range []int{pinnedPort, livePort} {
		if r := query(port); r.code != 0 || r.out != "served" {
			t.Fatalf("before the change, port %d: exit %d %q %q", port, r.code, r.out, r.err)
		}
	}
	if n := scrape(t, admin)[`pgverifyproxy_upstream_root_changes_total{route="live"}`]; n != 0 {
		t.Fatalf("root changes before the change: %v", n)
	}

	// The provider's planned change of CA.
	serveCert(t, leafB.ChainPEM(interB), leafB.KeyPEM)

	if r := query(livePort); r.code != 0 || r.out != "served" {
		t.Fatalf("trust: live after the change of root: exit %d %q %q", r.code, r.out, r.err)
	}
	waitForLog(t, p, "the upstream's root CA changed")
	if n := scrape(t, admin)[`pgverifyproxy_upstream_root_changes_total{route="live"}`]; n != 1 {
		t.Errorf("root changes counted: %v, want 1", n)
	}
	r := query(pinnedPort)
	if r.code == 0 {
		t.Fatal("the pinned route served a chain to another root")
	}
	for _, want := range []string{"THE UPSTREAM'S IDENTITY CHANGED", chain.SPKIHash(rootB.Cert), "--repin", "trust: live"} {
		if !strings.Contains(r.err, want) {
			t.Errorf("the pinned route's refusal lacks %q:\n%s", want, r.err)
		}
	}
	var body string
	waitFor(t, "/readyz to show both routes' state", func() bool {
		_, body = httpGet(t, "http://"+admin+"/readyz")
		return strings.Contains(body, "IDENTITY CHANGED") && strings.Contains(body, "root CA changed")
	})
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		switch {
		case strings.Contains(line, " live:") && (!strings.HasPrefix(line, "ok") || !strings.Contains(line, `to "CN=live root B`)):
			t.Errorf("/readyz line of the live route: %q", line)
		case strings.Contains(line, " pinned:") && (!strings.HasPrefix(line, "FAIL") || !strings.Contains(line, "--repin") || !strings.Contains(line, "trust: live")):
			t.Errorf("/readyz line of the pinned route: %q", line)
		}
	}
}

// TestPinDirOthersCanWriteIsRefused: a pin directory another local user can
// write to is refused by chain fetch and by the proxy, each naming the fix,
// and nothing is pinned there.
func TestPinDirOthersCanWriteIsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	sysTrust := "SSL_CERT_FILE=" + rootFile
	out, code := runCLI(t, []string{sysTrust}, "chain", "fetch", "--upstream", upstream, "--pin-dir", dir)
	if code == 0 || !strings.Contains(out, "writable by group or others") || !strings.Contains(out, "chmod 700 "+dir) {
		t.Fatalf("chain fetch into a world-writable pin directory: exit %d\n%s", code, out)
	}
	p := startCLI(t, []string{sysTrust}, "--upstream", upstream, "--pin-dir", dir)
	r := runPsql(t, p.port, "sslmode=disable user="+harness.MD5User, harness.MD5Password, "select 1")
	if r.code == 0 || !strings.Contains(r.err, "chmod 700 "+dir) {
		t.Fatalf("the proxy with a world-writable pin directory: exit %d %q", r.code, r.err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("%d files were written into the world-writable pin directory", len(entries))
	}
}
