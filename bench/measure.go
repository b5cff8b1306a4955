//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// pgbenchRun is what one pgbench run reports.
type pgbenchRun struct {
	tps    float64
	tx     int64
	latAvg float64 // ms, from the per-transaction log (when asked for)
	latP99 float64 // ms, likewise
}

var (
	reTx     = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	reFailed = regexp.MustCompile(`number of failed transactions: (\d+)`)
	reTPS    = regexp.MustCompile(`tps = ([0-9.]+)`)
)

// hopWindow asks pgbench to sample a hop's counters while every client is
// connected: at pgbench's first progress report (-P 1: one second into the
// benchmark phase, after the clients' connections) and again half a second
// before the earliest moment pgbench can end (its -T duration after it
// started: connecting 64 clients through a hop takes a second or two, and
// the duration may or may not include that). The per-transaction logs then
// give the transactions completed in between.
type hopWindow struct {
	pid   int
	run   time.Duration // pgbench's -T
	delta hopDelta
	tx    int64         // transactions completed inside the window
	span  time.Duration // the window's wall time
}

// newHopWindow is the window for a pgbench -T d run through the hop of
// process pid.
func newHopWindow(pid int, d time.Duration) *hopWindow {
	return &hopWindow{pid: pid, run: d.Round(time.Second)}
}

// minHopWindow is the shortest window worth a figure.
const minHopWindow = 2 * time.Second

// pgbench runs pgbench against ep with args; with perTxLog it also writes
// per-transaction logs (-l) and computes the latency average and p99 from
// them. With w (which needs perTxLog and -T) it samples the hop in w's
// window and counts the transactions completed inside it.
func (b *bench) pgbench(ctx context.Context, ep endpoint, perTxLog bool, w *hopWindow, args ...string) (pgbenchRun, error) {
	var run pgbenchRun
	full := append([]string(nil), args...)
	var logDir string
	if perTxLog {
		var err error
		if logDir, err = os.MkdirTemp(b.work, "pgbench-log-"); err != nil {
			return run, err
		}
		defer os.RemoveAll(logDir)
		full = append(full, "-l", "--log-prefix="+filepath.Join(logDir, "tx"))
	}
	if w != nil {
		full = append(full, "-P", "1")
	}
	cmd := exec.CommandContext(ctx, b.tools.pgbench, full...)
	cmd.Env = b.libpqEnv(ep)
	cmd.Dir = b.work
	if b.o.verbose {
		logf("    pgbench %s", strings.Join(full, " "))
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return run, err
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return run, fmt.Errorf("starting pgbench: %w", err)
	}
	// stderr: progress reports (the first one opens the window) and
	// messages, kept for errors.
	var msgs strings.Builder
	progress, scanned := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scanned)
		var once sync.Once
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "progress: ") {
				once.Do(func() { close(progress) })
				continue
			}
			msgs.WriteString(sc.Text() + "\n")
		}
	}()
	var winErr error
	var from, to time.Time
	if w != nil {
		from, to, winErr = b.sampleWindow(ctx, w, started, progress, scanned)
	}
	<-scanned
	err = cmd.Wait()
	out := stdout.String() + msgs.String()
	if err != nil {
		return run, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, tail(out, 15))
	}
	if run, err = parsePgbench(out); err != nil {
		return run, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, tail(out, 15))
	}
	if perTxLog {
		n, avg, p99, err := latencyStats(logDir)
		if err != nil {
			return run, err
		}
		if n != run.tx {
			return run, fmt.Errorf("pgbench logged %d transactions but reported %d", n, run.tx)
		}
		run.latAvg, run.latP99 = avg, p99
	}
	if w != nil {
		if winErr != nil {
			return run, winErr
		}
		if w.tx, err = windowTx(logDir, from.UnixMicro(), to.UnixMicro()); err != nil {
			return run, fmt.Errorf("hop sample window: %w", err)
		}
		w.span = to.Sub(from)
	}
	return run, nil
}

