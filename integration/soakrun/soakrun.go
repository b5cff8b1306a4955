// Package soakrun is the soak test of pgverifyproxy: it starts its own PKI
// (internal/testpki) and PostgreSQL with TLS (integration/harness), the real
// pgverifyproxy binary in front with --admin, and then drives many concurrent
// pgx clients through the proxy for a given duration with a random mix of
// short queries, transactions, COPY both ways with checksums, cancels,
// reconnects and abrupt disconnects, over plaintext, sslmode=require and
// direct-TLS client legs with md5 and SCRAM users.
//
// It records the proxy's goroutines and open file descriptors (from
// /metrics and /proc/PID/fd) before the load, their peak during it, and
// waits after the last client has gone for them to return to the baseline.
// Any unexpected client error, proxy warning, proxy exit or leak is a
// failure of the run (Result.Failures).
//
// TestSoak in package integration (go test ./integration -run TestSoak
// -soak.duration 10m) is its one entry point: a thin wrapper around Runner
// that gives it the binary TestMain built and its flags.
package soakrun

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// Leak slack: how far above the baseline the proxy's figures may stay once
// every client has gone and the wait has ended.
const (
	// GoroutineSlack allows for the Go runtime's finalizer and cleanup
	// goroutines: runtime.NumGoroutine (go_goroutines) counts each of them
	// only while it runs finalizers or cleanups, which it does after the
	// garbage collections that free the closed sessions' connections, at
	// times no polling can predict. A leaked session holds at least one
	// goroutine and two fds (client and upstream socket), so the fd check,
	// which has no slack, catches it even when it hides in this slack.
	GoroutineSlack = 2
	// FDSlack is zero: every file descriptor a session opens (client and
	// upstream socket) must be closed once it ends. Transient ones (the
	// admin's periodic upstream probe, the scrape's own connection, which
	// is in the baseline too) are waited out by polling, not by slack.
	FDSlack = 0
)

// DefaultSettleTimeout bounds the wait for the proxy's goroutines and fds
// to return to the baseline after the last client closed.
const DefaultSettleTimeout = 15 * time.Second

// Options configure a soak run.
type Options struct {
	// Duration is how long the clients run their operations.
	Duration time.Duration
	// Clients is the number of concurrent clients.
	Clients int
	// Bin is the pgverifyproxy binary to run. Required.
	Bin string
	// Relay is the proxy's relay engine (loop, goroutine or portable);
	// empty: its default (harness.DefaultRelay). Every session must be
	// relayed by it.
	Relay string
	// Keep leaves the work directory (proxy log, PKI) in place.
	Keep bool
	// Verbose logs every unexpected error as it happens and a sample of
	// the proxy's figures every 5 seconds.
	Verbose bool
	// SettleTimeout bounds the wait for the figures to return to the
	// baseline; default DefaultSettleTimeout.
	SettleTimeout time.Duration
	// Seed seeds the clients' random choices; 0: from the clock.
	Seed int64
	// Logf receives progress lines; nil: discarded.
	Logf func(format string, args ...any)
}

// validate checks the options and fills in defaults.
func (o *Options) validate() error {
	switch {
	case o.Duration < time.Second:
		return errors.New("options: duration must be at least 1s")
	case o.Clients < 1:
		return errors.New("options: clients must be at least 1")
	case o.Clients > 2000:
		return errors.New("options: clients must be at most 2000")
	case o.Bin == "":
		return errors.New("options: no pgverifyproxy binary")
	}
	if o.SettleTimeout <= 0 {
		o.SettleTimeout = DefaultSettleTimeout
	}
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano()
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// Runner runs one soak. Cleanup may be called from another goroutine (a
// second Ctrl-C) to stop the proxy and the cluster at once.
type Runner struct {
	o Options

	cleanups harness.Cleanups

	mu       sync.Mutex // guards work
	work     string
	rootFile string
	pki      *testpki.PKI
	cluster  *harness.Cluster
	bin      string
	proxy    *proxyProc
}

// New returns a Runner for o.
func New(o Options) *Runner {
	return &Runner{o: o}
}

// addCleanup pushes fn on the cleanup stack.
func (r *Runner) addCleanup(fn func()) { r.cleanups.Add(fn) }

// Cleanup stops the proxy and the cluster and removes the work directory
// (unless Keep), last started first. It is idempotent and safe to call
// concurrently with Run.
func (r *Runner) Cleanup() { r.cleanups.Run() }

// WorkDir is the run's work directory (empty before Run created it).
func (r *Runner) WorkDir() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.work
}

