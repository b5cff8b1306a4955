package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// Test users created in every cluster, with testpki.CertUser: that one logs
// in with a client certificate whose CN is its name (pg_hba "cert"), signed
// by ClusterOptions.ClientCAPEM.
const (
	// ScramUser is a login role whose password is stored as SCRAM-SHA-256.
	ScramUser = "scram_user"
	// ScramPassword is ScramUser's password.
	ScramPassword = "scram-secret-1"
	// MD5User is a login role whose password is stored as an md5 hash.
	MD5User = "md5_user"
	// MD5Password is MD5User's password.
	MD5Password = "md5-secret-1"
)

// serverUserName is the unprivileged account the server runs as when the
// harness runs as root (PostgreSQL refuses to run as root).
const serverUserName = "postgres"

// pgHBA replaces the cluster's pg_hba.conf.
const pgHBA = `# written by pgverifyproxy integration harness
local     all  all                      trust
local     replication all               trust
hostssl   all  scram_user  127.0.0.1/32 scram-sha-256
hostssl   all  scram_user  ::1/128      scram-sha-256
hostssl   all  md5_user    127.0.0.1/32 md5
hostssl   all  md5_user    ::1/128      md5
hostssl   all  cert_user   127.0.0.1/32 cert
hostssl   all  cert_user   ::1/128      cert
hostssl   all  all         127.0.0.1/32 scram-sha-256
hostnossl all  all         0.0.0.0/0    reject
hostnossl all  all         ::/0         reject
`

// ClusterOptions configure StartCluster.
type ClusterOptions struct {
	// BinDir holds initdb, pg_ctl and postgres. Default: $PG_BINDIR when
	// set, else the highest version among /usr/lib/postgresql/*/bin.
	BinDir string
	// ServerCertPEM is the certificate chain the server presents (leaf
	// first, typically followed by the intermediate). Required.
	ServerCertPEM []byte
	// ServerKeyPEM is the private key of the server certificate. Required.
	ServerKeyPEM []byte
	// ClientCAPEM, when set, becomes ssl_ca_file: the CA that signs client
	// certificates (testpki.CertUser's). Without it that user cannot log in.
	ClientCAPEM []byte
	// ExtraConf is appended to postgresql.conf.
	ExtraConf string
	// Host is the TCP listen address; default 127.0.0.1 (any 127/8
	// address works on Linux: a standby on 127.0.0.2 has a certificate
	// of its own for that address).
	Host string
	// Logf, when set, receives progress output.
	Logf func(format string, args ...any)
}

// Cluster is a running PostgreSQL server.
type Cluster struct {
	// Dir is the base temporary directory holding everything below (owned
	// by the server user when running as root).
	Dir string
	// DataDir is the cluster's data directory.
	DataDir string
	// SocketDir is the directory of the server's unix socket.
	SocketDir string
	// Host is the TCP listen address, "127.0.0.1".
	Host string
	// Port is the TCP (and unix socket) port.
	Port int
	// BinDir holds the PostgreSQL binaries used.
	BinDir string

	logFile  string
	baseConf []byte // postgresql.conf as written by initdb
	extra    string
	clientCA bool
	owner    *serverOwner // nil: run as the current user
	logf     func(format string, args ...any)

	mu      sync.Mutex
	stopped bool
}

// serverOwner is the account the server processes run as.
type serverOwner struct {
	uid, gid int
}

// FreePort asks the OS for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("harness: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FindBinDir returns the directory of the PostgreSQL server binaries:
// $PG_BINDIR when set, else the highest version among
// /usr/lib/postgresql/*/bin.
func FindBinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	type cand struct {
		dir string
		ver []int
	}
	var cands []cand
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			continue
		}
		var ver []int
		for _, f := range strings.Split(filepath.Base(filepath.Dir(d)), ".") {
			n, err := strconv.Atoi(f)
			if err != nil {
				n = -1
			}
			ver = append(ver, n)
		}
		cands = append(cands, cand{d, ver})
	}
	if len(cands) == 0 {
		return "", errors.New("harness: finding binaries: no /usr/lib/postgresql/*/bin/initdb (install the postgresql server package or set PG_BINDIR)")
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i].ver, cands[j].ver
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
	return cands[0].dir, nil
}

