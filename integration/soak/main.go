//go:build linux

// Command soak runs pgverifyproxy under a long, mixed load and fails on any
// unexpected error or leak.
//
//	go run ./integration/soak -duration 10m -clients 200
//	go run ./integration/soak -duration 20s            # what TestSoak runs in CI
//
// It makes a private PKI, starts PostgreSQL with TLS (the integration
// harness; max_connections 2×clients+20, so reconnects never hit it),
// builds ./cmd/pgverifyproxy and starts it in front with --admin on a free
// loopback port and --max-connections 2×clients+10. After a warm-up (every
// operation once on every leg as every user) it records the proxy's
// baseline: go_goroutines and process_open_fds from /metrics, and the
// entries of /proc/PID/fd, each the minimum of eight readings while no
// session is open.
//
// Then -clients pgx clients run for -duration, each connecting on a random
// leg (plaintext, sslmode=require, or sslmode=require with
// sslnegotiation=direct) as the md5 or the SCRAM test user and looping over
// a random mix of: "select 1"; a prepared select with parameters whose
// result is checked; a transaction inserting into the client's own table
// then committed or rolled back, with the row count checked; COPY FROM
// STDIN of 80–500 KB then COPY TO STDOUT, compared by length and SHA-256;
// a CancelRequest through the proxy ending pg_sleep (SQLSTATE 57014, and
// the session still works); an idle pause; a reconnect (Terminate); and an
// abrupt close of the socket, idle or mid-query. Every unexpected error
// counts, as does every warning, error or panic in the proxy's log.
//
// When the time is up every client closes its connection, and the proxy
// must be back at the baseline within 15s: no session active, goroutines at
// most baseline+2 (the Go runtime's finalizer and cleanup goroutines count
// while they run, after the GCs that free the closed sessions), open fds at
// most baseline+0 (every socket of a session must be closed; transient ones
// such as the readiness probe's are waited out). If not, the proxy is sent
// SIGQUIT and its goroutines are summarized by function. The summary lists
// clients, duration, operations by kind, connections by leg and user,
// bytes, errors with the first messages, goroutines, fds, sessions,
// threads and RSS before/peak/after. The exit status is 0 when the run
// passed, 1 when it found an error or a leak or could not run, 2 for bad
// flags, 130 when interrupted.
//
// Everything it starts (PostgreSQL, the proxy) is stopped and its work
// directory removed at the end, on failure and on Ctrl-C (a second Ctrl-C,
// or 30s without unwinding, forces the cleanup). -keep keeps the work
// directory (the proxy's log, the PKI root); -v logs every error as it
// happens and the proxy's figures every 5s; -bin uses a given binary.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/integration/soakrun"
)

func main() {
	var o soakrun.Options
	flag.DurationVar(&o.Duration, "duration", 10*time.Minute, "how long the clients run")
	flag.IntVar(&o.Clients, "clients", 200, "concurrent clients")
	flag.BoolVar(&o.Verbose, "v", false, "log every unexpected error as it happens and the proxy's figures every 5s")
	flag.BoolVar(&o.Keep, "keep", false, "keep the work directory (proxy log, PKI root) after the run")
	flag.StringVar(&o.Bin, "bin", "", "use this pgverifyproxy binary instead of building ./cmd/pgverifyproxy")
	flag.Int64Var(&o.Seed, "seed", 0, "seed of the clients' random choices (0: from the clock)")
	flag.DurationVar(&o.SettleTimeout, "settle", soakrun.DefaultSettleTimeout, "how long the proxy may take to return to its baseline after the last client")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "soak: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if o.Duration < time.Second || o.Clients < 1 || o.Clients > 2000 {
		fmt.Fprintln(os.Stderr, "soak: -duration must be at least 1s and -clients between 1 and 2000")
		os.Exit(2)
	}
	o.Logf = logf

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := soakrun.New(o)
	harness.CancelOnSignal(cancel, r.Cleanup, logf)

	res, err := r.Run(ctx)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "soak: interrupted")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "soak: error:", err)
		os.Exit(1)
	}
	fmt.Print(res.Summary())
	if !res.OK() {
		os.Exit(1)
	}
}

// logf prints a progress line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s soak: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
