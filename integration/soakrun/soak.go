package soakrun

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// setupTables checks that max_connections took ExtraConf's value and
// creates each client's two tables, writable by both test users.
func (r *Runner) setupTables(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, r.cluster.AdminConnString())
	if err != nil {
		return fmt.Errorf("connecting as superuser: %w", err)
	}
	defer conn.Close(context.Background())
	var mc string
	if err := conn.QueryRow(ctx, "show max_connections").Scan(&mc); err != nil {
		return fmt.Errorf("show max_connections: %w", err)
	}
	if want := strconv.Itoa(pgMaxConnections(r.o.Clients)); mc != want {
		return fmt.Errorf("max_connections is %s, not %s: ExtraConf did not override the harness's setting", mc, want)
	}
	var b strings.Builder
	users := harness.MD5User + ", " + harness.ScramUser
	for i := 0; i < r.o.Clients+len(legs)*len(logins); i++ { // the clients', then the warm-up's
		fmt.Fprintf(&b, "create table soak_tx_%d (n bigint not null, v text not null);\n", i)
		fmt.Fprintf(&b, "create table soak_copy_%d (id int not null, payload text not null);\n", i)
		fmt.Fprintf(&b, "grant select, insert, delete, truncate on soak_tx_%d, soak_copy_%d to %s;\n", i, i, users)
	}
	if _, err := conn.Exec(ctx, b.String()); err != nil {
		return fmt.Errorf("creating tables: %w", err)
	}
	return nil
}

// warmup runs every operation once on every leg as every user, all
// legs and users at once, so that whatever the proxy starts lazily and
// keeps (pools, caches) exists before the baseline is taken. Its workers
// have tables of their own, numbered after the clients'.
func (r *Runner) warmup(ctx context.Context) error {
	st := &stats{}
	var wg sync.WaitGroup
	errs := make([]error, len(legs)*len(logins))
	for li := range legs {
		for ui := range logins {
			k := li*len(logins) + ui
			w := newWorker(r.o.Clients+k, r.proxy.routePort(r.o.Clients+k), r.o.Seed, st, false, r.o.Logf)
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[k] = w.runOps(ctx, li, ui, opQuery, opParams, opTx, opRollback, opCopy, opCancel, opIdle, opReconnect, opDrop)
			}()
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return nil
}

// waitNoSessions waits (bounded) until the proxy reports no open session.
func (r *Runner) waitNoSessions(ctx context.Context, timeout time.Duration) (Sample, error) {
	deadline := time.Now().Add(timeout)
	for {
		s, err := r.sample(ctx)
		if err != nil {
			return s, err
		}
		if s.Sessions == 0 {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("%d sessions still active after %v", s.Sessions, timeout)
		}
		if err := harness.Sleep(ctx, 100*time.Millisecond); err != nil {
			return s, err
		}
	}
}

// soak warms up, takes the baseline, runs the clients and checks that the
// proxy returns to the baseline.
func (r *Runner) soak(ctx context.Context) (*Result, error) {
	o := r.o
	res := &Result{Clients: o.Clients, Duration: o.Duration, Seed: o.Seed, Relay: r.relay(), PGMaxConnections: pgMaxConnections(o.Clients),
		ProxyMaxConnections: proxyMaxConnections(o.Clients), WorkDir: r.work}
	if err := r.warmup(ctx); err != nil {
		return nil, err
	}
	if _, err := r.waitNoSessions(ctx, 15*time.Second); err != nil {
		return nil, fmt.Errorf("after the warm-up: %w", err)
	}
	if err := harness.Sleep(ctx, 500*time.Millisecond); err != nil {
		return nil, err
	}
	base, err := r.baseline(ctx)
	if err != nil {
		return nil, err
	}
	res.Before, res.Peak = base, base
	o.Logf("baseline: %d goroutines, %d fds (/proc: %d), RSS %s; starting %d clients for %v (seed %d)",
		base.Goroutines, base.FDs, base.ProcFDs, mib(base.RSS), o.Clients, o.Duration, o.Seed)

	st := &stats{}
	start := time.Now()
	until := start.Add(o.Duration)
	probe := &serverProbe{addr: r.cluster.Addr()}
	pctx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		probe.run(pctx, start)
	}()
	var wg sync.WaitGroup
	for i := 0; i < o.Clients; i++ {
		w := newWorker(i, r.proxy.routePort(i), o.Seed, st, o.Verbose, o.Logf)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx, until)
		}()
	}
	clientsDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(clientsDone)
	}()

	var sampleErrs int
	tick := time.NewTicker(time.Second)
	progress := 10 * time.Second
	switch {
	case o.Verbose:
		progress = 5 * time.Second
	case o.Duration > 5*time.Minute:
		progress = 30 * time.Second
	}
	nextProgress := start.Add(progress)
