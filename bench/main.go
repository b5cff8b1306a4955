//go:build linux

// Command bench compares, side by side, four ways to reach a PostgreSQL
// server over TLS verified like libpq's sslmode=verify-full: connecting
// directly, and through pgverifyproxy, PgBouncer and stunnel. It starts its
// own PKI and PostgreSQL 15 (with internal/testpki and the integration
// harness), measures every path in rounds whose order rotates (so drift of a
// shared machine hits all paths alike) and prints one table of medians with
// their ratios to the direct path of the same round. It installs nothing:
// when PgBouncer, stunnel or strace is missing it prints the apt-get command
// that installs them and exits with status 1.
//
//	go run ./bench            # full run (about 20 minutes)
//	go run ./bench -quick     # smoke test (about a minute)
//
// See bench/README.md for what each figure means.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// options are the command-line flags.
type options struct {
	rounds       int
	duration     time.Duration
	copyMB       int
	idle         int
	ttfqN        int
	ttfqDelayedN int
	rtt          time.Duration
	straceTx     int
	prewarm      int
	scale        int
	out          string
	bin          string
	baseBin      string
	paths        string
	focus        string
	quick        bool
	keep         bool
	verbose      bool
}

// parseFlags reads the command line, applying -quick's small sizes to
// every flag not given explicitly.
func parseFlags() options {
	var o options
	flag.IntVar(&o.rounds, "rounds", 3, "measurement rounds; the order of the paths rotates each round")
	flag.DurationVar(&o.duration, "duration", 15*time.Second, "length of each pgbench -T run (whole seconds)")
	flag.IntVar(&o.copyMB, "copy-mb", 320, "MB (10^6 bytes) relayed by each COPY TO and COPY FROM")
	flag.IntVar(&o.idle, "idle", 1000, "idle connections opened through each hop for the memory figure")
	flag.IntVar(&o.ttfqN, "ttfq-n", 200, "sequential connect+query samples for time to first query")
	flag.IntVar(&o.ttfqDelayedN, "ttfq-delayed-n", 100, "samples for time to first query over the delayed path")
	flag.DurationVar(&o.rtt, "rtt", 20*time.Millisecond, "round-trip time of the delayed path (half each way)")
	flag.IntVar(&o.straceTx, "strace-t", 2000, "pgbench -t (per client, 8 clients) for the syscall count under strace")
	flag.IntVar(&o.prewarm, "prewarm", 0, "also measure pgverifyproxy --prewarm N (connection figures) when N > 0")
	flag.IntVar(&o.scale, "scale", 10, "pgbench -i scale factor of the select-only data set")
	flag.StringVar(&o.out, "out", "bench/results.md", "write the results as Markdown here (with -quick: bench/results-quick.md unless given)")
	flag.StringVar(&o.bin, "bin", "", "use this pgverifyproxy binary instead of building ./cmd/pgverifyproxy")
	flag.StringVar(&o.baseBin, "base-bin", "", "also measure this pgverifyproxy binary (an earlier build), in the same rounds: the before and after of a change in one run (path base)")
	flag.StringVar(&o.paths, "paths", "", "comma-separated subset of paths to run (direct always runs): pgverifyproxy,base,goroutine,scram,prewarm,prewarm-goroutine,pgbouncer,stunnel (base: with -base-bin)")
	flag.StringVar(&o.focus, "focus", "", `"select": only the select-only figures (TPS, latency, hop CPU, context switches, syscalls); "connect": only the connection figures (new connections/s, time to first query, also over the RTT) of pgverifyproxy on each relay, with and without -prewarm (default 4); 5 rounds of 10s`)
	flag.BoolVar(&o.quick, "quick", false, "smoke test: 4s runs, 16 MB COPY, 50 idle, 1 round")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs and hop logs) after the run")
	flag.BoolVar(&o.verbose, "v", false, "print every command the bench runs")
	flag.Parse()
	if o.focus != "" {
		applyFocus(&o)
	}
	if o.quick {
		applyQuick(&o)
	}
	return o
}

// applyFocus sets -focus's defaults on every flag not set on the command
// line: 5 rounds of 10 s fit in about 15 minutes on 2 cores.
func applyFocus(o *options) {
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["rounds"] {
		o.rounds = 5
	}
	if !set["duration"] {
		o.duration = 10 * time.Second
	}
	if !set["strace-t"] {
		o.straceTx = 1000
	}
	if !set["prewarm"] && o.focus == "connect" {
		o.prewarm = 4
	}
	if !set["out"] {
		o.out = "bench/results-" + o.focus + ".md"
	}
}

