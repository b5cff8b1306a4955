//go:build linux

package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// endpoint is where a benchmark client connects and as whom.
type endpoint struct {
	port     int
	tls      bool // direct: TLS verify-full to "localhost" with the test root
	user     string
	password string
}

// proc is a hop process started by the bench; its output goes to log.
type proc struct {
	*harness.Process
	name string
	log  string
}

// hop is one started path: the process in the middle (nil for direct) and
// the endpoint its clients use.
type hop struct {
	proc *proc
	ep   endpoint
}

// stop ends the process: SIGTERM, then SIGKILL after 10s. It is
// idempotent.
func (p *proc) stop() {
	if p.Stop(syscall.SIGTERM, 10*time.Second) {
		logf("%s did not stop on SIGTERM within 10s: killed it", p.name)
	}
}

// logTail is the last n lines of the process's output.
func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) == 0 {
		return "(empty log)"
	}
	return tail(string(b), n)
}

// stop ends the hop's process, if any.
func (h *hop) stop() {
	if h.proc != nil {
		h.proc.stop()
	}
}

// nextSeq returns a fresh number for file names.
func (b *bench) nextSeq() int {
	b.seq++
	return b.seq
}

// startProc starts argv with its output in a log file of the work
// directory, in its own process group (so a terminal's Ctrl-C reaches only
// the bench, which stops it in order), killed if the bench dies, as cred
// when not nil. The process is stopped at cleanup at the latest.
func (b *bench) startProc(name string, cred *syscall.Credential, argv ...string) (*proc, error) {
	logPath := filepath.Join(b.work, fmt.Sprintf("%s-%d.log", name, b.nextSeq()))
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = b.work
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if b.o.verbose {
		logf("starting %s: %s", name, strings.Join(argv, " "))
	}
	hp, err := harness.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, argv[0], err)
	}
	p := &proc{Process: hp, name: name, log: logPath}
	b.cl.Add(p.stop)
	return p, nil
}

// startHop starts a hop process and waits until a client gets an answer to
// "select 1" through it; on failure it stops the process and returns the
// reason with the tail of its log.
func (b *bench) startHop(ctx context.Context, name string, cred *syscall.Credential, ep endpoint, argv ...string) (*hop, error) {
	p, err := b.startProc(name, cred, argv...)
	if err != nil {
		return nil, err
	}
	h := &hop{proc: p, ep: ep}
	if err := b.waitReady(ctx, h); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s did not start: %w\n---- %s log tail (%s; -keep keeps it) ----\n%s", name, err, name, p.log, p.logTail(30))
	}
	// Let the hop settle (and a --prewarm pool fill) before measuring.
	if err := harness.Sleep(ctx, time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return h, nil
}

// waitReady polls "select 1" through the hop for up to 20s.
func (b *bench) waitReady(ctx context.Context, h *hop) error {
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if h.proc.Exited() {
			return fmt.Errorf("process exited (%v)", h.proc.Cmd.ProcessState)
		}
		if last = b.selectOne(ctx, h.ep); last == nil {
			return nil
		}
		if err := harness.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("no answer to select 1 within 20s: %w", last)
}

// selectOne connects to ep, runs "select 1" and disconnects.
func (b *bench) selectOne(ctx context.Context, ep endpoint) error {
	cfg, err := b.connConfig(ep)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(cctx, "select 1").ReadAll()
	return err
}

// connConfig is the pgconn configuration for ep: plaintext to 127.0.0.1
// for hops; TLS verify-full to "localhost" (resolved to 127.0.0.1 only)
// with the test root for direct.
func (b *bench) connConfig(ep endpoint) (*pgconn.Config, error) {
	s := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable connect_timeout=30",
		ep.port, ep.user, ep.password)
	if ep.tls {
		s = fmt.Sprintf("host=localhost port=%d user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=30",
			ep.port, ep.user, ep.password, b.rootFile)
	}
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		return nil, err
	}
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	return cfg, nil
}

// libpqEnv is the environment that points pgbench (libpq) at ep.
func (b *bench) libpqEnv(ep endpoint) []string {
	env := cleanEnv("PGPORT="+strconv.Itoa(ep.port), "PGUSER="+ep.user, "PGPASSWORD="+ep.password,
		"PGDATABASE=postgres", "PGCONNECT_TIMEOUT=30")
	if ep.tls {
		return append(env, "PGHOST=localhost", "PGHOSTADDR=127.0.0.1", "PGSSLMODE=verify-full", "PGSSLROOTCERT="+b.rootFile)
	}
	return append(env, "PGHOST=127.0.0.1", "PGSSLMODE=disable")
}

// userEndpoint is an endpoint on port for the md5 or SCRAM test user.
func userEndpoint(port int, scram bool) endpoint {
	if scram {
		return endpoint{port: port, user: harness.ScramUser, password: harness.ScramPassword}
	}
	return endpoint{port: port, user: harness.MD5User, password: harness.MD5Password}
}

