package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts PostgreSQL")
	}
	p, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(t.TempDir(), "root.crt")
	if err := testpki.WritePEMFile(rootFile, p.Root.CertPEM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := StartCluster(ctx, ClusterOptions{
		ServerCertPEM: p.Leaf.ChainPEM(p.Intermediate),
		ServerKeyPEM:  p.Leaf.KeyPEM,
		Logf:          t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster started in %v", time.Since(start).Round(time.Millisecond))
	defer func() {
		if t.Failed() {
			t.Logf("server log tail:\n%s", c.LogTail(40))
		}
		c.Stop()
	}()
	if c.Addr() != fmt.Sprintf("127.0.0.1:%d", c.Port) {
		t.Errorf("Addr() = %q", c.Addr())
	}

	connect := func(user, password, ssl string) error {
		dsn := fmt.Sprintf("host=localhost port=%d user=%s password=%s dbname=postgres %s", c.Port, user, password, ssl)
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			return fmt.Errorf("SELECT 1: %v, %d", err, one)
		}
		return nil
	}
	verifyFull := "sslmode=verify-full sslrootcert=" + rootFile

	for _, u := range [][2]string{{ScramUser, ScramPassword}, {MD5User, MD5Password}} {
		if err := connect(u[0], u[1], verifyFull); err != nil {
			t.Errorf("%s over verify-full: %v", u[0], err)
		}
		if err := connect(u[0], u[1], "sslmode=disable"); err == nil {
			t.Errorf("%s: plaintext connection accepted", u[0])
		} else {
			t.Logf("%s plaintext rejected: %v", u[0], err)
		}
	}
	if err := connect(ScramUser, "wrong", verifyFull); err == nil {
		t.Error("wrong password accepted")
	}

	admin, err := pgx.Connect(ctx, c.AdminConnString())
	if err != nil {
		t.Fatal(err)
	}
	for user, pattern := range map[string]string{MD5User: "md5%", ScramUser: "SCRAM-SHA-256$%"} {
		var ok bool
		if err := admin.QueryRow(ctx, "SELECT rolpassword LIKE $1 FROM pg_authid WHERE rolname = $2", pattern, user).Scan(&ok); err != nil || !ok {
			t.Errorf("%s password not stored as %s: %v %v", user, pattern, ok, err)
		}
	}
	admin.Close(ctx)
	if err := c.Exec(ctx, "DO $$ BEGIN IF NOT (SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'md5_user') THEN RAISE EXCEPTION 'md5_user password is not md5'; END IF; END $$"); err != nil {
		t.Error(err)
	}
	if err := c.Exec(ctx, "SELECT no_such_column"); err == nil {
		t.Error("Exec of bad SQL succeeded")
	}

	start = time.Now()
	if err := c.SetServerCert(ctx, p.OtherLeaf.ChainPEM(), p.OtherLeaf.KeyPEM); err != nil {
		t.Fatal(err)
	}
	t.Logf("SetServerCert took %v", time.Since(start).Round(time.Millisecond))
	if err := connect(ScramUser, ScramPassword, verifyFull); err == nil {
		t.Error("verify-full accepted OtherLeaf")
	} else {
		t.Logf("verify-full with OtherLeaf: %v", err)
	}
	if err := connect(ScramUser, ScramPassword, "sslmode=require"); err != nil {
		t.Errorf("sslmode=require with OtherLeaf: %v", err)
	}
	if err := c.SetServerCert(ctx, p.Leaf.ChainPEM(p.Intermediate), p.Leaf.KeyPEM); err != nil {
		t.Fatal(err)
	}
	if err := connect(ScramUser, ScramPassword, verifyFull); err != nil {
		t.Errorf("verify-full after restoring Leaf: %v", err)
	}
	if err := c.SetServerCert(ctx, p.Leaf.ChainPEM(p.Intermediate), p.OtherLeaf.KeyPEM); err == nil {
		t.Error("SetServerCert with a mismatched key succeeded")
	} else {
		t.Logf("mismatched key: %v", err)
	}
	if err := connect(ScramUser, ScramPassword, verifyFull); err != nil {
		t.Errorf("verify-full after the rejected reload: %v", err)
	}

	if tail := c.LogTail(5); tail == "" {
		t.Error("LogTail is empty")
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("Dir %s still there after Stop: %v", c.Dir, err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestStartClusterErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := StartCluster(ctx, ClusterOptions{}); err == nil {
		t.Error("StartCluster without a certificate succeeded")
	}
	if testing.Short() {
		t.Skip("-short: the rest starts PostgreSQL (with a setting it must refuse)")
	}
	p, err := testpki.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	_, err = StartCluster(ctx, ClusterOptions{
		ServerCertPEM: p.Leaf.ChainPEM(p.Intermediate),
		ServerKeyPEM:  p.Leaf.KeyPEM,
		ExtraConf:     "no_such_setting_xyz = 1",
	})
	if err == nil {
		t.Fatal("StartCluster with a bad setting succeeded")
	}
	t.Logf("expected failure: %v", err)
}
