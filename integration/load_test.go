//go:build linux

package integration

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// loadDuration, loadClients and loadQueryLimit size TestLoginLoad, as issue
// 14 sets them.
const (
	loadDuration   = 20 * time.Second
	loadClients    = 64
	loadQueryLimit = 5 * time.Second
)

// loadLeg is how one client connects: its user and sslmode options.
type loadLeg struct {
	user, password, opts string
}

// loadRoute is one proxy of the load test and the legs its clients use.
type loadRoute struct {
	auth proxy.AuthMode
	legs []loadLeg
	p    *runningProxy

	conns, errs, hung atomic.Int64
	mu                sync.Mutex
	lat               []time.Duration // query latencies
	firstErr          error
}

// TestLoginLoad is issue 14's load test: 64 clients open and close
// connections as fast as they can for 20 s, while 2 busy loops load the
// CPU, through routes in auth auto, relay and passthrough; each connection
// runs one query. Every query must answer within 5 s (no session whose
// server bytes were lost), no connection may fail, and the server must
// count exactly one login per client connection (pg_stat_database.sessions
// of a database of the test's own).
func TestLoginLoad(t *testing.T) {
	const db = "pgvp_load"
	ctx := context.Background()
	for _, sql := range []string{"DROP DATABASE IF EXISTS " + db + " WITH (FORCE)", "CREATE DATABASE " + db} {
		if err := cluster.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })

	scram := func(opts string) loadLeg { return loadLeg{harness.ScramUser, harness.ScramPassword, opts} }
	md5 := func(opts string) loadLeg { return loadLeg{harness.MD5User, harness.MD5Password, opts} }
	routes := []*loadRoute{
		// TLS + SCRAM is where auto logs in itself; the rest pass through.
		{auth: proxy.AuthAuto, legs: []loadLeg{scram("sslmode=require"), scram("sslmode=disable"), md5("sslmode=require")}},
		{auth: proxy.AuthRelay, legs: []loadLeg{scram("sslmode=disable"), scram("sslmode=require"), md5("sslmode=disable")}},
		{auth: proxy.AuthPassthrough, legs: []loadLeg{scram("sslmode=disable"), scram("sslmode=require channel_binding=disable"), md5("sslmode=require")}},
	}
	for _, r := range routes {
		r.p = startProxy(t, proxyOpts{auth: r.auth})
	}

	// Two busy loops, as many as the machine has cores.
	for range 2 {
		busy := exec.Command("sh", "-c", "while :; do :; done")
		if err := busy.Start(); err != nil {
			t.Fatalf("starting a busy loop: %v", err)
		}
		t.Cleanup(func() { _ = busy.Process.Kill(); _ = busy.Wait() })
	}

	stop := time.Now().Add(loadDuration)
	var wg sync.WaitGroup
	for i := range loadClients {
		r := routes[i%len(routes)]
		leg := r.legs[(i/len(routes))%len(r.legs)]
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s connect_timeout=30 %s", r.p.port, leg.user, leg.password, db, leg.opts)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(stop); n++ {
				if !r.once(dsn, fmt.Sprintf("select %d", n)) {
					return
				}
			}
		}()
	}
	wg.Wait()

	var total int64
	for _, r := range routes {
		total += r.conns.Load()
		slices.Sort(r.lat)
		t.Logf("auth %-11s %5d connections, %d errors, %d hung; query p50 %v, p99 %v, max %v",
			r.auth, r.conns.Load(), r.errs.Load(), r.hung.Load(), pct(r.lat, 50), pct(r.lat, 99), pct(r.lat, 100))
		if r.errs.Load() != 0 || r.hung.Load() != 0 {
			t.Errorf("auth %s: %d errors, %d hung sessions; the first: %v", r.auth, r.errs.Load(), r.hung.Load(), r.firstErr)
		}
		if r.conns.Load() == 0 {
			t.Errorf("auth %s: no connection made", r.auth)
		}
	}
	// The server's count of logins to the test's database: each backend
	// reports its session when it ends, so poll until it settles.
	var sessions int64
	waitFor(t, "the server's session count to reach the client connections", func() bool {
		err := adminQueryRow(ctx, "select sessions from pg_stat_database where datname = '"+db+"'", &sessions)
		return err == nil && sessions >= total
	})
	time.Sleep(2 * time.Second) // a late extra login would show now
	if err := adminQueryRow(ctx, "select sessions from pg_stat_database where datname = '"+db+"'", &sessions); err != nil {
		t.Fatal(err)
	}
	t.Logf("server logins %d, client connections %d", sessions, total)
	if sessions != total {
		t.Errorf("the server counted %d logins for %d client connections", sessions, total)
	}
}

// once opens a connection, runs query, and closes it; false stops the
// client after a failure (which is recorded).
func (r *loadRoute) once(dsn, query string) bool {
	fail := func(hung bool, err error) bool {
		if hung {
			r.hung.Add(1)
		} else {
			r.errs.Add(1)
		}
		r.mu.Lock()
		if r.firstErr == nil {
			r.firstErr = err
		}
		r.mu.Unlock()
		return false
	}
	cctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return fail(false, fmt.Errorf("connect: %w", err))
	}
	defer conn.Close(context.Background())
	r.conns.Add(1)
	qctx, qcancel := context.WithTimeout(context.Background(), loadQueryLimit)
	defer qcancel()
	start := time.Now()
	var got int
	err = conn.QueryRow(qctx, query).Scan(&got)
	took := time.Since(start)
	if err != nil {
		var pe *pgconn.PgError
		hung := errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
		if !hung && errors.As(err, &pe) {
			err = fmt.Errorf("query: %s %s", pe.Code, pe.Message)
		}
		return fail(hung, fmt.Errorf("%q after %v: %w", query, took.Round(time.Millisecond), err))
	}
	r.mu.Lock()
	r.lat = append(r.lat, took)
	r.mu.Unlock()
	return true
}

// pct is the p-th percentile of sorted durations.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)].Round(time.Microsecond)
}