// applyQuick shrinks every size that was not set on the command line.
func applyQuick(o *options) {
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	quick := []struct {
		name  string
		apply func()
	}{
		{"rounds", func() { o.rounds = 1 }},
		{"duration", func() { o.duration = 4 * time.Second }},
		{"copy-mb", func() { o.copyMB = 16 }},
		{"idle", func() { o.idle = 50 }},
		{"ttfq-n", func() { o.ttfqN = 20 }},
		{"ttfq-delayed-n", func() { o.ttfqDelayedN = 10 }},
		{"strace-t", func() { o.straceTx = 200 }},
		{"scale", func() { o.scale = 1 }},
		{"out", func() { o.out = "bench/results-quick.md" }},
	}
	for _, q := range quick {
		if !set[q.name] {
			q.apply()
		}
	}
}

// validate rejects flag values that cannot give a meaningful result.
func (o options) validate() error {
	switch {
	case o.rounds < 1:
		return errors.New("-rounds must be at least 1")
	case o.duration < 4*time.Second:
		return errors.New("-duration must be at least 4s (the hop is sampled from the first progress report, after the clients connect, to 0.5s before the run can end, for at least 2s)")
	case o.focus != "" && focuses[o.focus] == nil:
		return fmt.Errorf("-focus %q: select or connect", o.focus)
	case o.copyMB < 1:
		return errors.New("-copy-mb must be at least 1")
	case o.idle < 1 || o.idle > 1100:
		return errors.New("-idle must be between 1 and 1100 (max_connections is 1200)")
	case o.ttfqN < 2 || o.ttfqDelayedN < 2:
		return errors.New("-ttfq-n and -ttfq-delayed-n must be at least 2")
	case o.rtt <= 0:
		return errors.New("-rtt must be positive")
	case o.straceTx < 1:
		return errors.New("-strace-t must be at least 1")
	case o.prewarm < 0:
		return errors.New("-prewarm must not be negative")
	case o.scale < 1:
		return errors.New("-scale must be at least 1")
	}
	if fi, err := os.Stat(filepath.Dir(o.out)); err != nil || !fi.IsDir() {
		return fmt.Errorf("-out %s: directory %s does not exist (run from the repository root or set -out)", o.out, filepath.Dir(o.out))
	}
	if o.paths == "" {
		return nil
	}
	for _, k := range strings.Split(o.paths, ",") {
		switch k = strings.TrimSpace(k); k {
		case "direct", "pgverifyproxy", "goroutine", "scram", "pgbouncer", "stunnel":
		case "base":
			if o.baseBin == "" {
				return errors.New("-paths base needs -base-bin PATH")
			}
		case "prewarm", "prewarm-goroutine":
			if o.prewarm == 0 {
				return fmt.Errorf("-paths %s needs -prewarm N", k)
			}
			if o.focus == "select" {
				return fmt.Errorf("-paths %s: --prewarm has no select figures (-focus select)", k)
			}
		default:
			return fmt.Errorf("-paths: unknown path %q (known: direct, pgverifyproxy, base, goroutine, scram, prewarm, prewarm-goroutine, pgbouncer, stunnel)", k)
		}
	}
	return nil
}

// main runs the bench and cleans up; it exits 1 when setup or any
// measurement failed, 130 when interrupted.
func main() {
	o := parseFlags()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl := &harness.Cleanups{}
	harness.CancelOnSignal(cancel, cl.Run, logf)
	err := run(ctx, o, cl)
	cl.Run()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "bench: error:", err)
		os.Exit(1)
	}
}

// logf prints a progress line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// commandLine is how the bench was invoked, for the report.
func commandLine() string {
	prog := os.Args[0]
	if strings.Contains(prog, "go-build") {
		prog = "go run ./bench"
	}
	parts := []string{prog}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// run sets everything up, measures every path in every round and reports.
func run(ctx context.Context, o options, cl *harness.Cleanups) error {
	start := time.Now()
	b, err := setup(ctx, o, cl)
	if err != nil {
		return err
	}
	res := newResults()
	paths, err := b.selectPaths()
	if err != nil {
		return err
	}
	for r := 0; r < o.rounds; r++ {
		order := rotate(paths, r)
		logf("round %d/%d: %s", r+1, o.rounds, pathNames(order))
		for _, p := range order {
			if err := b.runPath(ctx, r, p, res); err != nil {
				return err
			}
		}
	}
	rep := b.report(res, paths, time.Since(start))
	fmt.Println(rep)
	if err := os.WriteFile(o.out, []byte(rep), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", o.out, err)
	}
	logf("wrote %s (%v in all)", o.out, time.Since(start).Round(time.Second))
	if n := res.errorCount(); n > 0 {
		return fmt.Errorf("%d measurement(s) failed (listed under the table)", n)
	}
	return nil
}