loop:
	for {
		select {
		case <-clientsDone:
			break loop
		case <-ctx.Done():
			tick.Stop()
			stopProbe()
			<-clientsDone
			return nil, ctx.Err()
		case <-tick.C:
		}
		s, err := r.sample(ctx)
		if err != nil {
			if sampleErrs++; sampleErrs <= 3 {
				res.fail("sampling the proxy during the run: %v", err)
			}
			continue
		}
		res.Peak = peak(res.Peak, s)
		if now := time.Now(); !now.Before(nextProgress) {
			nextProgress = nextProgress.Add(progress)
			o.Logf("t=%3.0fs ops %d, errors %d, sessions %d, goroutines %d, fds %d, RSS %s",
				now.Sub(start).Seconds(), st.totalOps(), st.totalErrors(), s.Sessions, s.Goroutines, s.FDs, mib(s.RSS))
		}
	}
	tick.Stop()
	stopProbe()
	<-probeDone
	res.Elapsed = time.Since(start)
	res.collect(st)
	if n, failed, slowest, at := probe.summary(); n > 0 {
		o.Logf("server probe (SSLRequest straight to PostgreSQL, twice a second): %d probes, %d failed, slowest answer %v at t=%.0fs",
			n, failed, slowest.Round(time.Millisecond), at.Seconds())
	}
	o.Logf("clients done after %v: %d operations, %d errors; waiting up to %v for the proxy to settle",
		res.Elapsed.Round(time.Millisecond), res.TotalOps(), res.TotalErrors(), o.SettleTimeout)

	// Settle: every session closed, goroutines and fds back at the baseline.
	settleStart := time.Now()
	for {
		s, err := r.sample(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			res.fail("sampling the proxy after the run: %v", err)
			break
		}
		res.After = s
		if settled(base, s) {
			res.Settled = true
			break
		}
		if time.Since(settleStart) > o.SettleTimeout {
			break
		}
		if err := harness.Sleep(ctx, 250*time.Millisecond); err != nil {
			return nil, err
		}
	}
	res.SettleTime = time.Since(settleStart)
	res.ProxyBytesToUpstream = res.After.BytesToUpstream - base.BytesToUpstream
	res.ProxyBytesToClient = res.After.BytesToClient - base.BytesToClient
	if !res.Settled && res.After.Goroutines > 0 {
		a := res.After
		res.fail("leak: %v after the last client closed: sessions_active %d (want 0), go_goroutines %d (baseline %d + slack %d), process_open_fds %d (baseline %d + %d), /proc fds %d (baseline %d + %d)%s",
			o.SettleTimeout, a.Sessions, a.Goroutines, base.Goroutines, GoroutineSlack, a.FDs, base.FDs, FDSlack, a.ProcFDs, base.ProcFDs, FDSlack,
			r.goroutineDump())
	}
	if n := res.TotalErrors(); n > 0 {
		res.fail("%d unexpected client error(s); first:\n  %s", n, strings.Join(res.ErrorMessages, "\n  "))
	}
	return res, nil
}

// goroutineDump makes the leaking proxy print its goroutines (SIGQUIT: the
// Go runtime dumps every goroutine and exits) and summarizes them by the
// first pgverifyproxy function of each stack.
func (r *Runner) goroutineDump() string {
	p := r.proxy
	if p.Exited() {
		return ""
	}
	// The process is gone after the dump: a later stop does nothing.
	p.stopped, p.dumped = true, true
	p.Stop(syscall.SIGQUIT, 10*time.Second)
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	text := string(b)
	i := strings.Index(text, "\ngoroutine ")
	if i < 0 {
		return ""
	}
	header := regexp.MustCompile(`^goroutine \d+ [^\[]*\[([^\]]*)\]`)
	count := map[string]int{}
	for _, block := range strings.Split(text[i+1:], "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		m := header.FindStringSubmatch(lines[0])
		if m == nil {
			continue
		}
		state, _, _ := strings.Cut(m[1], ",")
		where := "the Go runtime"
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "\t") {
				continue
			}
			fn := l
			if j := strings.LastIndexByte(fn, '('); j > 0 {
				fn = fn[:j]
			}
			if strings.Contains(fn, "pgverifyproxy/") || strings.HasPrefix(fn, "main.") {
				where = fn
				break
			}
			if where == "the Go runtime" && !strings.HasPrefix(fn, "runtime.") && !strings.HasPrefix(fn, "created by") {
				where = fn
			}
		}
		count[state+" in "+where]++
	}
	type kv struct {
		k string
		n int
	}
	var kvs []kv
	for k, n := range count {
		kvs = append(kvs, kv{k, n})
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].n > kvs[j].n || kvs[i].n == kvs[j].n && kvs[i].k < kvs[j].k })
	var sb strings.Builder
	sb.WriteString("\n  goroutines of the proxy at the end (SIGQUIT dump in " + p.log + "; -keep keeps it):")
	for i, e := range kvs {
		if i == 15 {
			break
		}
		fmt.Fprintf(&sb, "\n    %4d %s", e.n, e.k)
	}
	return sb.String()
}

