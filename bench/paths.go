//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// stage is one group of measurements run on a path.
type stage int

const (
	stSelect      stage = iota // pgbench -S at 8 (with hop CPU) and 64 clients
	stStrace                   // syscalls per transaction under strace -c
	stConnRate                 // pgbench -S -C: new connections per second
	stTTFQ                     // time to first query, sequential connects
	stTTFQDelayed              // the same over the delayed (RTT) path
	stCopy                     // COPY TO STDOUT and COPY FROM STDIN
	stIdle                     // hop RSS per idle connection
)

// stageNames name the stages in progress and error messages.
var stageNames = map[stage]string{
	stSelect: "select", stStrace: "strace", stConnRate: "connection rate", stTTFQ: "time to first query",
	stTTFQDelayed: "time to first query (delayed)", stCopy: "copy", stIdle: "idle connections",
}

// path is one way of reaching the server: a column of the report.
type path struct {
	key    string // -paths name
	title  string // column title
	stages []stage
	// start starts the path (delayed: with the delay proxy upstream).
	start func(ctx context.Context, delayed bool) (*hop, error)
	// unavailable, when set, is printed in every cell instead of running.
	unavailable string
}

// allPaths are the paths in report order.
func (b *bench) allPaths() []*path {
	full := []stage{stSelect, stStrace, stConnRate, stTTFQ, stCopy, stIdle}
	paths := []*path{
		{key: "direct", title: "direct verify-full", stages: []stage{stSelect, stConnRate, stTTFQ, stTTFQDelayed, stCopy},
			start: func(ctx context.Context, delayed bool) (*hop, error) { return b.startDirect(ctx, delayed) }},
		{key: "pgverifyproxy", title: "pgverifyproxy", stages: []stage{stSelect, stStrace, stConnRate, stTTFQ, stTTFQDelayed, stCopy, stIdle},
			start: func(ctx context.Context, delayed bool) (*hop, error) { return b.startPGVP(ctx, false, delayed, 0) }},
		{key: "base", title: "pgverifyproxy (base)", stages: []stage{stSelect, stStrace, stConnRate, stTTFQ, stTTFQDelayed, stCopy, stIdle},
			start: func(ctx context.Context, delayed bool) (*hop, error) {
				return b.startPGVPBin(ctx, b.o.baseBin, false, delayed, 0)
			}},
		{key: "scram", title: "pgverifyproxy SCRAM user", stages: []stage{stSelect},
			start: func(ctx context.Context, delayed bool) (*hop, error) { return b.startPGVP(ctx, true, delayed, 0) }},
	}
	// The goroutine relay, the event loop's fallback, in the same rounds:
	// the before and after of the event loop in one run.
	gr := &path{key: "goroutine", title: "pgverifyproxy relay: goroutine", stages: []stage{stSelect, stStrace, stConnRate, stTTFQ, stTTFQDelayed, stCopy, stIdle},
		start: func(ctx context.Context, delayed bool) (*hop, error) {
			return b.startPGVP(ctx, false, delayed, 0, "--relay", "goroutine")
		}}
	if !b.hasRelay {
		gr.unavailable = "n/a (binary has no --relay)"
	}
	paths = append(paths, gr)
	if b.o.prewarm > 0 {
		p := &path{key: "prewarm", title: fmt.Sprintf("pgverifyproxy --prewarm %d", b.o.prewarm),
			stages: []stage{stConnRate, stTTFQ, stTTFQDelayed},
			start: func(ctx context.Context, delayed bool) (*hop, error) {
				return b.startPGVP(ctx, false, delayed, b.o.prewarm)
			}}
		pg := &path{key: "prewarm-goroutine", title: fmt.Sprintf("pgverifyproxy --prewarm %d, relay: goroutine", b.o.prewarm),
			stages: []stage{stConnRate, stTTFQ, stTTFQDelayed},
			start: func(ctx context.Context, delayed bool) (*hop, error) {
				return b.startPGVP(ctx, false, delayed, b.o.prewarm, "--relay", "goroutine")
			}}
		if !b.hasPrewarm {
			p.unavailable = "n/a (binary has no --prewarm)"
			pg.unavailable = p.unavailable
		} else if !b.hasRelay {
			pg.unavailable = "n/a (binary has no --relay)"
		}
		paths = append(paths, p, pg)
	}
	paths = append(paths,
		&path{key: "pgbouncer", title: "PgBouncer", stages: full,
			start: func(ctx context.Context, _ bool) (*hop, error) { return b.startPgBouncer(ctx) }},
		&path{key: "stunnel", title: "stunnel", stages: full,
			start: func(ctx context.Context, _ bool) (*hop, error) { return b.startStunnel(ctx) }},
	)
	if b.o.baseBin == "" {
		paths = slices.DeleteFunc(paths, func(p *path) bool { return p.key == "base" })
	}
	if b.o.focus != "" {
		var focused []*path
		for _, p := range paths {
			if p.stages = focusStages(b.o.focus, p.stages); len(p.stages) > 0 {
				focused = append(focused, p)
			}
		}
		paths = focused
	}
	return paths
}

// focuses are the -focus values and the stages each keeps: for select, the
// select-only runs and the syscall count; for connect, the connection rate
// and the times to first query.
var focuses = map[string][]stage{
	"select":  {stSelect, stStrace},
	"connect": {stConnRate, stTTFQ, stTTFQDelayed},
}

// focusStages keeps the stages of -focus focus.
func focusStages(focus string, stages []stage) []stage {
	keep := focuses[focus]
	var out []stage
	for _, st := range stages {
		if slices.Contains(keep, st) {
			out = append(out, st)
		}
	}
	return out
}