// sampleWindow samples w's hop at the first progress report and half a
// second before pgbench, started at started, can end; it fails when
// pgbench ends first or the window would be shorter than minHopWindow.
func (b *bench) sampleWindow(ctx context.Context, w *hopWindow, started time.Time, progress, ended <-chan struct{}) (from, to time.Time, err error) {
	select {
	case <-progress:
	case <-ended:
		return from, to, errors.New("hop sample window: pgbench printed no progress report")
	case <-ctx.Done():
		return from, to, ctx.Err()
	}
	s0, err := sampleHop(w.pid)
	if err != nil {
		return from, to, fmt.Errorf("hop sample window: %w", err)
	}
	length := time.Until(started.Add(w.run - 500*time.Millisecond))
	if length < minHopWindow {
		return from, to, fmt.Errorf("hop sample window: pgbench's first progress report came %v after its start, leaving %v of its %v (want at least %v): run longer (-duration)",
			s0.at.Sub(started).Round(time.Millisecond), length.Round(time.Millisecond), w.run, minHopWindow)
	}
	select {
	case <-time.After(length):
	case <-ended:
		return from, to, fmt.Errorf("hop sample window: pgbench ended within %v of its first progress report", length.Round(time.Millisecond))
	case <-ctx.Done():
		return from, to, ctx.Err()
	}
	s1, err := sampleHop(w.pid)
	if err != nil {
		return from, to, fmt.Errorf("hop sample window: %w", err)
	}
	w.delta = diffSamples(s0, s1)
	return s0.at, s1.at, nil
}

// parsePgbench reads the transaction count and TPS from pgbench's output,
// rejecting runs with failed or no transactions.
func parsePgbench(out string) (pgbenchRun, error) {
	var run pgbenchRun
	m := reTx.FindStringSubmatch(out)
	if m == nil {
		return run, errors.New("no transaction count in the output")
	}
	run.tx, _ = strconv.ParseInt(m[1], 10, 64)
	if f := reFailed.FindStringSubmatch(out); f != nil && f[1] != "0" {
		return run, fmt.Errorf("%s failed transactions", f[1])
	}
	t := reTPS.FindStringSubmatch(out)
	if t == nil {
		return run, errors.New("no tps in the output")
	}
	run.tps, _ = strconv.ParseFloat(t[1], 64)
	if run.tx <= 0 || run.tps <= 0 {
		return run, fmt.Errorf("no transactions (%d, %.1f tps)", run.tx, run.tps)
	}
	return run, nil
}

// latencyStats reads pgbench's per-transaction logs in dir (third field:
// latency in µs) and returns their count, mean and p99 in ms.
func latencyStats(dir string) (n int64, avg, p99 float64, err error) {
	files, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil || len(files) == 0 {
		return 0, 0, 0, fmt.Errorf("no pgbench transaction logs in %s", dir)
	}
	var lat []float64
	for _, f := range files {
		if lat, err = appendLatencies(lat, f); err != nil {
			return 0, 0, 0, err
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0, errors.New("empty pgbench transaction logs")
	}
	sum := 0.0
	for _, v := range lat {
		sum += v
	}
	return int64(len(lat)), sum / float64(len(lat)) / 1000, percentile(lat, 0.99) / 1000, nil
}

// appendLatencies appends the latencies (µs) of one pgbench log file.
func appendLatencies(lat []float64, file string) ([]float64, error) {
	f, err := os.Open(file)
	if err != nil {
		return lat, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(fields[2], 64)
		if err != nil {
			return lat, fmt.Errorf("%s: bad latency %q", file, fields[2])
		}
		lat = append(lat, v)
	}
	return lat, sc.Err()
}

// windowTx counts the transactions in pgbench's per-transaction logs in
// dir that completed between from and to (Unix µs; fields 5 and 6 of a
// line are the completion time in seconds and µs). Every client must also
// have completed one after to-windowGrace: all the connections were still
// open at the end of the window (a client whose last transaction was still
// running when pgbench stopped logs nothing for it, and at 64 clients one
// transaction can take several hundred ms). A client may start inside the
// window (pgbench's second thread may still be connecting its clients when
// the first thread's progress report opens it); the hop's CPU and the
// transactions are counted over the same window either way.
func windowTx(dir string, from, to int64) (int64, error) {
	const windowGrace = 1_000_000 // µs
	files, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("no pgbench transaction logs in %s", dir)
	}
	type span struct{ first, last int64 }
	clients := map[string]span{}
	var n int64
	for _, file := range files {
		f, err := os.Open(file)
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 6 {
				continue
			}
			sec, err1 := strconv.ParseInt(fields[4], 10, 64)
			usec, err2 := strconv.ParseInt(fields[5], 10, 64)
			if err1 != nil || err2 != nil {
				f.Close()
				return 0, fmt.Errorf("%s: bad time stamp %q %q", file, fields[4], fields[5])
			}
			t := sec*1e6 + usec
			if t >= from && t <= to {
				n++
			}
			s, ok := clients[fields[0]]
			if !ok {
				s = span{t, t}
			}
			s.first, s.last = min(s.first, t), max(s.last, t)
			clients[fields[0]] = s
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return 0, err
		}
	}
	for c, s := range clients {
		if s.last < to-windowGrace {
			return 0, fmt.Errorf("client %s completed transactions only from %+.3fs to %+.3fs of the window's start (window: %.3fs)",
				c, float64(s.first-from)/1e6, float64(s.last-from)/1e6, float64(to-from)/1e6)
		}
	}
	if n == 0 {
		return 0, errors.New("no transaction completed inside the window")
	}
	return n, nil
}