// Result is what a soak run found.
type Result struct {
	// Clients, Duration and Seed are the run's options.
	Clients  int
	Duration time.Duration
	Seed     int64
	// Relay is the relay engine the proxy ran with.
	Relay string
	// PGMaxConnections and ProxyMaxConnections are the limits the run set.
	PGMaxConnections, ProxyMaxConnections int
	// WorkDir is the work directory (removed at the end unless Keep).
	WorkDir string
	// Elapsed is how long the clients ran; Wall the whole run.
	Elapsed, Wall time.Duration
	// Ops counts successful operations by kind (indexed like OpNames).
	Ops [numOps]int64
	// Errors counts unexpected errors by kind (indexed like OpNames).
	Errors [numOps]int64
	// ConnectErrors counts failed connections.
	ConnectErrors int64
	// ErrorMessages are the first few unexpected errors.
	ErrorMessages []string
	// Connections counts the connections opened, by "leg/user".
	Connections map[string]int64
	// CopyBytesIn and CopyBytesOut are the COPY text sent and received.
	CopyBytesIn, CopyBytesOut int64
	// ProxyBytesToUpstream and ProxyBytesToClient are the proxy's own
	// pgverifyproxy_bytes_total over the run.
	ProxyBytesToUpstream, ProxyBytesToClient int64
	// Before is the baseline, Peak the maximum during the run and After
	// the last reading of the settle wait.
	Before, Peak, After Sample
	// Settled is true when After is back at the baseline within the
	// slack; SettleTime is how long that took.
	Settled    bool
	SettleTime time.Duration
	// ProxyExit is the proxy's exit status after SIGTERM.
	ProxyExit string
	// Proxy log lines: all, warnings, errors, panics, ended sessions.
	ProxyLogLines, ProxyLogWarn, ProxyLogError, ProxyLogPanic, ProxySessionsLogged int
	// ProxySessionsOnRelay counts the ended sessions relayed by the engine
	// under test (Options.Relay).
	ProxySessionsOnRelay int
	// ProxyLoginsAuto and ProxyLoginsRelay count the proxy's own logins
	// on each route.
	ProxyLoginsAuto, ProxyLoginsRelay int
	// Failures are the reasons the run failed; empty when it passed.
	Failures []string
}

// OpNames returns the operation kinds in the order of Result.Ops.
func OpNames() []string { return opNames[:] }

// fail adds a failure.
func (r *Result) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// OK reports whether the run found nothing wrong.
func (r *Result) OK() bool { return len(r.Failures) == 0 }

// TotalOps is the number of successful operations.
func (r *Result) TotalOps() int64 {
	var n int64
	for _, v := range r.Ops {
		n += v
	}
	return n
}

// TotalErrors is the number of unexpected client errors, connections
// included.
func (r *Result) TotalErrors() int64 {
	n := r.ConnectErrors
	for _, v := range r.Errors {
		n += v
	}
	return n
}

// TotalConnections is the number of connections the clients opened.
func (r *Result) TotalConnections() int64 {
	var n int64
	for _, v := range r.Connections {
		n += v
	}
	return n
}

// collect copies the clients' counters into r.
func (r *Result) collect(st *stats) {
	for i := range st.ok {
		r.Ops[i] = st.ok[i].Load()
		r.Errors[i] = st.errs[i].Load()
	}
	r.ConnectErrors = st.connErr.Load()
	r.Connections = map[string]int64{}
	for li := range legs {
		for ui := range logins {
			r.Connections[legs[li].name+"/"+logins[ui].name] = st.conns[li][ui].Load()
		}
	}
	r.CopyBytesIn, r.CopyBytesOut = st.copyIn.Load(), st.copyOut.Load()
	st.mu.Lock()
	r.ErrorMessages = append([]string(nil), st.msgs...)
	st.mu.Unlock()
}

