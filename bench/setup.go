//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/bench/delayproxy"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// extraConf is appended to the cluster's postgresql.conf: room for the
// idle test through every hop, the COPY source table in shared buffers,
// and no per-connection log lines during the connection-rate runs.
const extraConf = `max_connections = 1200
shared_buffers = '1GB'
max_wal_size = '4GB'
log_connections = off
`

// bench is everything the measurements share.
type bench struct {
	o          options
	cl         *harness.Cleanups
	work       string // work directory (mode 0755: PgBouncer runs as postgres)
	rootFile   string // the test root CA, the only trust anchor of every path
	pki        *testpki.PKI
	cluster    *harness.Cluster
	bin        string // pgverifyproxy binary
	hasPrewarm bool   // the binary knows --prewarm
	hasRelay   bool   // the binary knows --relay (loop or goroutine)
	tools      tools
	postgres   *syscall.Credential // the unprivileged user PgBouncer runs as
	delay      *delayproxy.Proxy   // the cluster behind a simulated RTT
	machine    []string            // report header lines
	seq        int                 // numbers log files and directories
}

// tools are the external programs the bench runs.
type tools struct {
	pgbench, pgbouncer, stunnel, strace string
}

// setup prepares tools, the work directory, PKI, the pgverifyproxy binary,
// the cluster with its data and the delay proxy. Everything it starts is
// registered in cl.
func setup(ctx context.Context, o options, cl *harness.Cleanups) (*bench, error) {
	clearPGEnv()
	b := &bench{o: o, cl: cl}
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"tools", b.setupTools},
		{"work directory", b.setupWorkDir},
		{"PKI", b.setupPKI},
		{"pgverifyproxy binary", b.setupBinary},
		{"PostgreSQL", b.setupCluster},
		{"data", b.setupData},
		{"delay proxy", b.setupDelay},
		{"machine description", b.describeMachine},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("setup: %s: %w", s.what, err)
		}
	}
	return b, nil
}

// clearPGEnv removes PG* variables so that neither pgconn nor libpq picks
// up settings the bench did not choose.
func clearPGEnv() {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PG") {
			os.Unsetenv(k)
		}
	}
}