// percentile returns the nearest-rank p-quantile of v (sorting v).
func percentile(v []float64, p float64) float64 {
	sort.Float64s(v)
	i := int(math.Ceil(p*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}

// median returns the median of v (sorting a copy).
func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// seconds is d as pgbench's -T argument.
func seconds(d time.Duration) string {
	return strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
}

// parseStatPPid reads the parent PID from the contents of /proc/PID/stat.
// The command name, in parentheses, may hold spaces and parentheses
// itself: the fields are counted from the last ')'.
func parseStatPPid(raw []byte) (int, error) {
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, errors.New("unexpected format")
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 2 {
		return 0, errors.New("too few fields")
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, fmt.Errorf("bad parent PID %q", f[1])
	}
	return ppid, nil
}

// rssKiB is VmRSS of process pid in KiB.
func rssKiB(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	v, err := parseVmRSS(raw)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return v, nil
}

// parseVmRSS reads VmRSS, in KiB, from the contents of /proc/PID/status.
func parseVmRSS(raw []byte) (float64, error) {
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

// fdCount is the number of open file descriptors of process pid.
func fdCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

// selectClients are the client counts of the select-only runs.
var selectClients = []int{1, 8, 64}

// selectMetrics are the figures of one select-only run.
type selectMetrics struct {
	tps, lat, p99         string
	cpu, ctxVol, ctxInvol string // hop side
}

// selectMetricIDs names the figures of the run at each client count.
var selectMetricIDs = map[int]selectMetrics{
	1:  {mTPS1, mLat1, mP99x1, mCPUTx1, mCtxVol1, mCtxInvol1},
	8:  {mTPS8, mLat8, mP99x8, mCPUTx8, mCtxVol8, mCtxInvol8},
	64: {mTPS64, mLat64, mP99x64, mCPUTx64, mCtxVol64, mCtxInvol64},
}

// measureSelect runs pgbench -S for -duration at 1, 8 and 64 clients,
// and, through a hop, measures the hop's CPU time and context switches
// per transaction while every client is connected (see hopWindow).
func (b *bench) measureSelect(ctx context.Context, h *hop, rec recorder) error {
	secs := seconds(b.o.duration)
	for _, c := range selectClients {
		m := selectMetricIDs[c]
		var w *hopWindow
		if h.proc != nil {
			w = newHopWindow(h.proc.Pid(), b.o.duration)
		}
		// -P 1 on every path, so that all run alike; only hops use it.
		args := []string{"-S", "-n", "-c", strconv.Itoa(c), "-j", strconv.Itoa(min(c, 2)), "-T", secs}
		if w == nil {
			args = append(args, "-P", "1")
		}
		r, err := b.pgbench(ctx, h.ep, true, w, args...)
		if err != nil {
			return fmt.Errorf("%d clients: %w", c, err)
		}
		rec.set(m.tps, r.tps)
		rec.set(m.lat, r.latAvg)
		rec.set(m.p99, r.latP99)
		note := ""
		if w != nil {
			d := w.delta
			perTx := func(v int64) float64 { return float64(v) / float64(w.tx) }
			cpu := float64(d.cpu().Nanoseconds()) / 1e3 / float64(w.tx)
			rec.set(m.cpu, cpu)
			if err := d.ctxComplete(); err != nil {
				rec.failMetric(m.ctxVol, err)
				rec.failMetric(m.ctxInvol, err)
			} else {
				rec.set(m.ctxVol, perTx(d.vol))
				rec.set(m.ctxInvol, perTx(d.invol))
			}
			note = fmt.Sprintf("; hop %.1f µs/tx, %.2f + %.2f ctx switches/tx over %d tx in %.1fs (%s)",
				cpu, perTx(d.vol), perTx(d.invol), w.tx, w.span.Seconds(), d)
		}
		logf("    select %2d client(s): %.0f tps, avg %.3f ms, p99 %.3f ms%s", c, r.tps, r.latAvg, r.latP99, note)
	}
	return nil
}

// measureConnRate runs pgbench -S -C (a new connection per transaction)
// at 8 clients for -duration.
func (b *bench) measureConnRate(ctx context.Context, h *hop, rec recorder) error {
	r, err := b.pgbench(ctx, h.ep, false, nil, "-S", "-n", "-C", "-c", "8", "-j", "2", "-T", seconds(b.o.duration))
	if err != nil {
		return err
	}
	rec.set(mConnRate, r.tps)
	logf("    new connections: %.0f/s", r.tps)
	return nil
}

// measureStrace attaches strace -c -f to the hop, runs a fixed-count
// pgbench -S at 8 clients and records all system calls per transaction
// and the three most frequent ones.
func (b *bench) measureStrace(ctx context.Context, h *hop, rec recorder) error {
	out := filepath.Join(b.work, fmt.Sprintf("strace-%d.txt", b.nextSeq()))
	cmd := exec.CommandContext(ctx, b.tools.strace, "-c", "-f", "-p", strconv.Itoa(h.proc.Pid()), "-o", out)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting strace: %w", err)
	}
	var msgs strings.Builder
	attached, scanned := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scanned)
		var once sync.Once
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			msgs.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "attached") {
				once.Do(func() { close(attached) })
			}
		}
	}()
	stopStrace := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-scanned:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-scanned
		}
		return cmd.Wait()
	}
	select {
	case <-attached:
	case <-scanned:
		_ = cmd.Wait()
		return fmt.Errorf("strace did not attach to pid %d:\n%s", h.proc.Pid(), tail(msgs.String(), 10))
	case <-time.After(10 * time.Second):
		_ = stopStrace()
		return fmt.Errorf("strace did not attach to pid %d within 10s", h.proc.Pid())
	}
	_ = harness.Sleep(ctx, 300*time.Millisecond)
	r, err := b.pgbench(ctx, h.ep, false, nil, "-S", "-n", "-c", "8", "-j", "2", "-t", strconv.Itoa(b.o.straceTx))
	// strace's exit status after SIGINT says little; its summary is checked.
	_ = stopStrace()
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return fmt.Errorf("strace summary: %w\n%s", err, tail(msgs.String(), 10))
	}
	total, calls, err := parseStraceSummary(string(raw))
	if err != nil {
		return fmt.Errorf("strace summary: %w\n%s\n%s", err, tail(string(raw), 10), tail(msgs.String(), 10))
	}
	perTx := float64(total) / float64(r.tx)
	rec.set(mSysTx, perTx)
	rec.setText(mSysTop, topSyscalls(calls, r.tx, 3))
	logf("    strace: %.1f syscalls/tx (%s)", perTx, topSyscalls(calls, r.tx, 3))
	return nil
}

