package soakrun

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// Sample is one reading of the proxy's figures: from its /metrics, and
// from /proc/PID as a cross-check.
type Sample struct {
	// Goroutines is go_goroutines.
	Goroutines int
	// FDs is process_open_fds (counted by the proxy itself, which holds
	// one more descriptor, /proc/self/fd, while it counts).
	FDs int
	// ProcFDs is the number of entries of /proc/PID/fd read by the soak.
	ProcFDs int
	// RSS is process_resident_memory_bytes.
	RSS int64
	// ProcRSS is VmRSS of /proc/PID/status, in bytes.
	ProcRSS int64
	// Threads is Threads of /proc/PID/status.
	Threads int
	// Sessions is pgverifyproxy_sessions_active summed over routes.
	Sessions int
	// BytesToUpstream and BytesToClient are pgverifyproxy_bytes_total.
	BytesToUpstream, BytesToClient int64
}

// sample scrapes /metrics (over the one keep-alive connection, which is
// thus part of every reading alike) and then reads /proc/PID.
func (r *Runner) sample(ctx context.Context) (Sample, error) {
	var s Sample
	p := r.proxy
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.adminPort), nil)
	if err != nil {
		return s, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return s, fmt.Errorf("scraping metrics: %w", err)
	}
	body, err := readAllLimit(resp.Body, 8<<20)
	resp.Body.Close()
	if err != nil {
		return s, fmt.Errorf("scraping metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("scraping metrics: %s", resp.Status)
	}
	m := parseMetrics(body)
	need := func(name string) (float64, error) {
		v, ok := m[name]
		if !ok {
			return 0, fmt.Errorf("scraping metrics: %s missing", name)
		}
		return v, nil
	}
	for _, f := range []struct {
		name string
		set  func(float64)
	}{
		{"go_goroutines", func(v float64) { s.Goroutines = int(v) }},
		{"process_open_fds", func(v float64) { s.FDs = int(v) }},
		{"process_resident_memory_bytes", func(v float64) { s.RSS = int64(v) }},
	} {
		v, err := need(f.name)
		if err != nil {
			return s, err
		}
		f.set(v)
	}
	s.Sessions = int(m["pgverifyproxy_sessions_active"])
	s.BytesToUpstream = int64(m[`pgverifyproxy_bytes_total{direction="to_upstream"}`])
	s.BytesToClient = int64(m[`pgverifyproxy_bytes_total{direction="to_client"}`])

	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid))
	if err != nil {
		return s, fmt.Errorf("reading /proc/%d/fd: %w", p.pid, err)
	}
	s.ProcFDs = len(ents)
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return s, fmt.Errorf("reading /proc/%d/status: %w", p.pid, err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			s.ProcRSS = n * 1024
		case "Threads":
			s.Threads = int(n)
		}
	}
	return s, nil
}

// parseMetrics reads the Prometheus text format into name → value, summed
// over all label sets; pgverifyproxy_bytes_total is also kept per
// direction, keyed `pgverifyproxy_bytes_total{direction="…"}`.
func parseMetrics(b []byte) map[string]float64 {
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		series := line[:i]
		name, labels, _ := strings.Cut(series, "{")
		m[name] += v
		if name == "pgverifyproxy_bytes_total" {
			for _, d := range []string{"to_upstream", "to_client"} {
				if strings.Contains(labels, `direction="`+d+`"`) {
					m[`pgverifyproxy_bytes_total{direction="`+d+`"}`] += v
				}
			}
		}
	}
	return m
}

// readAllLimit reads r up to n bytes and fails when it holds more.
func readAllLimit(r io.Reader, n int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, n+1))
	if err != nil {
		return b, err
	}
	if int64(len(b)) > n {
		return b[:n], fmt.Errorf("body longer than %d bytes", n)
	}
	return b, nil
}

// baseline takes the minimum of each figure over several readings a
// little apart, once no session is open: a transient extra (the admin's
// periodic upstream probe in flight) must not raise the baseline and so
// hide a leak of the same size.
func (r *Runner) baseline(ctx context.Context) (Sample, error) {
	var base Sample
	for i := 0; i < 8; i++ {
		s, err := r.sample(ctx)
		if err != nil {
			return base, err
		}
		if s.Sessions != 0 {
			return base, fmt.Errorf("baseline: %d sessions still active", s.Sessions)
		}
		if i == 0 {
			base = s
		} else {
			base.Goroutines = min(base.Goroutines, s.Goroutines)
			base.FDs = min(base.FDs, s.FDs)
			base.ProcFDs = min(base.ProcFDs, s.ProcFDs)
			base.RSS, base.ProcRSS, base.Threads = s.RSS, s.ProcRSS, s.Threads
			base.BytesToUpstream, base.BytesToClient = s.BytesToUpstream, s.BytesToClient
		}
		if err := harness.Sleep(ctx, 250*time.Millisecond); err != nil {
			return base, err
		}
	}
	return base, nil
}

// settled reports whether s is back at base within the slack, with no
// session open.
func settled(base, s Sample) bool {
	return s.Sessions == 0 &&
		s.Goroutines <= base.Goroutines+GoroutineSlack &&
		s.FDs <= base.FDs+FDSlack &&
		s.ProcFDs <= base.ProcFDs+FDSlack
}

// peak is the element-wise maximum of two samples.
func peak(a, b Sample) Sample {
	return Sample{
		Goroutines: max(a.Goroutines, b.Goroutines),
		FDs:        max(a.FDs, b.FDs),
		ProcFDs:    max(a.ProcFDs, b.ProcFDs),
		RSS:        max(a.RSS, b.RSS),
		ProcRSS:    max(a.ProcRSS, b.ProcRSS),
		Threads:    max(a.Threads, b.Threads),
		Sessions:   max(a.Sessions, b.Sessions),
	}
}