// setupTools finds pgbench, PgBouncer, stunnel and strace. The bench
// installs nothing: when a program is missing it stops with the apt-get
// command that installs it.
func (b *bench) setupTools(context.Context) error {
	binDir, err := harness.FindBinDir()
	if err != nil {
		return err
	}
	b.tools.pgbench = filepath.Join(binDir, "pgbench")
	if _, err := os.Stat(b.tools.pgbench); err != nil {
		return fmt.Errorf("pgbench not found next to the server binaries (%w): install postgresql-client", err)
	}
	var missing []string
	for _, w := range []struct {
		dst  *string
		name string
		pkg  string
	}{
		{&b.tools.pgbouncer, "pgbouncer", "pgbouncer"},
		{&b.tools.stunnel, "stunnel4", "stunnel4"},
		{&b.tools.strace, "strace", "strace"},
	} {
		if *w.dst = findProgram(w.name); *w.dst == "" {
			missing = append(missing, w.pkg)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s; install with:\n\n    %s", strings.Join(missing, ", "), installCommand(missing, os.Geteuid() == 0))
	}
	return nil
}

// installCommand is the Debian command that installs pkgs, prefixed with
// sudo when not run as root. The bench runs PgBouncer and stunnel from
// configurations of its own, on free ports; a service the package starts
// is not used.
func installCommand(pkgs []string, root bool) string {
	cmd := "apt-get install -y --no-install-recommends " + strings.Join(pkgs, " ")
	if !root {
		cmd = "sudo " + cmd
	}
	return cmd
}

// findProgram looks name up on PATH and in the sbin directories, which are
// not on every user's PATH.
func findProgram(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// setupWorkDir creates the work directory, readable by the unprivileged
// user PgBouncer runs as, and removed at the end unless -keep.
func (b *bench) setupWorkDir(context.Context) error {
	dir, err := os.MkdirTemp("/tmp", "pgvp-bench-")
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	b.work = dir
	if b.o.keep {
		logf("work directory %s (kept)", dir)
	} else {
		b.cl.Add(func() { os.RemoveAll(dir) })
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("looking up user postgres (PgBouncer refuses to run as root): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		b.postgres = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	return nil
}

// setupPKI generates the test PKI and writes the root to root.crt.
func (b *bench) setupPKI(context.Context) error {
	var err error
	if b.pki, err = testpki.NewPKI(); err != nil {
		return err
	}
	b.rootFile = filepath.Join(b.work, "root.crt")
	return testpki.WritePEMFile(b.rootFile, b.pki.Root.CertPEM)
}

// setupBinary builds pgverifyproxy with -trimpath (unless -bin names one)
// and finds out whether it knows --prewarm.
func (b *bench) setupBinary(ctx context.Context) error {
	b.bin = b.o.bin
	if b.bin == "" {
		root, err := harness.ModuleRoot(ctx)
		if err != nil {
			return fmt.Errorf("%w: run from the repository (go run ./bench) or pass -bin", err)
		}
		b.bin = filepath.Join(b.work, "pgverifyproxy")
		logf("building pgverifyproxy (go build -trimpath) from %s", root)
		if err := harness.BuildProxy(ctx, root, b.bin, "-trimpath"); err != nil {
			return err
		}
	}
	help, err := exec.CommandContext(ctx, b.bin, "run", "--help").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s run --help: %w\n%s", b.bin, err, tail(string(help), 10))
	}
	b.hasPrewarm = bytes.Contains(help, []byte("--prewarm"))
	b.hasRelay = bytes.Contains(help, []byte("--relay "))
	if b.o.baseBin != "" {
		if out, err := exec.CommandContext(ctx, b.o.baseBin, "version").CombinedOutput(); err != nil {
			return fmt.Errorf("-base-bin %s: %w\n%s", b.o.baseBin, err, tail(string(out), 10))
		}
	}
	return nil
}

// setupCluster starts PostgreSQL with TLS (the leaf and intermediate of
// the test PKI) and stops it at the end.
func (b *bench) setupCluster(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := harness.StartCluster(sctx, harness.ClusterOptions{
		ServerCertPEM: b.pki.Leaf.ChainPEM(b.pki.Intermediate),
		ServerKeyPEM:  b.pki.Leaf.KeyPEM,
		ExtraConf:     extraConf,
		Logf:          func(f string, a ...any) { logf("harness: "+f, a...) },
	})
	if err != nil {
		return err
	}
	b.cluster = c
	b.cl.Add(func() {
		if err := c.Stop(); err != nil {
			logf("stopping PostgreSQL: %v", err)
		}
	})
	return nil
}

// copyRowMin is the shortest COPY text line of copy_src: a one-digit id, a
// tab, 96 characters of payload and a newline.
const copyRowMin = 1 + 1 + 96 + 1

// setupData creates the pgbench tables (select-only runs), copy_src (the
// COPY TO source, at least -copy-mb of COPY text) and copy_in (the
// unlogged COPY FROM target), readable by the test users.
func (b *bench) setupData(ctx context.Context) error {
	logf("pgbench -i -s %d", b.o.scale)
	cmd := exec.CommandContext(ctx, b.tools.pgbench, "-i", "-q", "-s", strconv.Itoa(b.o.scale),
		"-h", b.cluster.SocketDir, "-p", strconv.Itoa(b.cluster.Port), "-U", "postgres", "postgres")
	cmd.Env = cleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w\n%s", err, tail(string(out), 20))
	}
	if b.o.focus != "" {
		// No COPY: only the pgbench tables, readable by the test users.
		return b.cluster.Exec(ctx, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+harness.MD5User+", "+harness.ScramUser)
	}
	rows := (int64(b.o.copyMB)*1e6 + copyRowMin - 1) / copyRowMin
	logf("creating copy_src: %d rows (>= %d MB of COPY text)", rows, b.o.copyMB)
	conn, err := pgx.Connect(ctx, b.cluster.AdminConnString())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	users := harness.MD5User + ", " + harness.ScramUser
	for _, sql := range []string{
		"GRANT SELECT ON ALL TABLES IN SCHEMA public TO " + users,
		fmt.Sprintf("CREATE TABLE copy_src AS SELECT g AS id, repeat(md5(g::text), 3) AS payload FROM generate_series(1, %d) g", rows),
		"VACUUM (FREEZE, ANALYZE) copy_src",
		"CREATE UNLOGGED TABLE copy_in (id bigint, payload text)",
		"GRANT SELECT ON copy_src TO " + users,
		"GRANT INSERT ON copy_in TO " + users,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	var size string
	if err := conn.QueryRow(ctx, "SELECT pg_size_pretty(pg_total_relation_size('copy_src'))").Scan(&size); err != nil {
		return err
	}
	logf("copy_src is %s on disk", size)
	return nil
}

// setupDelay starts the delay proxy in front of the cluster: half the RTT
// each way, plus one RTT for each new connection's simulated handshake.
func (b *bench) setupDelay(context.Context) error {
	if b.o.focus == "select" {
		return nil // no delayed figures
	}
	p, err := delayproxy.Start("127.0.0.1:0", b.cluster.Addr(), b.o.rtt/2, true)
	if err != nil {
		return err
	}
	b.delay = p
	b.cl.Add(func() { p.Close() })
	return nil
}

// describeMachine collects the machine and software versions for the
// report header.
func (b *bench) describeMachine(ctx context.Context) error {
	osrelease, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	lines := []string{
		fmt.Sprintf("CPU: %d × %s (nproc %d)", runtime.NumCPU(), cpuModel(), runtime.NumCPU()),
		"kernel: " + strings.TrimSpace(string(osrelease)),
		"Go: " + runtime.Version(),
		"PostgreSQL: " + firstLine(ctx, filepath.Join(b.cluster.BinDir, "postgres"), "--version"),
		"pgbench: " + firstLine(ctx, b.tools.pgbench, "--version"),
		"PgBouncer: " + firstLine(ctx, b.tools.pgbouncer, "--version"),
		"stunnel: " + firstLine(ctx, b.tools.stunnel, "-version"),
		"strace: " + firstLine(ctx, b.tools.strace, "-V"),
		"pgverifyproxy: " + firstLine(ctx, b.bin, "version"),
	}
	if b.o.baseBin != "" {
		lines = append(lines, "pgverifyproxy (base): "+firstLine(ctx, b.o.baseBin, "version")+" ("+b.o.baseBin+")")
	}
	if p := findProgram("openssl"); p != "" {
		lines = append(lines, "OpenSSL (PostgreSQL, libpq, PgBouncer, stunnel): "+firstLine(ctx, p, "version"))
	}
	b.machine = lines
	return nil
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// firstLine runs prog and returns the first line it prints (stdout or
// stderr) that holds a digit (a version), or the error.
func firstLine(ctx context.Context, prog string, args ...string) string {
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); strings.ContainsAny(line, "0123456789") {
			return line
		}
	}
	if err != nil {
		return fmt.Sprintf("(%s: %v)", filepath.Base(prog), err)
	}
	return "(no output)"
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cleanEnv is the environment without PG* variables, with libpq's files
// and GSS encryption turned off, plus extra.
func cleanEnv(extra ...string) []string {
	return harness.EnvWithoutPG(append([]string{"PGPASSFILE=/nonexistent", "PGSERVICEFILE=/nonexistent", "PGSYSCONFDIR=/nonexistent", "PGGSSENCMODE=disable"}, extra...)...)
}
