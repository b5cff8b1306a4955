package harness

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// TestStandby: a streaming standby from pg_basebackup -R, on its own
// loopback address with its own certificate, replays the primary's writes,
// refuses writes while in recovery, and accepts them once promoted.
func TestStandby(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts PostgreSQL twice")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(ip string) *testpki.Cert {
		c, err := testpki.IssueLeaf(p.Intermediate, testpki.LeafOptions{CommonName: ip, IPs: []net.IP{net.ParseIP(ip)}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pl, sl := leaf("127.0.0.1"), leaf("127.0.0.2")
	primary, err := StartCluster(ctx, ClusterOptions{ServerCertPEM: pl.ChainPEM(p.Intermediate), ServerKeyPEM: pl.KeyPEM, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = primary.Stop() })
	if err := primary.Exec(ctx, "CREATE TABLE replicated (v int); INSERT INTO replicated VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	standby, err := primary.StartStandby(ctx, StandbyOptions{Host: "127.0.0.2", ServerCertPEM: sl.ChainPEM(p.Intermediate), ServerKeyPEM: sl.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standby.Stop() })
	if standby.Addr() == primary.Addr() || standby.Host != "127.0.0.2" {
		t.Fatalf("standby on %s, primary on %s", standby.Addr(), primary.Addr())
	}
	query := func(c *Cluster, sql string) (string, error) {
		conn, err := pgx.Connect(ctx, c.AdminConnString())
		if err != nil {
			return "", err
		}
		defer conn.Close(context.Background())
		var s string
		err = conn.QueryRow(ctx, sql).Scan(&s)
		return s, err
	}
	if got, err := query(standby, "select pg_is_in_recovery()::text || ' ' || (select v from replicated)::text"); err != nil || got != "true 42" {
		t.Fatalf("standby: %q, %v; want in recovery with the primary's row", got, err)
	}
	if err := standby.Exec(ctx, "INSERT INTO replicated VALUES (1)"); err == nil {
		t.Fatal("the standby accepted a write")
	}
	if err := primary.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := standby.Exec(ctx, "INSERT INTO replicated VALUES (43)"); err != nil {
		t.Fatalf("the promoted standby refused a write: %v", err)
	}
	if got, err := query(standby, "select pg_is_in_recovery()::text"); err != nil || got != "false" {
		t.Fatalf("after promote: %q, %v", got, err)
	}
}