// selectPaths applies -paths (direct is always kept: it is the baseline).
func (b *bench) selectPaths() ([]*path, error) {
	all := b.allPaths()
	if b.o.paths == "" && b.o.focus != "" {
		// select: the figures the relay work is judged on, one column per
		// tool; connect: pgverifyproxy on each relay, with and without
		// prewarm.
		var out []*path
		for _, p := range all {
			switch {
			case p.key == "scram":
			case b.o.focus == "connect" && (p.key == "pgbouncer" || p.key == "stunnel"):
			default:
				out = append(out, p)
			}
		}
		return out, nil
	}
	if b.o.paths == "" {
		return all, nil
	}
	known := map[string]bool{}
	for _, p := range all {
		known[p.key] = true
	}
	want := map[string]bool{"direct": true}
	for _, k := range strings.Split(b.o.paths, ",") {
		k = strings.TrimSpace(k)
		if !known[k] {
			if k == "prewarm" {
				return nil, errors.New("-paths prewarm needs -prewarm N")
			}
			return nil, fmt.Errorf("-paths: unknown path %q (known: %s)", k, pathNames(all))
		}
		want[k] = true
	}
	var out []*path
	for _, p := range all {
		if want[p.key] {
			out = append(out, p)
		}
	}
	return out, nil
}

// rotate returns paths rotated left by r, so each round starts elsewhere.
func rotate(paths []*path, r int) []*path {
	n := len(paths)
	out := make([]*path, n)
	for i := range paths {
		out[i] = paths[(i+r)%n]
	}
	return out
}

// pathNames lists the keys of paths.
func pathNames(paths []*path) string {
	var names []string
	for _, p := range paths {
		names = append(names, p.key)
	}
	return strings.Join(names, ", ")
}

// fatalError marks errors that end the whole run (a hop that does not
// start or dies), as opposed to one failed measurement.
type fatalError struct{ err error }

// Error returns the wrapped error's text.
func (e fatalError) Error() string { return e.err.Error() }

// Unwrap returns the wrapped error.
func (e fatalError) Unwrap() error { return e.err }

// runPath starts p, runs its stages, recording each figure for round r,
// and stops it. A failed measurement is recorded and the run goes on; a
// hop that does not start or dies ends the run.
func (b *bench) runPath(ctx context.Context, r int, p *path, res *results) error {
	if p.unavailable != "" {
		logf("  %s: %s", p.key, p.unavailable)
		return nil
	}
	logf("  %s: starting", p.key)
	h, err := p.start(ctx, false)
	if err != nil {
		return err
	}
	defer h.stop()
	rec := recorder{res: res, path: p.key, round: r}
	for _, st := range p.stages {
		if err := ctx.Err(); err != nil {
			return err
		}
		if st == stIdle && h.proc != nil {
			// Measure idle memory on a fresh process: nothing pooled
			// (PgBouncer keeps server connections) from earlier stages.
			h.stop()
			if err := b.waitBackendsGone(ctx); err != nil {
				return err
			}
			if h, err = p.start(ctx, false); err != nil {
				return err
			}
			defer h.stop()
		}
		t0 := time.Now()
		err := b.runStage(ctx, p, h, st, rec)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var fatal fatalError
		if errors.As(err, &fatal) {
			return err
		}
		if h.proc != nil && h.proc.Exited() {
			return fmt.Errorf("%s exited during %s (%v)\n---- log tail (%s) ----\n%s",
				p.key, stageNames[st], h.proc.Cmd.ProcessState, h.proc.log, h.proc.logTail(30))
		}
		if err != nil {
			logf("  %s: %s FAILED: %v", p.key, stageNames[st], err)
			res.fail(r, p.key, st, err)
			continue
		}
		if b.o.verbose {
			logf("  %s: %s took %v", p.key, stageNames[st], time.Since(t0).Round(time.Millisecond))
		}
	}
	h.stop()
	return b.waitBackendsGone(ctx)
}

// runStage runs one stage of measurements on hop h of path p.
func (b *bench) runStage(ctx context.Context, p *path, h *hop, st stage, rec recorder) error {
	switch st {
	case stSelect:
		return b.measureSelect(ctx, h, rec)
	case stStrace:
		return b.measureStrace(ctx, h, rec)
	case stConnRate:
		return b.measureConnRate(ctx, h, rec)
	case stTTFQ:
		return b.measureTTFQ(ctx, h.ep, b.o.ttfqN, mTTFQ, mTTFQp99, rec)
	case stTTFQDelayed:
		dh, err := p.start(ctx, true)
		if err != nil {
			return fatalError{fmt.Errorf("delayed %s: %w", p.key, err)}
		}
		defer dh.stop()
		return b.measureTTFQ(ctx, dh.ep, b.o.ttfqDelayedN, mTTFQD, mTTFQDp99, rec)
	case stCopy:
		return b.measureCopy(ctx, h, rec)
	case stIdle:
		return b.measureIdle(ctx, h, rec)
	}
	return fmt.Errorf("unknown stage %d", st)
}

// waitBackendsGone waits (up to 60s) until no session of the test users
// is left on the server, so that one path's leftovers do not count
// against the next; it only warns when some remain.
func (b *bench) waitBackendsGone(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, b.cluster.AdminConnString())
	if err != nil {
		return fatalError{fmt.Errorf("connecting as superuser: %w", err)}
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename IN ($1, $2)",
			harness.MD5User, harness.ScramUser).Scan(&n)
		if err != nil {
			return fatalError{fmt.Errorf("counting sessions: %w", err)}
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			logf("warning: %d sessions of the test users still open after 60s", n)
			return nil
		}
		if err := harness.Sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}
