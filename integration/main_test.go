//go:build linux

// Package integration runs pgverifyproxy against a real PostgreSQL server
// with TLS, started by the tests, and real clients (psql/libpq, pgx).
package integration

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// Shared by every test of the package: one PKI, one cluster, one binary.
var (
	pki      *testpki.PKI
	cluster  *harness.Cluster
	workDir  string // temp dir for files the tests write
	rootFile string // PEM of pki.Root
	binPath  string // the pgverifyproxy binary built for CLI tests
)

// TestMain starts what every test shares. Under -short (the unit tests
// only: go test -short ./...) it runs nothing, so that no PostgreSQL, psql
// or client of the matrix is needed; without -short a missing one fails.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("integration: skipped under -short: every test here needs PostgreSQL, psql and the clients of the matrix")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var err error
	if workDir, err = os.MkdirTemp("", "pgvp-integration-"); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(workDir)
	if pki, err = testpki.NewPKI(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: pki:", err)
		return 1
	}
	rootFile = filepath.Join(workDir, "root.crt")
	if err := testpki.WritePEMFile(rootFile, pki.Root.CertPEM); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	for _, tool := range []string{"psql"} {
		if _, err := exec.LookPath(tool); err != nil {
			// A missing client is a failure, never a silent skip.
			fmt.Fprintf(os.Stderr, "integration: %s not found on PATH: install postgresql-client (scripts/setup does)\n", tool)
			return 1
		}
	}
	binPath = filepath.Join(workDir, "pgverifyproxy")
	build := exec.Command("go", "build", "-o", binPath, "../cmd/pgverifyproxy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: building the binary:", err)
		return 1
	}
	cluster, err = harness.StartCluster(ctx, harness.ClusterOptions{
		ServerCertPEM: pki.Leaf.ChainPEM(pki.Intermediate),
		ServerKeyPEM:  pki.Leaf.KeyPEM,
		ClientCAPEM:   pki.ClientCA.CertPEM,
		Logf:          func(f string, a ...any) { fmt.Fprintf(os.Stderr, "harness: "+f+"\n", a...) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: starting PostgreSQL:", err)
		return 1
	}
	defer cluster.Stop()
	code := m.Run()
	if code != 0 {
		fmt.Fprintln(os.Stderr, "---- PostgreSQL log tail ----\n"+cluster.LogTail(40))
	}
	return code
}

// testLogger logs the proxy to stderr when PGVP_TEST_LOG=1.
func testLogger() *slog.Logger {
	if os.Getenv("PGVP_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// proxyOpts describe an in-process proxy for one test.
type proxyOpts struct {
	host       string // upstream host; default "localhost"
	port       int    // default: the cluster's port
	serverName string
	mode       proxy.ClientTLSMode
	auth       proxy.AuthMode
	binding    string // relay login's channel binding
	stored     func() ([]byte, error)
	log        *slog.Logger      // default: testLogger()
	relay      proxy.RelayEngine // default: the proxy's (loop on Linux)
}

// runningProxy is an in-process proxy on 127.0.0.1:0.
type runningProxy struct {
	addr  string
	port  int
	dials *atomic.Int32
}

// startProxy runs the proxy in-process, wired like the CLI wires it: a
// chain.Dialer trusting only the test root.
func startProxy(t *testing.T, o proxyOpts) *runningProxy {
	t.Helper()
	if o.host == "" {
		o.host = "localhost"
	}
	if o.port == 0 {
		o.port = cluster.Port
	}
	d := &chain.Dialer{Host: o.host, Port: o.port, ServerName: o.serverName, Roots: testpki.Pool(pki.Root), ConnectTimeout: 10 * time.Second}
	tcfg, err := proxy.SelfSignedTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	dials := &atomic.Int32{}
	logger := o.log
	if logger == nil {
		logger = testLogger()
	}
	srv, err := proxy.New(proxy.Config{
		Routes: []proxy.Route{{
			Name: t.Name(), Listen: []string{"127.0.0.1:0"}, UpstreamAddr: d.Addr(),
			Trust:     "the roots in --ca-file " + rootFile,
			Dial:      countedDial(d, dials),
			ClientTLS: o.mode, TLSConfig: tcfg, StartupTimeout: 20 * time.Second,
			Auth: o.auth, ChannelBinding: o.binding, StoredPassword: o.stored,
		}},
		Logger: logger,
		Relay:  o.relay,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background())
	t.Cleanup(func() { srv.Close() })
	addr := srv.Addrs()[0].(*net.TCPAddr)
	return &runningProxy{addr: addr.String(), port: addr.Port, dials: dials}
}

// psqlResult is what a user sees from one psql run.
type psqlResult struct {
	out, err string
	code     int
}

// runPsql runs psql against the proxy with a clean libpq environment.
func runPsql(t *testing.T, port int, conninfo, password, sql string) psqlResult {
	t.Helper()
	return psqlDSN(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres connect_timeout=20 %s", port, conninfo), password, sql)
}

// psqlDSN runs one statement with psql on a full connection string.
func psqlDSN(t *testing.T, dsn, password, sql string) psqlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql)
	cmd.Env = cleanEnv("PGPASSWORD=" + password)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running psql: %v", err)
	}
	return psqlResult{out: strings.TrimSpace(out.String()), err: errb.String(), code: code}
}

// cleanEnv is the environment without PG* variables, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "PGPASSFILE=/nonexistent", "PGSERVICEFILE=/nonexistent", "PGSYSCONFDIR=/nonexistent")
	return append(env, extra...)
}

// syncBuffer is a strings.Builder safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// countedDial dials d for a route and counts the attempts in n. A failed
// dial returns a nil net.Conn (not one holding a nil *tls.Conn).
func countedDial(d *chain.Dialer, n *atomic.Int32) proxy.DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		n.Add(1)
		c, err := d.Dial(ctx)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}