// StartCluster creates a new cluster in a fresh temporary directory,
// configures TLS with the given certificate, starts it on a free loopback
// port and creates ScramUser and MD5User. When the process runs as root,
// the server runs as the "postgres" user. On failure everything created is
// removed.
func StartCluster(ctx context.Context, o ClusterOptions) (_ *Cluster, err error) {
	if len(o.ServerCertPEM) == 0 || len(o.ServerKeyPEM) == 0 {
		return nil, errors.New("harness: options: ServerCertPEM and ServerKeyPEM are required")
	}
	c := &Cluster{Host: "127.0.0.1", BinDir: o.BinDir, extra: o.ExtraConf, logf: o.Logf, clientCA: len(o.ClientCAPEM) > 0}
	if o.Host != "" {
		c.Host = o.Host
	}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	if c.BinDir == "" {
		if c.BinDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(c.BinDir, b)); err != nil {
			return nil, fmt.Errorf("harness: finding binaries: %w", err)
		}
	}
	if os.Geteuid() == 0 {
		if c.owner, err = lookupServerUser(); err != nil {
			return nil, err
		}
	}

	base := os.TempDir()
	if c.owner != nil && !traversableByOthers(base) {
		c.logf("temp dir %s is not accessible to user %s; using /tmp", base, serverUserName)
		base = "/tmp"
	}
	if c.Dir, err = os.MkdirTemp(base, "pgvp-cluster-"); err != nil {
		return nil, fmt.Errorf("harness: creating cluster dir: %w", err)
	}
	defer func() {
		if err != nil {
			c.abort()
		}
	}()
	c.DataDir = filepath.Join(c.Dir, "data")
	c.SocketDir = filepath.Join(c.Dir, "sock")
	c.logFile = filepath.Join(c.Dir, "postgres.log")
	if err := os.Mkdir(c.SocketDir, 0o700); err != nil {
		return nil, fmt.Errorf("harness: creating socket dir: %w", err)
	}
	for _, d := range []string{c.Dir, c.SocketDir} {
		if err := c.chown(d); err != nil {
			return nil, fmt.Errorf("harness: creating cluster dir: %w", err)
		}
	}
	c.logf("using PostgreSQL binaries in %s; cluster in %s", c.BinDir, c.Dir)

	out, err := c.run(ctx, "initdb", "-D", c.DataDir, "-U", "postgres",
		"--auth-local=trust", "--auth-host=reject", "--no-locale", "-E", "UTF8", "--no-sync")
	if err != nil {
		return nil, fmt.Errorf("harness: initdb: %w\n%s", err, tail(out, 30))
	}
	if c.baseConf, err = os.ReadFile(filepath.Join(c.DataDir, "postgresql.conf")); err != nil {
		return nil, fmt.Errorf("harness: reading postgresql.conf: %w", err)
	}
	if err := c.writeOwned(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(pgHBA), 0o600); err != nil {
		return nil, fmt.Errorf("harness: writing pg_hba.conf: %w", err)
	}
	if err := c.writeCert(o.ServerCertPEM, o.ServerKeyPEM); err != nil {
		return nil, err
	}
	if c.clientCA {
		if err := c.writeOwned(filepath.Join(c.DataDir, "client_ca.crt"), testpki.JoinPEM(o.ClientCAPEM), 0o644); err != nil {
			return nil, fmt.Errorf("harness: writing client_ca.crt: %w", err)
		}
	}

	for attempt := 1; ; attempt++ {
		if c.Port, err = FreePort(); err != nil {
			return nil, err
		}
		if err := c.writeConf(); err != nil {
			return nil, err
		}
		c.logf("starting PostgreSQL on %s (attempt %d)", c.Addr(), attempt)
		out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-l", c.logFile, "-w", "-t", "60", "start")
		if err == nil {
			break
		}
		c.stopImmediate()
		if attempt >= 2 || ctx.Err() != nil {
			return nil, fmt.Errorf("harness: pg_ctl start: %w\n%s\n---- server log tail ----\n%s",
				err, tail(out, 10), c.LogTail(30))
		}
		c.logf("pg_ctl start failed (%v); retrying with another port", err)
	}

	if err := c.Exec(ctx, fmt.Sprintf(
		"SET password_encryption = 'scram-sha-256';\n"+
			"CREATE ROLE %s LOGIN PASSWORD '%s';\n"+
			"SET password_encryption = 'md5';\n"+
			"CREATE ROLE %s LOGIN PASSWORD '%s';\n"+
			"CREATE ROLE %s LOGIN;\n"+
			"GRANT CONNECT ON DATABASE postgres TO %s, %s, %s;",
		ScramUser, ScramPassword, MD5User, MD5Password, testpki.CertUser, ScramUser, MD5User, testpki.CertUser)); err != nil {
		return nil, fmt.Errorf("harness: creating users: %w\n---- server log tail ----\n%s", err, c.LogTail(20))
	}
	c.logf("PostgreSQL ready on %s (socket %s)", c.Addr(), c.SocketDir)
	return c, nil
}

