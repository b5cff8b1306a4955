//go:build linux

package integration

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/integration/soakrun"
)

// The soak's size. The defaults are what go test ./... runs (in CI too); a
// long run passes flags after the package:
//
//	go test ./integration -run TestSoak -v -timeout 30m -soak.duration 10m -soak.clients 200
var (
	soakDuration = flag.Duration("soak.duration", 20*time.Second, "TestSoak: how long the clients run")
	soakClients  = flag.Int("soak.clients", 200, "TestSoak: concurrent clients (1 to 2000)")
	soakSeed     = flag.Int64("soak.seed", 0, "TestSoak: seed of the clients' random choices (0: from the clock; the summary shows it)")
	soakSettle   = flag.Duration("soak.settle", soakrun.DefaultSettleTimeout, "TestSoak: how long the proxy may take to return to its baseline after the last client")
	soakKeep     = flag.Bool("soak.keep", false, "TestSoak: keep the work directory (the proxy's log, the PKI root)")
	soakVerbose  = flag.Bool("soak.verbose", false, "TestSoak: log every unexpected error as it happens and the proxy's figures every 5s (shown as they happen with -v)")
	soakRelays   = flag.String("soak.relays", defaultSoakRelays(), "TestSoak: the relay engines to soak, one run each, comma-separated")
)

// defaultSoakRelays is every engine of this system: on Linux the loop,
// the goroutine engine and the portable one.
func defaultSoakRelays() string {
	if harness.DefaultRelay() == "loop" {
		return "loop,goroutine,portable"
	}
	return "portable"
}

// soakMargin is what a soak needs besides -soak.duration: its own cluster,
// the warm-up, the settling and the cleanup.
const soakMargin = 2 * time.Minute

// TestSoak runs pgverifyproxy under a long, mixed load and fails on any
// unexpected error or leak; it is the one entry point of the soak
// (integration/soakrun). By default 200 clients for 20s, once per relay
// engine (a subtest each); -soak.duration, -soak.clients, -soak.relays and
// the other -soak.* flags above change that.
//
// It starts a PKI and a PostgreSQL of its own (max_connections
// 2×clients+20, so reconnects never hit it) and the binary TestMain built
// in front, with --admin on a free loopback port, --max-connections
// 2×clients+10 and two routes: one with the default settings, one in auth
// relay. After a warm-up (every operation once on every leg as every
// user) it records the proxy's baseline: go_goroutines and
// process_open_fds from /metrics, and the entries of /proc/PID/fd, each the
// minimum of eight readings while no session is open.
//
// Then the clients run, half on each route, each connecting on a random
// leg (plaintext, sslmode=require, or sslmode=require with
// sslnegotiation=direct) as the md5 or the SCRAM test user and looping
// over a random mix of: "select 1"; a prepared select with parameters
// whose result is checked; a transaction inserting into the client's own
// table then committed or rolled back, with the row count checked; COPY
// FROM STDIN of 80–500 KB then COPY TO STDOUT, compared by length and
// SHA-256; a CancelRequest through the proxy ending pg_sleep (SQLSTATE
// 57014, and the session still works); an idle pause; a reconnect
// (Terminate); and an abrupt close of the socket, idle or mid-query.
//
// It fails on any unexpected client error, any warning, error or panic in
// the proxy's log, a proxy exit, or a proxy that is not back at its
// baseline within -soak.settle of the last client leaving: no session
// active, goroutines at most baseline+2 (the Go runtime's finalizer and
// cleanup goroutines count while they run), open fds at most baseline+0.
// A leaking proxy is sent SIGQUIT and its goroutines are summarized by
// function. The logged summary lists operations by kind, connections by
// leg and user, bytes, errors with the first messages, and goroutines,
// fds, sessions, threads and RSS before/peak/after.
//
// Ctrl-C (SIGINT) or SIGTERM stops the clients, the proxy and the soak's
// PostgreSQL, and removes the work directory before the test fails.
func TestSoak(t *testing.T) {
	relays := strings.Split(*soakRelays, ",")
	if deadline, ok := t.Deadline(); ok {
		// go test's -timeout (10m unless given) ends the whole binary with
		// a panic and no cleanup: refuse soaks that cannot fit.
		need := time.Duration(len(relays)) * (*soakDuration + soakMargin)
		if left := time.Until(deadline); left < need {
			t.Fatalf("%d soaks of %v need about %v, and go test's -timeout leaves %v: pass -timeout %dm (or more), or fewer -soak.relays",
				len(relays), *soakDuration, need, left.Round(time.Second), int((need+5*time.Minute)/time.Minute))
		}
	}
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) { soak(t, strings.TrimSpace(relay)) })
	}
}

// soak runs one soak with the relay engine relay.
func soak(t *testing.T, relay string) {
	o := soakrun.Options{
		Duration:      *soakDuration,
		Clients:       *soakClients,
		Seed:          *soakSeed,
		SettleTimeout: *soakSettle,
		Keep:          *soakKeep,
		Verbose:       *soakVerbose,
		Bin:           binPath,
		Relay:         relay,
		Logf: func(format string, args ...any) {
			t.Logf("%s %s", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
		},
	}
	if o.Duration < time.Second || o.Clients < 1 || o.Clients > 2000 {
		t.Fatalf("-soak.duration must be at least 1s and -soak.clients between 1 and 2000 (got %v, %d)", o.Duration, o.Clients)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+soakMargin)
	defer cancel()
	if deadline, ok := t.Deadline(); ok {
		// End a soak that overruns early enough to clean up.
		var cancelD context.CancelFunc
		ctx, cancelD = context.WithDeadline(ctx, deadline.Add(-30*time.Second))
		defer cancelD()
	}
	ctx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	r := soakrun.New(o)
	t.Cleanup(r.Cleanup)
	res, err := r.Run(ctx)
	if err != nil && ctx.Err() != nil {
		t.Fatalf("soak: stopped (everything it started is cleaned up): %v", context.Cause(ctx))
	}
	if err != nil {
		t.Fatalf("soak: %v", err)
	}
	t.Logf("\n%s", res.Summary())
	for _, f := range res.Failures {
		t.Errorf("soak: %s", f)
	}
	// The run must have exercised everything it claims to.
	for i, name := range soakrun.OpNames() {
		if res.Ops[i] == 0 {
			t.Errorf("soak: no successful %s operation", name)
		}
	}
	for leg, n := range res.Connections {
		if n == 0 {
			t.Errorf("soak: no connection on %s", leg)
		}
	}
	if res.CopyBytesIn == 0 || res.CopyBytesIn != res.CopyBytesOut {
		t.Errorf("soak: COPY bytes in %d, out %d", res.CopyBytesIn, res.CopyBytesOut)
	}
	if res.Peak.Sessions < o.Clients/2 {
		t.Errorf("soak: at most %d sessions open at once, want at least %d of the %d clients", res.Peak.Sessions, o.Clients/2, o.Clients)
	}
}
