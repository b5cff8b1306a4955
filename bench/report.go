//go:build linux

package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Metric identifiers.
const (
	mTPS1       = "tps1"
	mLat1       = "lat1"
	mP99x1      = "p99x1"
	mTPS8       = "tps8"
	mLat8       = "lat8"
	mP99x8      = "p99x8"
	mTPS64      = "tps64"
	mLat64      = "lat64"
	mP99x64     = "p99x64"
	mCPUTx1     = "cputx1"
	mCPUTx8     = "cputx8"
	mCPUTx64    = "cputx64"
	mCtxVol1    = "ctxvol1"
	mCtxVol8    = "ctxvol8"
	mCtxVol64   = "ctxvol64"
	mCtxInvol1  = "ctxinvol1"
	mCtxInvol8  = "ctxinvol8"
	mCtxInvol64 = "ctxinvol64"
	mSysTx      = "systx"
	mSysTop     = "systop"
	mConnRate   = "connrate"
	mTTFQ       = "ttfq"
	mTTFQp99    = "ttfqp99"
	mTTFQD      = "ttfqd"
	mTTFQDp99   = "ttfqdp99"
	mCopyOut    = "copyout"
	mCopyOutCPU = "copyoutcpu"
	mCopyIn     = "copyin"
	mCopyInCPU  = "copyincpu"
	mIdle       = "idle"
)

// metricDef describes one row of the report.
type metricDef struct {
	id     string
	label  string // row title; ↑ higher is better, ↓ lower is better
	short  string // for progress lines
	stage  stage
	digits int
	// hopSide figures belong to the process in the middle: they have no
	// ratio to direct, and direct shows directNA instead.
	hopSide  bool
	directNA string
	text     bool // a text figure (from the last round), not a number
}

// metricDefs are the report's rows, in order.
var metricDefs = []metricDef{
	{id: mTPS1, label: "select TPS, 1 client ↑", stage: stSelect},
	{id: mLat1, label: "latency avg ms, 1 client ↓", stage: stSelect, digits: 3},
	{id: mP99x1, label: "latency p99 ms, 1 client ↓", stage: stSelect, digits: 3},
	{id: mTPS8, label: "select TPS, 8 clients ↑", stage: stSelect},
	{id: mLat8, label: "latency avg ms, 8 clients ↓", stage: stSelect, digits: 3},
	{id: mP99x8, label: "latency p99 ms, 8 clients ↓", stage: stSelect, digits: 3},
	{id: mTPS64, label: "select TPS, 64 clients ↑", stage: stSelect},
	{id: mLat64, label: "latency avg ms, 64 clients ↓", stage: stSelect, digits: 3},
	{id: mP99x64, label: "latency p99 ms, 64 clients ↓", stage: stSelect, digits: 3},
	{id: mCPUTx1, label: "hop CPU µs/tx (schedstat), 1 client ↓", stage: stSelect, digits: 1, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCPUTx8, label: "hop CPU µs/tx (schedstat), 8 clients ↓", stage: stSelect, digits: 1, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCPUTx64, label: "hop CPU µs/tx (schedstat), 64 clients ↓", stage: stSelect, digits: 1, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCtxVol1, label: "hop voluntary ctx switches/tx, 1 client ↓", stage: stSelect, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCtxVol8, label: "hop voluntary ctx switches/tx, 8 clients ↓", stage: stSelect, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCtxVol64, label: "hop voluntary ctx switches/tx, 64 clients ↓", stage: stSelect, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCtxInvol1, label: "hop involuntary ctx switches/tx, 1 client ↓", stage: stSelect, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCtxInvol8, label: "hop involuntary ctx switches/tx, 8 clients ↓", stage: stSelect, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCtxInvol64, label: "hop involuntary ctx switches/tx, 64 clients ↓", stage: stSelect, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mSysTx, label: "hop syscalls/tx (strace -c -f) ↓", stage: stStrace, digits: 1, hopSide: true, directNA: "n/a (no hop)"},
	{id: mSysTop, label: "hop top 3 syscalls (calls/tx)", stage: stStrace, hopSide: true, directNA: "n/a (no hop)", text: true},
	{id: mConnRate, label: "new connections/s (pgbench -C, 8 clients) ↑", stage: stConnRate},
	{id: mTTFQ, label: "time to first query median ms ↓", short: "time to first query", stage: stTTFQ, digits: 2},
	{id: mTTFQp99, label: "time to first query p99 ms ↓", stage: stTTFQ, digits: 2},
	{id: mTTFQD, label: "time to first query, %s RTT, median ms ↓", short: "time to first query (delayed)", stage: stTTFQDelayed, digits: 1},
	{id: mTTFQDp99, label: "time to first query, %s RTT, p99 ms ↓", stage: stTTFQDelayed, digits: 1},
	{id: mCopyOut, label: "COPY TO STDOUT MB/s ↑", stage: stCopy},
	{id: mCopyOutCPU, label: "COPY TO hop CPU s/GB (schedstat) ↓", stage: stCopy, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mCopyIn, label: "COPY FROM STDIN MB/s ↑", stage: stCopy},
	{id: mCopyInCPU, label: "COPY FROM hop CPU s/GB (schedstat) ↓", stage: stCopy, digits: 2, hopSide: true, directNA: "n/a (no hop)"},
	{id: mIdle, label: "hop RSS KiB per idle connection ↓", stage: stIdle, digits: 1, hopSide: true, directNA: "n/a (server side)"},
}

