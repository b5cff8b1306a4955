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

// pgbench runs pgbench against ep with args; with perTxLog it also writes
// per-transaction logs (-l) and computes the latency average and p99 from
// them.
func (b *bench) pgbench(ctx context.Context, ep endpoint, perTxLog bool, args ...string) (pgbenchRun, error) {
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
	cmd := exec.CommandContext(ctx, b.tools.pgbench, full...)
	cmd.Env = b.libpqEnv(ep)
	cmd.Dir = b.work
	if b.o.verbose {
		logf("    pgbench %s", strings.Join(full, " "))
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return run, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 15))
	}
	if run, err = parsePgbench(string(out)); err != nil {
		return run, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 15))
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
	return run, nil
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

// cpuSeconds is the user+system CPU time of process pid, all its threads.
func (b *bench) cpuSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	ticks, err := parseStatTicks(raw)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return ticks / b.clkTck, nil
}

// parseStatTicks reads utime+stime, in clock ticks, from the contents of
// /proc/PID/stat. The command name, in parentheses, may hold spaces and
// parentheses itself: the fields are counted from the last ')'.
func parseStatTicks(raw []byte) (float64, error) {
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, errors.New("unexpected format")
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("too few fields")
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad utime/stime %q %q", f[11], f[12])
	}
	return utime + stime, nil
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

// measureSelect runs pgbench -S for -duration at 8 clients (measuring the
// hop's CPU time per transaction) and at 64 clients.
func (b *bench) measureSelect(ctx context.Context, h *hop, rec recorder) error {
	secs := seconds(b.o.duration)
	var cpu0 float64
	var err error
	if h.proc != nil {
		if cpu0, err = b.cpuSeconds(h.proc.Pid()); err != nil {
			return err
		}
	}
	r8, err := b.pgbench(ctx, h.ep, true, "-S", "-n", "-c", "8", "-j", "2", "-T", secs)
	if err != nil {
		return err
	}
	rec.set(mTPS8, r8.tps)
	rec.set(mLat8, r8.latAvg)
	rec.set(mP99x8, r8.latP99)
	cpuNote := ""
	if h.proc != nil {
		cpu1, err := b.cpuSeconds(h.proc.Pid())
		if err != nil {
			return err
		}
		if cpu1 <= cpu0 {
			return fmt.Errorf("hop CPU time did not grow during the 8-client run (%.2fs → %.2fs)", cpu0, cpu1)
		}
		rec.set(mCPUTx, (cpu1-cpu0)*1e6/float64(r8.tx))
		cpuNote = fmt.Sprintf(", hop %.1f µs/tx", (cpu1-cpu0)*1e6/float64(r8.tx))
	}
	logf("    select  8 clients: %.0f tps, avg %.3f ms, p99 %.3f ms%s", r8.tps, r8.latAvg, r8.latP99, cpuNote)
	r64, err := b.pgbench(ctx, h.ep, true, "-S", "-n", "-c", "64", "-j", "2", "-T", secs)
	if err != nil {
		return err
	}
	rec.set(mTPS64, r64.tps)
	rec.set(mLat64, r64.latAvg)
	rec.set(mP99x64, r64.latP99)
	logf("    select 64 clients: %.0f tps, avg %.3f ms, p99 %.3f ms", r64.tps, r64.latAvg, r64.latP99)
	return nil
}

// measureConnRate runs pgbench -S -C (a new connection per transaction)
// at 8 clients for -duration.
func (b *bench) measureConnRate(ctx context.Context, h *hop, rec recorder) error {
	r, err := b.pgbench(ctx, h.ep, false, "-S", "-n", "-C", "-c", "8", "-j", "2", "-T", seconds(b.o.duration))
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
	r, err := b.pgbench(ctx, h.ep, false, "-S", "-n", "-c", "8", "-j", "2", "-t", strconv.Itoa(b.o.straceTx))
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

// timed runs fn and returns its wall time and the hop's CPU seconds
// during it (0 without a hop process).
func (b *bench) timed(_ context.Context, h *hop, fn func() error) (time.Duration, float64, error) {
	var cpu0, cpu1 float64
	var err error
	if h.proc != nil {
		if cpu0, err = b.cpuSeconds(h.proc.Pid()); err != nil {
			return 0, 0, err
		}
	}
	start := time.Now()
	if err := fn(); err != nil {
		return 0, 0, err
	}
	el := time.Since(start)
	if h.proc != nil {
		if cpu1, err = b.cpuSeconds(h.proc.Pid()); err != nil {
			return 0, 0, err
		}
		if cpu1 <= cpu0 {
			return 0, 0, fmt.Errorf("hop CPU time did not grow (%.2fs → %.2fs)", cpu0, cpu1)
		}
	}
	return el, cpu1 - cpu0, nil
}

// recordCopy records one COPY direction's throughput and hop CPU per GB.
func (b *bench) recordCopy(rec recorder, h *hop, what, rateMetric, cpuMetric string, n int64, el time.Duration, cpu float64) {
	rate := float64(n) / 1e6 / el.Seconds()
	rec.set(rateMetric, rate)
	note := ""
	if h.proc != nil {
		perGB := cpu / (float64(n) / 1e9)
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