// parseStraceSummary reads strace -c's table: the total number of calls
// and the calls per system call.
func parseStraceSummary(s string) (int64, map[string]int64, error) {
	calls := map[string]int64{}
	var total int64 = -1
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || strings.HasPrefix(f[0], "%") || strings.HasPrefix(f[0], "-") {
			continue
		}
		n, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			continue
		}
		if name := f[len(f)-1]; name == "total" {
			total = n
		} else {
			calls[name] = n
		}
	}
	if total <= 0 {
		return 0, nil, errors.New("no total line")
	}
	return total, calls, nil
}

// topSyscalls formats the k most frequent system calls as calls per
// transaction.
func topSyscalls(calls map[string]int64, tx int64, k int) string {
	names := make([]string, 0, len(calls))
	for n := range calls {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if calls[names[i]] != calls[names[j]] {
			return calls[names[i]] > calls[names[j]]
		}
		return names[i] < names[j]
	})
	var parts []string
	for _, n := range names[:min(k, len(names))] {
		parts = append(parts, fmt.Sprintf("%s %.1f", n, float64(calls[n])/float64(tx)))
	}
	return strings.Join(parts, ", ")
}

// measureTTFQ times n sequential connect + "select 1" (after one untimed
// warm-up), closing each connection untimed, and records the median and
// p99 in ms under the given metrics.
func (b *bench) measureTTFQ(ctx context.Context, ep endpoint, n int, medMetric, p99Metric string, rec recorder) error {
	cfg, err := b.connConfig(ep)
	if err != nil {
		return err
	}
	samples := make([]float64, 0, n)
	for i := 0; i <= n; i++ {
		d, err := connectAndQuery(ctx, cfg)
		if err != nil {
			return fmt.Errorf("connection %d of %d: %w", i, n, err)
		}
		if i > 0 {
			samples = append(samples, float64(d)/float64(time.Millisecond))
		}
	}
	med, p99 := median(samples), percentile(samples, 0.99)
	rec.set(medMetric, med)
	rec.set(p99Metric, p99)
	logf("    %s: median %.2f ms, p99 %.2f ms (%d connections)", metricByID[medMetric].short, med, p99, n)
	return nil
}