// metricByID indexes metricDefs.
var metricByID = func() map[string]metricDef {
	m := map[string]metricDef{}
	for _, d := range metricDefs {
		m[d.id] = d
	}
	return m
}()

// results holds every figure: path → metric → round → value.
type results struct {
	vals   map[string]map[string]map[int]float64
	text   map[string]map[string]string
	failed map[string]map[string]bool
	errs   []string
}

// newResults returns empty results.
func newResults() *results {
	return &results{
		vals:   map[string]map[string]map[int]float64{},
		text:   map[string]map[string]string{},
		failed: map[string]map[string]bool{},
	}
}

// fail marks every figure of stage st on path as failed in round r.
func (res *results) fail(r int, path string, st stage, err error) {
	if res.failed[path] == nil {
		res.failed[path] = map[string]bool{}
	}
	for _, d := range metricDefs {
		if d.stage == st {
			res.failed[path][d.id] = true
		}
	}
	res.errs = append(res.errs, fmt.Sprintf("round %d, %s, %s: %v", r+1, path, stageNames[st], err))
}

// failMetric marks one figure of path as failed in round r (the other
// figures of its stage stand).
func (res *results) failMetric(r int, path, metric string, err error) {
	if res.failed[path] == nil {
		res.failed[path] = map[string]bool{}
	}
	res.failed[path][metric] = true
	res.errs = append(res.errs, fmt.Sprintf("round %d, %s, %s: %v", r+1, path, metricByID[metric].label, err))
}

// errorCount is the number of failed measurements.
func (res *results) errorCount() int { return len(res.errs) }

// recorder records figures of one path in one round.
type recorder struct {
	res   *results
	path  string
	round int
}

// set records a numeric figure; NaN and infinities are refused loudly.
func (r recorder) set(metric string, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		r.res.fail(r.round, r.path, metricByID[metric].stage, fmt.Errorf("%s is %v", metric, v))
		return
	}
	if r.res.vals[r.path] == nil {
		r.res.vals[r.path] = map[string]map[int]float64{}
	}
	if r.res.vals[r.path][metric] == nil {
		r.res.vals[r.path][metric] = map[int]float64{}
	}
	r.res.vals[r.path][metric][r.round] = v
}

// failMetric marks one figure as failed.
func (r recorder) failMetric(metric string, err error) {
	r.res.failMetric(r.round, r.path, metric, err)
}

// setText records a text figure (the last round's wins).
func (r recorder) setText(metric, s string) {
	if r.res.text[r.path] == nil {
		r.res.text[r.path] = map[string]string{}
	}
	r.res.text[r.path][metric] = s
}

// measures reports whether path p runs stage st.
func (p *path) measures(st stage) bool {
	for _, s := range p.stages {
		if s == st {
			return true
		}
	}
	return false
}

// cell formats the figure of metric d on path p: median over rounds, the
// median of the per-round ratios to direct, and the min–max over rounds.
func (b *bench) cell(res *results, d metricDef, p *path) string {
	switch {
	case p.key == "direct" && d.hopSide:
		return d.directNA
	case !p.measures(d.stage):
		return "—"
	case p.unavailable != "":
		return p.unavailable
	case res.failed[p.key][d.id]:
		return "ERROR (see below)"
	case d.text:
		if s := res.text[p.key][d.id]; s != "" {
			return s
		}
		return "MISSING"
	}
	byRound := res.vals[p.key][d.id]
	if len(byRound) == 0 {
		return "MISSING"
	}
	var vals, ratios []float64
	for r, v := range byRound {
		vals = append(vals, v)
		if base, ok := res.vals["direct"][d.id][r]; ok && base != 0 {
			ratios = append(ratios, v/base)
		}
	}
	s := formatNum(median(vals), d.digits)
	if p.key != "direct" && !d.hopSide && len(ratios) > 0 {
		s += fmt.Sprintf(" (×%.2f)", median(ratios))
	}
	if len(vals) > 1 {
		sort.Float64s(vals)
		s += fmt.Sprintf(" [%s–%s]", formatNum(vals[0], d.digits), formatNum(vals[len(vals)-1], d.digits))
	}
	return s
}