// startDirect is the direct path: no process in the middle, TLS
// verify-full straight to the cluster (or to the delay proxy in front of
// it when delayed).
func (b *bench) startDirect(_ context.Context, delayed bool) (*hop, error) {
	port := b.cluster.Port
	if delayed {
		port = b.delay.Addr().Port
	}
	ep := userEndpoint(port, false)
	ep.tls = true
	return &hop{ep: ep}, nil
}

// startPGVP starts pgverifyproxy in front of the cluster (or of the delay
// proxy when delayed), with --prewarm N when prewarm > 0, and the extra
// arguments.
func (b *bench) startPGVP(ctx context.Context, scram, delayed bool, prewarm int, extra ...string) (*hop, error) {
	return b.startPGVPBin(ctx, b.bin, scram, delayed, prewarm, extra...)
}

// startPGVPBin is startPGVP with the binary bin.
func (b *bench) startPGVPBin(ctx context.Context, bin string, scram, delayed bool, prewarm int, extra ...string) (*hop, error) {
	upstream := b.cluster.Port
	if delayed {
		upstream = b.delay.Addr().Port
	}
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	pinDir, err := os.MkdirTemp(b.work, "pins-")
	if err != nil {
		return nil, err
	}
	argv := []string{bin, "run",
		"--upstream", fmt.Sprintf("localhost:%d", upstream),
		"--ca-file", b.rootFile,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--pin-dir", pinDir,
		"--drain-timeout", "1s",
	}
	if prewarm > 0 {
		argv = append(argv, "--prewarm", strconv.Itoa(prewarm))
	}
	argv = append(argv, extra...)
	return b.startHop(ctx, "pgverifyproxy", nil, userEndpoint(port, scram), argv...)
}

// pgbouncerIni configures PgBouncer 1.18: session pooling, md5 clients
// from a userlist, verify-full TLS to the cluster; pool sizes leave room
// for the idle test.
const pgbouncerIni = `[databases]
postgres = host=localhost port=%d dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = md5
auth_file = %s
pool_mode = session
max_client_conn = 1100
default_pool_size = 1100
ignore_startup_parameters = extra_float_digits
server_tls_sslmode = verify-full
server_tls_ca_file = %s
`

// startPgBouncer writes a PgBouncer configuration and userlist (owned by
// the unprivileged user it runs as: PgBouncer refuses root) and starts it.
func (b *bench) startPgBouncer(ctx context.Context) (*hop, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.work, fmt.Sprintf("pgbouncer-%d", b.nextSeq()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	sum := md5.Sum([]byte(harness.MD5Password + harness.MD5User))
	files := map[string]string{
		"userlist.txt":  fmt.Sprintf("%q %q\n", harness.MD5User, "md5"+hex.EncodeToString(sum[:])),
		"pgbouncer.ini": fmt.Sprintf(pgbouncerIni, b.cluster.Port, port, filepath.Join(dir, "userlist.txt"), b.rootFile),
	}
	for name, content := range files {
		if err := b.writeForPostgres(filepath.Join(dir, name), content); err != nil {
			return nil, err
		}
	}
	if err := b.chownPostgres(dir); err != nil {
		return nil, err
	}
	return b.startHop(ctx, "pgbouncer", b.postgres, userEndpoint(port, false),
		b.tools.pgbouncer, filepath.Join(dir, "pgbouncer.ini"))
}

// stunnelConf configures stunnel as a client: PostgreSQL's SSLRequest
// (protocol = pgsql), then TLS verified against the test root for the
// host name localhost; foreground, logging to stderr.
const stunnelConf = `foreground = yes
pid =
syslog = no

[pg]
client = yes
accept = 127.0.0.1:%d
connect = localhost:%d
protocol = pgsql
verifyChain = yes
CAfile = %s
checkHost = localhost
`

// startStunnel writes a stunnel configuration and starts it.
func (b *bench) startStunnel(ctx context.Context) (*hop, error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(b.work, fmt.Sprintf("stunnel-%d.conf", b.nextSeq()))
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(stunnelConf, port, b.cluster.Port, b.rootFile)), 0o644); err != nil {
		return nil, err
	}
	return b.startHop(ctx, "stunnel", nil, userEndpoint(port, false), b.tools.stunnel, conf)
}

// writeForPostgres writes a 0600 file owned by the unprivileged user.
func (b *bench) writeForPostgres(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return b.chownPostgres(path)
}

// chownPostgres gives path to the unprivileged user (when running as
// root).
func (b *bench) chownPostgres(path string) error {
	if b.postgres == nil {
		return nil
	}
	return os.Chown(path, int(b.postgres.Uid), int(b.postgres.Gid))
}