// Addr returns the server's TCP address, "127.0.0.1:PORT".
func (c *Cluster) Addr() string {
	return net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
}

// AdminConnString returns a connection string for the superuser "postgres"
// over the unix socket in SocketDir (trust authentication), database
// postgres, without TLS.
func (c *Cluster) AdminConnString() string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable",
		quoteConnValue(c.SocketDir), c.Port)
}

// Exec runs sql (one or more statements, simple protocol) as the
// superuser over the unix socket.
func (c *Cluster) Exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.AdminConnString())
	if err != nil {
		return fmt.Errorf("harness: exec: connecting as superuser: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("harness: exec: %w", err)
	}
	return nil
}

// SetServerCert replaces the server's certificate chain and key
// (server.crt and server.key in DataDir, the key with mode 0600 and owned
// by the server user) and then calls Reload.
func (c *Cluster) SetServerCert(ctx context.Context, certChainPEM, keyPEM []byte) error {
	if err := c.writeCert(certChainPEM, keyPEM); err != nil {
		return err
	}
	return c.Reload(ctx)
}

// Reload runs pg_ctl reload and waits until the postmaster has processed
// it. pg_ctl only sends SIGHUP, so Reload then polls pg_conf_load_time()
// from new sessions (for up to 10s) until it changes: the postmaster
// reloads its configuration, pg_hba.conf and its TLS certificate in one
// step before it forks further backends, so once a new session sees the
// new load time every later connection uses the new settings. It then
// waits another 300ms for good measure. Reload fails when the server logs
// that the SSL configuration was not reloaded (e.g. a bad key).
func (c *Cluster) Reload(ctx context.Context) error {
	before, err := c.confLoadTime(ctx)
	if err != nil {
		return fmt.Errorf("harness: reload: %w", err)
	}
	logSize := c.logSize()
	if out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "reload"); err != nil {
		return fmt.Errorf("harness: pg_ctl reload: %w\n%s", err, tail(out, 10))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		now, err := c.confLoadTime(ctx)
		if err != nil {
			return fmt.Errorf("harness: reload: %w", err)
		}
		if !now.Equal(before) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("harness: reload: configuration was not reloaded within 10s\n---- server log tail ----\n%s", c.LogTail(20))
		}
		if err := Sleep(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("harness: reload: %w", err)
		}
	}
	if err := Sleep(ctx, 300*time.Millisecond); err != nil {
		return fmt.Errorf("harness: reload: %w", err)
	}
	if logged := c.logSince(logSize); strings.Contains(logged, "SSL configuration was not reloaded") ||
		strings.Contains(logged, "contains errors") {
		return fmt.Errorf("harness: reload: server rejected the new configuration\n---- server log ----\n%s", tail([]byte(logged), 20))
	}
	return nil
}

// confLoadTime returns pg_conf_load_time() as seen by a new session.
func (c *Cluster) confLoadTime(ctx context.Context) (time.Time, error) {
	conn, err := pgx.Connect(ctx, c.AdminConnString())
	if err != nil {
		return time.Time{}, fmt.Errorf("connecting as superuser: %w", err)
	}
	defer conn.Close(context.Background())
	var t time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("querying pg_conf_load_time: %w", err)
	}
	return t, nil
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.logFile)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	return tail(b, n)
}

// Stop shuts the server down (pg_ctl stop -m fast) and removes Dir. It is
// idempotent: calls after the first do nothing and return nil.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err == nil {
		// (Not running after StopServer.)
		if out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
			errs = append(errs, fmt.Errorf("harness: pg_ctl stop: %w\n%s\n---- server log tail ----\n%s", err, tail(out, 10), c.LogTail(20)))
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("harness: removing cluster dir: %w", err))
	}
	return errors.Join(errs...)
}

// abort cleans up after a failed StartCluster.
func (c *Cluster) abort() {
	c.stopImmediate()
	if c.Dir != "" {
		_ = os.RemoveAll(c.Dir)
	}
	c.stopped = true
}