// connectAndQuery returns the time from starting a connection to the
// answer of "select 1", then closes the connection.
func connectAndQuery(ctx context.Context, cfg *pgconn.Config) (time.Duration, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return 0, err
	}
	_, err = conn.Exec(cctx, "select 1").ReadAll()
	d := time.Since(start)
	conn.Close(cctx)
	return d, err
}

// countingWriter discards what it is given, counting the bytes.
type countingWriter struct{ n int64 }

// Write counts p.
func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// genReader yields COPY text lines (id, tab, 96 characters, newline) from
// a repeated block of whole lines.
type genReader struct {
	block     []byte
	off       int
	remaining int64
}

// newGenReader returns a reader of at least total bytes of whole lines and
// the number of lines it yields.
func newGenReader(total int64) (*genReader, int64) {
	var block []byte
	lines := int64(0)
	payload := strings.Repeat("0123456789abcdef", 6)
	for len(block) < 1<<20 {
		lines++
		block = fmt.Appendf(block, "%d\t%s\n", lines, payload)
	}
	blocks := (total + int64(len(block)) - 1) / int64(len(block))
	return &genReader{block: block, remaining: blocks * int64(len(block))}, blocks * lines
}

// Read fills p from the repeated block.
func (g *genReader) Read(p []byte) (int, error) {
	if g.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.remaining {
		p = p[:g.remaining]
	}
	n := copy(p, g.block[g.off:])
	g.off = (g.off + n) % len(g.block)
	g.remaining -= int64(n)
	return n, nil
}

