package soakrun

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// proxyProc is the running pgverifyproxy binary.
type proxyProc struct {
	*harness.Process
	pid       int
	port      int // the auth auto route's client listener on 127.0.0.1
	relayPort int // the auth relay route's
	adminPort int // --admin on 127.0.0.1
	log       string
	http      *http.Client // keep-alive client for the admin endpoint
	stopped   bool         // stop sent SIGTERM or SIGQUIT (so an exit is expected)
	dumped    bool         // SIGQUIT made it dump its goroutines and exit
}

// routePort is the listener of client id: even ids use the auth auto
// route, odd ones the auth relay route.
func (p *proxyProc) routePort(id int) int {
	if id%2 == 1 {
		return p.relayPort
	}
	return p.port
}

// stop sends SIGTERM and waits up to 10s for the process (its drain
// timeout is 2s), then kills it. It is idempotent.
func (p *proxyProc) stop() {
	if !p.Exited() {
		p.stopped = true
	}
	p.Stop(syscall.SIGTERM, 10*time.Second)
	p.http.CloseIdleConnections()
}

// setupProxy starts the proxy on free loopback ports and waits until it is
// ready; a port taken between FreePort and the proxy's bind gets one more
// attempt with new ports.
func (r *Runner) setupProxy(ctx context.Context) error {
	var err error
	for attempt := 1; attempt <= 2; attempt++ {
		if err = r.startProxy(ctx, attempt); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		r.o.Logf("starting the proxy failed (attempt %d): %v", attempt, err)
	}
	return err
}

// startProxy starts one proxy process and waits for /readyz and a query
// through it.
func (r *Runner) startProxy(ctx context.Context, attempt int) error {
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	relayPort, err := harness.FreePort()
	if err != nil {
		return err
	}
	adminPort, err := harness.FreePort()
	if err != nil {
		return err
	}
	logPath := filepath.Join(r.work, fmt.Sprintf("proxy-%d.log", attempt))
	f, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("creating proxy log: %w", err)
	}
	defer f.Close()
	// Two routes to the same server: one with the default settings (auth
	// auto) and one in auth relay, each with its share of the clients.
	upstream := fmt.Sprintf("localhost:%d", r.cluster.Port)
	max := proxyMaxConnections(r.o.Clients)
	config := fmt.Sprintf(`routes:
  - name: auto
    listen: ["127.0.0.1:%d"]
    upstream: %q
    max_connections: %d
  - name: relay
    listen: ["127.0.0.1:%d"]
    upstream: %q
    auth: relay
    max_connections: %d
`, port, upstream, max, relayPort, upstream, max)
	configPath := filepath.Join(r.work, fmt.Sprintf("proxy-%d.yaml", attempt))
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		return err
	}
	argv := []string{"run",
		"--config", configPath,
		"--relay", r.relay(),
		"--ca-file", r.rootFile,
		"--admin", fmt.Sprintf("127.0.0.1:%d", adminPort),
		"--pin-dir", filepath.Join(r.work, "pins"),
		"--drain-timeout", "2s",
		"--log-level", "info",
		// The harness's leaf lives a day: without this, the expiry
		// warning would be the one expected warning in the log.
		"--expiry-warning", "1m",
		// The soak's PostgreSQL shares 2 cores with 200 clients, the
		// proxy and their backends: its postmaster, one process at the
		// same priority as hundreds of busy ones, was measured taking up
		// to 9.4 s to answer a new connection's SSLRequest (the server
		// probe of the summary, straight to PostgreSQL, without the
		// proxy). The default 10 s then fails clients on a timeout that
		// is the machine's; 30 s keeps the soak about the proxy, and the
		// summary still shows the server's slowest answer.
		"--connect-timeout", "30s",
	}
	cmd := exec.Command(r.bin, argv...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = r.work
	cmd.Env = harness.EnvWithoutPG()
	ownGroupKilledWithUs(cmd)
	hp, err := harness.StartProcess(cmd)
	if err != nil {
		return fmt.Errorf("starting %s: %w", r.bin, err)
	}
	p := &proxyProc{Process: hp, pid: hp.Pid(), port: port, relayPort: relayPort, adminPort: adminPort, log: logPath,
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1}}}
	r.addCleanup(p.stop)
	if err := r.waitProxyReady(ctx, p); err != nil {
		p.stop()
		return fmt.Errorf("proxy did not start: %w\n---- proxy log tail (%s) ----\n%s", err, logPath, fileTail(logPath, 20))
	}
	r.proxy = p
	r.o.Logf("pgverifyproxy (pid %d): auth auto on 127.0.0.1:%d, auth relay on 127.0.0.1:%d, admin 127.0.0.1:%d, max_connections %d each",
		p.pid, port, relayPort, adminPort, max)
	return nil
}