// stopImmediate stops a possibly half-started server, ignoring errors.
func (c *Cluster) stopImmediate() {
	if c.DataDir == "" {
		return
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop")
}

// writeConf writes postgresql.conf: initdb's file plus the harness
// settings and ExtraConf.
func (c *Cluster) writeConf() error {
	var b bytes.Buffer
	b.Write(c.baseConf)
	fmt.Fprintf(&b, "\n# ---- pgverifyproxy integration harness ----\n")
	fmt.Fprintf(&b, "listen_addresses = '%s'\n", c.Host)
	fmt.Fprintf(&b, "port = %d\n", c.Port)
	fmt.Fprintf(&b, "unix_socket_directories = %s\n", quoteConf(c.SocketDir))
	fmt.Fprintf(&b, "ssl = on\n")
	fmt.Fprintf(&b, "ssl_cert_file = %s\n", quoteConf(filepath.Join(c.DataDir, "server.crt")))
	fmt.Fprintf(&b, "ssl_key_file = %s\n", quoteConf(filepath.Join(c.DataDir, "server.key")))
	if c.clientCA {
		fmt.Fprintf(&b, "ssl_ca_file = %s\n", quoteConf(filepath.Join(c.DataDir, "client_ca.crt")))
	}
	fmt.Fprintf(&b, "password_encryption = 'scram-sha-256'\n")
	fmt.Fprintf(&b, "log_connections = on\n")
	fmt.Fprintf(&b, "logging_collector = off\n")
	fmt.Fprintf(&b, "fsync = off\n")
	fmt.Fprintf(&b, "max_connections = 200\n")
	if c.extra != "" {
		fmt.Fprintf(&b, "# ---- ExtraConf ----\n%s\n", c.extra)
	}
	if err := c.writeOwned(filepath.Join(c.DataDir, "postgresql.conf"), b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("harness: writing postgresql.conf: %w", err)
	}
	return nil
}

// writeCert writes server.crt (0644) and server.key (0600), both owned by
// the server user.
func (c *Cluster) writeCert(certPEM, keyPEM []byte) error {
	if err := c.writeOwned(filepath.Join(c.DataDir, "server.crt"), testpki.JoinPEM(certPEM), 0o644); err != nil {
		return fmt.Errorf("harness: writing server.crt: %w", err)
	}
	if err := c.writeOwned(filepath.Join(c.DataDir, "server.key"), testpki.JoinPEM(keyPEM), 0o600); err != nil {
		return fmt.Errorf("harness: writing server.key: %w", err)
	}
	return nil
}

// writeOwned writes data to path with exactly mode perm, owned by the
// server user.
func (c *Cluster) writeOwned(path string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, data, perm); err != nil {
		return err
	}
	if err := os.Chmod(path, perm); err != nil {
		return err
	}
	return c.chown(path)
}

// chown gives path to the server user (no-op when not running as root).
func (c *Cluster) chown(path string) error {
	if c.owner == nil {
		return nil
	}
	return os.Chown(path, c.owner.uid, c.owner.gid)
}