// Run sets everything up, runs the load, checks for leaks and cleans up.
// An error means the run could not be carried out (setup failed or ctx
// was cancelled); the findings of a completed run are in
// Result.Failures.
func (r *Runner) Run(ctx context.Context) (*Result, error) {
	if err := r.o.validate(); err != nil {
		return nil, err
	}
	defer r.Cleanup()
	start := time.Now()
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"work directory", r.setupWorkDir},
		{"pki", r.setupPKI},
		{"pgverifyproxy binary", r.setupBinary},
		{"postgresql", r.setupCluster},
		{"tables", r.setupTables},
		{"proxy", r.setupProxy},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("setup: %s: %w", s.what, err)
		}
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("setup: %s: %w", s.what, err)
		}
	}
	res, err := r.soak(ctx)
	if err != nil {
		return nil, err
	}
	r.stopProxy(res)
	res.Wall = time.Since(start)
	return res, nil
}

// setupWorkDir creates the work directory (0755: the proxy and its files
// are the run's own, but the cluster user may need to traverse /tmp).
func (r *Runner) setupWorkDir(context.Context) error {
	dir, err := os.MkdirTemp("", "pgvp-soak-")
	if err != nil {
		return fmt.Errorf("creating work directory: %w", err)
	}
	r.mu.Lock()
	r.work = dir
	r.mu.Unlock()
	if r.o.Keep {
		r.o.Logf("work directory %s (kept)", dir)
	} else {
		r.addCleanup(func() { os.RemoveAll(dir) })
	}
	return nil
}

// setupPKI generates the test PKI and writes its root for --ca-file.
func (r *Runner) setupPKI(context.Context) error {
	var err error
	if r.pki, err = testpki.NewPKI(); err != nil {
		return err
	}
	r.rootFile = filepath.Join(r.work, "root.crt")
	return testpki.WritePEMFile(r.rootFile, r.pki.Root.CertPEM)
}

// setupBinary checks that Options.Bin is there.
func (r *Runner) setupBinary(context.Context) error {
	if _, err := os.Stat(r.o.Bin); err != nil {
		return err
	}
	r.bin = r.o.Bin
	return nil
}

// pgMaxConnections is the cluster's max_connections for n clients: every
// client's backend, the same again for reconnects whose old backend has
// not exited yet, and room for the admin connection and cancel backends.
func pgMaxConnections(n int) int { return 2*n + 20 }

// proxyMaxConnections is the proxy's --max-connections for n clients:
// above n (a reconnecting client's new session may be admitted before the
// proxy has counted its old one out, and cancel requests are sessions
// too), below the cluster's limit so that the proxy, not PostgreSQL,
// would refuse first.
func proxyMaxConnections(n int) int { return 2*n + 10 }

// setupCluster starts PostgreSQL with TLS and max_connections raised for
// the clients (ExtraConf comes after the harness's max_connections = 200
// in postgresql.conf, and the later line wins).
func (r *Runner) setupCluster(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	want := pgMaxConnections(r.o.Clients)
	extra := fmt.Sprintf("max_connections = %d\nlog_connections = off\n", want)
	c, err := harness.StartCluster(sctx, harness.ClusterOptions{
		ServerCertPEM: r.pki.Leaf.ChainPEM(r.pki.Intermediate),
		ServerKeyPEM:  r.pki.Leaf.KeyPEM,
		ExtraConf:     extra,
		Logf: func(f string, a ...any) {
			if r.o.Verbose {
				r.o.Logf("harness: "+f, a...)
			}
		},
	})
	if err != nil {
		return err
	}
	r.cluster = c
	r.addCleanup(func() {
		if err := c.Stop(); err != nil {
			r.o.Logf("stopping postgresql: %v", err)
		}
	})
	r.o.Logf("postgresql on %s (max_connections %d)", c.Addr(), want)
	return nil
}
