//go:build linux

package integration

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/soakrun"
)

// TestSoak runs the soak of integration/soak for a short time: 200 clients
// for 20s through the binary TestMain built, in front of a cluster of its
// own (max_connections raised for the clients). Any unexpected client
// error, proxy warning or exit, or a proxy that is not back at its
// goroutine and fd baseline 15s after the last client left fails it.
// PGVP_SOAK_DURATION (a Go duration) and PGVP_SOAK_CLIENTS override the
// size for a longer local run.
func TestSoak(t *testing.T) {
	o := soakrun.Options{
		Duration: 20 * time.Second,
		Clients:  200,
		Bin:      binPath,
		Logf:     t.Logf,
	}
	if v := os.Getenv("PGVP_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PGVP_SOAK_DURATION: %v", err)
		}
		o.Duration = d
	}
	if v := os.Getenv("PGVP_SOAK_CLIENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("PGVP_SOAK_CLIENTS: %v", err)
		}
		o.Clients = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+3*time.Minute)
	defer cancel()
	r := soakrun.New(o)
	t.Cleanup(r.Cleanup)
	res, err := r.Run(ctx)
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