// run runs one of the PostgreSQL binaries as the server user, in Dir, with
// a minimal environment, and returns its combined output.
func (c *Cluster) run(ctx context.Context, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, prog), args...)
	cmd.Dir = c.Dir
	cmd.Env = []string{
		"PATH=" + c.BinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LC_ALL=C",
		"HOME=" + c.Dir,
	}
	if c.owner != nil {
		runAs(cmd, c.owner.uid, c.owner.gid)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The postmaster started by pg_ctl writes to the log file, but bound
	// the wait for the output pipe in case a child keeps it open.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// logSize returns the current size of the server log.
func (c *Cluster) logSize() int64 {
	fi, err := os.Stat(c.logFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LogMark returns a mark of the server log's current end, for LogSince.
func (c *Cluster) LogMark() int64 { return c.logSize() }

// LogSince returns what the server logged after mark (log_connections is
// on: every connection it accepted shows as "connection received").
func (c *Cluster) LogSince(mark int64) string { return c.logSince(mark) }

// logSince returns the server log from byte offset off on.
func (c *Cluster) logSince(off int64) string {
	b, err := os.ReadFile(c.logFile)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// lookupServerUser finds the unprivileged server account.
func lookupServerUser() (*serverOwner, error) {
	u, err := user.Lookup(serverUserName)
	if err != nil {
		return nil, fmt.Errorf("harness: looking up user %q (PostgreSQL cannot run as root): %w", serverUserName, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("harness: looking up user %q: uid %q: %w", serverUserName, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("harness: looking up user %q: gid %q: %w", serverUserName, u.Gid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("harness: looking up user %q: it is root", serverUserName)
	}
	return &serverOwner{uid: uid, gid: gid}, nil
}

// traversableByOthers reports whether every directory from / down to dir
// can be searched by any user.
func traversableByOthers(dir string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if p == filepath.Dir(p) {
			return true
		}
	}
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// quoteConf quotes s as a postgresql.conf string value.
func quoteConf(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteConnValue quotes s for a key=value connection string when needed.
func quoteConnValue(s string) string {
	if s != "" && !strings.ContainsAny(s, " '\\") {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// StandbyOptions configure StartStandby.
type StandbyOptions struct {
	// Host is the standby's TCP listen address (127.0.0.2, say).
	Host string
	// ServerCertPEM and ServerKeyPEM are the standby's own certificate
	// chain and key. Required.
	ServerCertPEM, ServerKeyPEM []byte
}

// StartStandby makes a streaming standby of c with pg_basebackup -R (over
// c's unix socket, as the superuser), gives it its own certificate,
// address and free port, and starts it in hot standby. The standby is a
// Cluster of its own: Stop it like one, Promote it to make it a primary.
func (c *Cluster) StartStandby(ctx context.Context, o StandbyOptions) (_ *Cluster, err error) {
	if len(o.ServerCertPEM) == 0 || len(o.ServerKeyPEM) == 0 {
		return nil, errors.New("harness: standby options: ServerCertPEM and ServerKeyPEM are required")
	}
	sb := &Cluster{Host: o.Host, BinDir: c.BinDir, extra: c.extra, logf: c.logf, clientCA: c.clientCA, owner: c.owner, baseConf: c.baseConf}
	if sb.Host == "" {
		sb.Host = "127.0.0.1"
	}
	if sb.Dir, err = os.MkdirTemp(filepath.Dir(c.Dir), "pgvp-standby-"); err != nil {
		return nil, fmt.Errorf("harness: creating standby dir: %w", err)
	}
	defer func() {
		if err != nil {
			sb.abort()
		}
	}()
	sb.DataDir = filepath.Join(sb.Dir, "data")
	sb.SocketDir = filepath.Join(sb.Dir, "sock")
	sb.logFile = filepath.Join(sb.Dir, "postgres.log")
	if err := os.Mkdir(sb.SocketDir, 0o700); err != nil {
		return nil, fmt.Errorf("harness: creating standby socket dir: %w", err)
	}
	for _, d := range []string{sb.Dir, sb.SocketDir} {
		if err := sb.chown(d); err != nil {
			return nil, fmt.Errorf("harness: creating standby dir: %w", err)
		}
	}
	out, err := sb.run(ctx, "pg_basebackup", "-h", c.SocketDir, "-p", strconv.Itoa(c.Port), "-U", "postgres",
		"-D", sb.DataDir, "-R", "-X", "stream", "--no-sync", "-c", "fast")
	if err != nil {
		return nil, fmt.Errorf("harness: pg_basebackup: %w\n%s", err, tail(out, 20))
	}
	if err := sb.writeCert(o.ServerCertPEM, o.ServerKeyPEM); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		if sb.Port, err = FreePort(); err != nil {
			return nil, err
		}
		if err := sb.writeConf(); err != nil {
			return nil, err
		}
		sb.logf("starting the standby on %s (attempt %d)", sb.Addr(), attempt)
		out, err := sb.run(ctx, "pg_ctl", "-D", sb.DataDir, "-l", sb.logFile, "-w", "-t", "60", "start")
		if err == nil {
			break
		}
		sb.stopImmediate()
		if attempt >= 2 || ctx.Err() != nil {
			return nil, fmt.Errorf("harness: pg_ctl start (standby): %w\n%s\n---- server log tail ----\n%s",
				err, tail(out, 10), sb.LogTail(30))
		}
	}
	return sb, nil
}

// Promote ends recovery on a standby (pg_ctl promote, waiting until it
// accepts writes).
func (c *Cluster) Promote(ctx context.Context) error {
	if out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-w", "-t", "60", "promote"); err != nil {
		return fmt.Errorf("harness: pg_ctl promote: %w\n%s\n---- server log tail ----\n%s", err, tail(out, 10), c.LogTail(20))
	}
	return nil
}

// StopServer stops the server (pg_ctl stop -m fast) and keeps its
// directory, so that it can be inspected or removed later with Stop.
func (c *Cluster) StopServer(ctx context.Context) error {
	if out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		return fmt.Errorf("harness: pg_ctl stop: %w\n%s", err, tail(out, 10))
	}
	return nil
}