// formatNum formats v with the given decimals and thousands separators.
func formatNum(v float64, digits int) string {
	s := fmt.Sprintf("%.*f", digits, v)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var out []byte
	for i := range len(intPart) {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, intPart[i])
	}
	res := string(out)
	if neg {
		res = "-" + res
	}
	if frac != "" {
		res += "." + frac
	}
	return res
}

// label is d's row title with the RTT filled in.
func (b *bench) label(d metricDef) string {
	if strings.Contains(d.label, "%s") {
		return fmt.Sprintf(d.label, b.o.rtt)
	}
	return d.label
}

// report renders the whole result as Markdown: header, the table, the
// legend and any errors.
func (b *bench) report(res *results, paths []*path, took time.Duration) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# pgverifyproxy benchmark\n\n")
	fmt.Fprintf(&sb, "Command: `%s`  \n", commandLine())
	fmt.Fprintf(&sb, "Date: %s, %v in all  \n", time.Now().UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second))
	fmt.Fprintf(&sb, "Settings: %d round(s), pgbench -T %ss, COPY %d MB each way, %d idle connections, "+
		"%d (%d delayed) time-to-first-query samples, %v RTT, strace run -t %d × 8 clients, pgbench scale %d\n\n",
		b.o.rounds, seconds(b.o.duration), b.o.copyMB, b.o.idle, b.o.ttfqN, b.o.ttfqDelayedN, b.o.rtt, b.o.straceTx, b.o.scale)
	sb.WriteString("Machine and software:\n\n")
	for _, line := range b.machine {
		fmt.Fprintf(&sb, "- %s\n", line)
	}
	sb.WriteString("\n")
	sb.WriteString(b.table(res, paths))
	sb.WriteString("\n")
	for _, note := range b.notes() {
		fmt.Fprintf(&sb, "- %s\n", note)
	}
	if len(res.errs) > 0 {
		sb.WriteString("\n## Errors\n\n")
		for _, e := range res.errs {
			fmt.Fprintf(&sb, "- %s\n", strings.ReplaceAll(strings.TrimSpace(e), "\n", "\n  "))
		}
	}
	return sb.String()
}

// notes explain the table under it.
func (b *bench) notes() []string {
	return []string{
		fmt.Sprintf("Each cell: median over %d round(s) (×median of the per-round ratios to direct) [min–max over rounds]; "+
			"↑ higher is better, ↓ lower is better; \"—\": not measured on this path.", b.o.rounds),
		"Every path verifies the server like verify-full against the test root for the name localhost; the client leg of the hops " +
			"is plaintext on loopback; the md5 user throughout, except the SCRAM column (SCRAM without channel binding on the plaintext leg).",
		"Hop figures (CPU, syscalls, RSS) are of the process in the middle alone (all its threads), so they have no ratio; " +
			"RSS per idle connection is measured on a freshly started hop.",
		"PgBouncer pools server connections (session mode): pgbench -C and time to first query reuse a logged-in, TLS-verified " +
			"server connection, so those two rows measure pooling rather than a new verified TLS session.",
		"Time to first query: connect + \"select 1\" from Go (pgconn), close untimed. The delayed rows go through a user-space " +
			fmt.Sprintf("delay proxy (%v each way, plus one round trip per new TCP connection for the handshake) between the client ", b.o.rtt/2) +
			"or the hop and the server.",
		"The machine is small and shared: run-to-run spread is large, compare ratios within a round rather than absolute numbers across runs.",
	}
}

// table renders the figures as a padded Markdown table: a row per metric,
// a column per path.
func (b *bench) table(res *results, paths []*path) string {
	rows := [][]string{{"figure"}}
	for _, p := range paths {
		rows[0] = append(rows[0], p.title)
	}
	for _, d := range metricDefs {
		row := []string{b.label(d)}
		used := false
		for _, p := range paths {
			row = append(row, b.cell(res, d, p))
			used = used || (p.measures(d.stage) && p.unavailable == "")
		}
		if used {
			rows = append(rows, row)
		}
	}
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var sb strings.Builder
	writeRow := func(row []string) {
		sb.WriteString("|")
		for i, c := range row {
			fmt.Fprintf(&sb, " %s%s |", c, strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)))
		}
		sb.WriteString("\n")
	}
	writeRow(rows[0])
	sep := make([]string, len(widths))
	for i, w := range widths {
		sep[i] = strings.Repeat("-", w)
	}
	writeRow(sep)
	for _, row := range rows[1:] {
		writeRow(row)
	}
	return sb.String()
}