// Summary is the human-readable report of the run.
func (r *Result) Summary() string {
	var b strings.Builder
	secs := r.Elapsed.Seconds()
	if secs <= 0 {
		secs = 1
	}
	fmt.Fprintf(&b, "soak: %d clients for %v (ran %v; seed %d; PostgreSQL max_connections %d, proxy --max-connections %d)\n",
		r.Clients, r.Duration, r.Elapsed.Round(time.Millisecond), r.Seed, r.PGMaxConnections, r.ProxyMaxConnections)
	fmt.Fprintf(&b, "operations: %d (%.0f/s), unexpected errors: %d\n", r.TotalOps(), float64(r.TotalOps())/secs, r.TotalErrors())
	for i, name := range opNames {
		fmt.Fprintf(&b, "  %-10s %9d ok %6d errors\n", name, r.Ops[i], r.Errors[i])
	}
	fmt.Fprintf(&b, "  %-10s %9s    %6d errors\n", connectKind, "", r.ConnectErrors)
	keys := make([]string, 0, len(r.Connections))
	for k := range r.Connections {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(&b, "connections: %d (%.0f/s):", r.TotalConnections(), float64(r.TotalConnections())/secs)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s %d", k, r.Connections[k])
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "bytes: COPY in %s, COPY out %s; relayed by the proxy: to upstream %s, to clients %s\n",
		mb(r.CopyBytesIn), mb(r.CopyBytesOut), mb(r.ProxyBytesToUpstream), mb(r.ProxyBytesToClient))
	fmt.Fprintf(&b, "proxy          before     peak    after  (allowed after)\n")
	fmt.Fprintf(&b, "  goroutines %8d %8d %8d  (<= %d)\n", r.Before.Goroutines, r.Peak.Goroutines, r.After.Goroutines, r.Before.Goroutines+GoroutineSlack)
	fmt.Fprintf(&b, "  open fds   %8d %8d %8d  (<= %d; process_open_fds)\n", r.Before.FDs, r.Peak.FDs, r.After.FDs, r.Before.FDs+FDSlack)
	fmt.Fprintf(&b, "  /proc fds  %8d %8d %8d  (<= %d)\n", r.Before.ProcFDs, r.Peak.ProcFDs, r.After.ProcFDs, r.Before.ProcFDs+FDSlack)
	fmt.Fprintf(&b, "  sessions   %8d %8d %8d  (0)\n", r.Before.Sessions, r.Peak.Sessions, r.After.Sessions)
	fmt.Fprintf(&b, "  threads    %8d %8d %8d\n", r.Before.Threads, r.Peak.Threads, r.After.Threads)
	fmt.Fprintf(&b, "  RSS        %8s %8s %8s  (/proc VmRSS after: %s)\n", mib(r.Before.RSS), mib(r.Peak.RSS), mib(r.After.RSS), mib(r.After.ProcRSS))
	settle := fmt.Sprintf("back at the baseline %v after the last client", r.SettleTime.Round(time.Millisecond))
	if !r.Settled {
		settle = fmt.Sprintf("NOT back at the baseline after %v", r.SettleTime.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  %s; exit after SIGTERM: %s\n", settle, r.ProxyExit)
	fmt.Fprintf(&b, "proxy log: %d lines, %d sessions ended (%d on the %s relay), %d proxy logins (auto route %d, relay route %d), %d warnings, %d errors, %d panics\n",
		r.ProxyLogLines, r.ProxySessionsLogged, r.ProxySessionsOnRelay, r.Relay, r.ProxyLoginsAuto+r.ProxyLoginsRelay, r.ProxyLoginsAuto, r.ProxyLoginsRelay, r.ProxyLogWarn, r.ProxyLogError, r.ProxyLogPanic)
	if len(r.ErrorMessages) > 0 {
		b.WriteString("first errors:\n")
		for _, m := range r.ErrorMessages {
			b.WriteString("  " + m + "\n")
		}
	}
	if r.OK() {
		b.WriteString("result: PASS\n")
	} else {
		b.WriteString("result: FAIL\n")
		for _, f := range r.Failures {
			b.WriteString("  - " + f + "\n")
		}
	}
	return b.String()
}

// mib formats bytes as MiB.
func mib(n int64) string { return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20)) }

// mb formats bytes as MB (10^6).
func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