// measureCopy relays -copy-mb each way through the hop: COPY copy_src TO
// STDOUT into a discarding writer and COPY copy_in FROM STDIN from
// generated lines, recording MB/s and the hop's CPU seconds per GB.
func (b *bench) measureCopy(ctx context.Context, h *hop, rec recorder) error {
	cfg, err := b.connConfig(h.ep)
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	want := int64(b.o.copyMB) * 1e6
	var w countingWriter
	el, cpu, err := b.timed(ctx, h, func() error {
		_, err := conn.CopyTo(ctx, &w, "COPY copy_src TO STDOUT")
		return err
	})
	if err != nil {
		return fmt.Errorf("COPY TO STDOUT: %w", err)
	}
	if w.n < want {
		return fmt.Errorf("COPY TO STDOUT relayed %d bytes, fewer than -copy-mb %d MB", w.n, b.o.copyMB)
	}
	b.recordCopy(rec, h, "COPY TO STDOUT", mCopyOut, mCopyOutCPU, w.n, el, cpu)

	if err := b.cluster.Exec(ctx, "TRUNCATE copy_in"); err != nil {
		return err
	}
	gen, lines := newGenReader(want)
	size := gen.remaining
	el, cpu, err = b.timed(ctx, h, func() error {
		tag, err := conn.CopyFrom(ctx, gen, "COPY copy_in FROM STDIN")
		if err == nil && tag.RowsAffected() != lines {
			err = fmt.Errorf("%d rows copied, %d sent", tag.RowsAffected(), lines)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("COPY FROM STDIN: %w", err)
	}
	b.recordCopy(rec, h, "COPY FROM STDIN", mCopyIn, mCopyInCPU, size, el, cpu)
	return b.cluster.Exec(ctx, "TRUNCATE copy_in")
}

// timed runs fn and returns its wall time and the hop's CPU time during
// it (0 without a hop process), counted as in hopWindow.
func (b *bench) timed(_ context.Context, h *hop, fn func() error) (time.Duration, time.Duration, error) {
	var s0 hopSample
	var err error
	if h.proc != nil {
		if s0, err = sampleHop(h.proc.Pid()); err != nil {
			return 0, 0, err
		}
	}
	start := time.Now()
	if err := fn(); err != nil {
		return 0, 0, err
	}
	el := time.Since(start)
	var cpu time.Duration
	if h.proc != nil {
		s1, err := sampleHop(h.proc.Pid())
		if err != nil {
			return 0, 0, err
		}
		d := diffSamples(s0, s1)
		if cpu = d.cpu(); cpu <= 0 {
			return 0, 0, fmt.Errorf("hop CPU time did not grow (%s)", d)
		}
		if b.o.verbose {
			logf("    hop: %s", d)
		}
	}
	return el, cpu, nil
}

// recordCopy records one COPY direction's throughput and hop CPU per GB.
func (b *bench) recordCopy(rec recorder, h *hop, what, rateMetric, cpuMetric string, n int64, el, cpu time.Duration) {
	rate := float64(n) / 1e6 / el.Seconds()
	rec.set(rateMetric, rate)
	note := ""
	if h.proc != nil {
		perGB := cpu.Seconds() / (float64(n) / 1e9)
		rec.set(cpuMetric, perGB)
		note = fmt.Sprintf(", hop %.2f CPU s/GB", perGB)
	}
	logf("    %s: %.0f MB in %v: %.0f MB/s%s", what, float64(n)/1e6, el.Round(time.Millisecond), rate, note)
}

// measureIdle opens -idle logged-in connections through the hop (each ran
// "select 1", so a pooler has linked a server connection), and records the
// hop's VmRSS growth per connection.
func (b *bench) measureIdle(ctx context.Context, h *hop, rec recorder) error {
	pid := h.proc.Pid()
	rss0, err := rssKiB(pid)
	if err != nil {
		return err
	}
	fd0, err := fdCount(pid)
	if err != nil {
		return err
	}
	conns, err := b.openIdle(ctx, h.ep, b.o.idle)
	defer closeAll(conns)
	if err != nil {
		return err
	}
	if err := harness.Sleep(ctx, time.Second); err != nil {
		return err
	}
	rss1, err := rssKiB(pid)
	if err != nil {
		return err
	}
	fd1, err := fdCount(pid)
	if err != nil {
		return err
	}
	if fd1-fd0 < b.o.idle {
		return fmt.Errorf("hop holds only %d more descriptors with %d idle connections open", fd1-fd0, b.o.idle)
	}
	per := (rss1 - rss0) / float64(b.o.idle)
	rec.set(mIdle, per)
	logf("    idle: %d connections: VmRSS %.0f → %.0f KiB (%.1f KiB each), +%d fds", b.o.idle, rss0, rss1, per, fd1-fd0)
	return nil
}

// openIdle opens n connections to ep (8 at a time), each after running
// "select 1". On error it returns the connections opened so far.
func (b *bench) openIdle(ctx context.Context, ep endpoint, n int) ([]*pgconn.PgConn, error) {
	cfg, err := b.connConfig(ep)
	if err != nil {
		return nil, err
	}
	conns := make([]*pgconn.PgConn, n)
	var next atomic.Int64
	var failed atomic.Bool
	var once sync.Once
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n) && !failed.Load(); i = next.Add(1) - 1 {
				c, err := pgconn.ConnectConfig(ctx, cfg)
				if err == nil {
					conns[i] = c
					_, err = c.Exec(ctx, "select 1").ReadAll()
				}
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("idle connection %d of %d: %w", i+1, n, err) })
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return conns, firstErr
}

// closeAll closes every open connection, 8 at a time.
func closeAll(conns []*pgconn.PgConn) {
	ch := make(chan *pgconn.PgConn)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c.Close(ctx)
				cancel()
			}
		}()
	}
	for _, c := range conns {
		if c != nil {
			ch <- c
		}
	}
	close(ch)
	wg.Wait()
}