// waitProxyReady polls /readyz and then "select 1" through the proxy for
// up to 30s.
func (r *Runner) waitProxyReady(ctx context.Context, p *proxyProc) error {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("process exited (%v)", p.Err())
		}
		if last = r.readyOnce(ctx, p); last == nil {
			return nil
		}
		if err := harness.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("not ready within 30s: %w", last)
}

// readyOnce asks /readyz and runs "select 1" through the proxy.
func (r *Runner) readyOnce(ctx context.Context, p *proxyProc) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/readyz", p.adminPort), nil)
	if err != nil {
		return err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return fmt.Errorf("readyz: %w", err)
	}
	body, _ := readAllLimit(resp.Body, 4096)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	for _, port := range []int{p.port, p.relayPort} {
		if err := selectOne(rctx, port); err != nil {
			return fmt.Errorf("select 1 through the proxy's route on port %d: %w", port, err)
		}
	}
	return nil
}

// selectOne runs "select 1" through the proxy's listener on port.
func selectOne(ctx context.Context, port int) error {
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable connect_timeout=5",
		port, harness.MD5User, harness.MD5Password))
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "select 1").ReadAll()
	return err
}

// stopProxy stops the proxy at the end of the run, records its exit and
// scans its log for warnings, errors and panics.
func (r *Runner) stopProxy(res *Result) {
	p := r.proxy
	if p == nil {
		return
	}
	if p.Exited() && !p.stopped {
		res.fail("proxy: exited during the run (%v); log tail:\n%s", p.Err(), fileTail(p.log, 20))
	} else {
		p.stop()
		// The exit status of the goroutine dump is not a finding.
		if err := p.Err(); err != nil && !p.dumped {
			res.fail("proxy: exit after SIGTERM: %v; log tail:\n%s", err, fileTail(p.log, 20))
		}
	}
	res.ProxyExit = fmt.Sprint(p.Cmd.ProcessState)
	if p.dumped {
		res.ProxyExit = "none, killed by SIGQUIT for the goroutine dump"
	}
	r.scanProxyLog(res)
}

// scanProxyLog counts the proxy log's lines by level and fails the run on
// any warning, error or panic: in a soak every one of them is unexpected.
func (r *Runner) scanProxyLog(res *Result) {
	f, err := os.Open(r.proxy.log)
	if err != nil {
		res.fail("proxy log: %v", err)
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	var bad []string
	for sc.Scan() {
		line := sc.Text()
		res.ProxyLogLines++
		switch {
		case strings.Contains(line, "level=WARN"):
			res.ProxyLogWarn++
		case strings.Contains(line, "level=ERROR"):
			res.ProxyLogError++
		case strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:"):
			res.ProxyLogPanic++
		case strings.Contains(line, `msg="session ended"`):
			res.ProxySessionsLogged++
			if strings.Contains(line, " relay="+r.relay()+" ") || strings.HasSuffix(line, " relay="+r.relay()) {
				res.ProxySessionsOnRelay++
			}
			continue
		case strings.Contains(line, `msg="proxy login"`):
			if strings.Contains(line, "route=relay ") {
				res.ProxyLoginsRelay++
			} else if strings.Contains(line, "route=auto ") {
				res.ProxyLoginsAuto++
			}
			continue
		default:
			continue
		}
		if len(bad) < maxMessages {
			bad = append(bad, line)
		}
	}
	if err := sc.Err(); err != nil {
		res.fail("proxy log: reading: %v", err)
	}
	// Both routes logged in for clients: relay for every client, auto for
	// TLS clients with channel binding.
	if res.ProxyLoginsAuto == 0 || res.ProxyLoginsRelay == 0 {
		res.fail("proxy log: the proxy logged in itself %d times on the auth auto route and %d times on the auth relay route; want both above 0",
			res.ProxyLoginsAuto, res.ProxyLoginsRelay)
	}
	// Every session the soak relayed ran on the engine under test.
	if res.ProxySessionsOnRelay != res.ProxySessionsLogged || res.ProxySessionsLogged == 0 {
		res.fail("proxy log: %d of %d ended sessions were relayed by the %s engine (relay=%s); want all",
			res.ProxySessionsOnRelay, res.ProxySessionsLogged, r.relay(), r.relay())
	}
	if n := res.ProxyLogWarn + res.ProxyLogError + res.ProxyLogPanic; n > 0 {
		res.fail("proxy log: %d warning(s), %d error(s), %d panic(s); first:\n  %s",
			res.ProxyLogWarn, res.ProxyLogError, res.ProxyLogPanic, strings.Join(bad, "\n  "))
	}
}

// relay is the engine under test.
func (r *Runner) relay() string {
	if r.o.Relay != "" {
		return r.o.Relay
	}
	return harness.DefaultRelay()
}

// fileTail returns the last n lines of the file at path.
func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
