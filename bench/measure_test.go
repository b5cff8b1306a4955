//go:build linux

package main

import (
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The samples below are real outputs: pgbench 15.18 (Debian 15.18-0+deb12u1)
// against a local PostgreSQL 15, strace 6.1, and /proc of Linux 6.x,
// captured on the development machine.

// pgbenchSelectT: pgbench -S -n -c 8 -j 2 -T 2 -l (the select runs).
const pgbenchSelectT = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 19835
number of failed transactions: 0 (0.000%)
latency average = 0.751 ms
initial connection time = 174.724 ms
tps = 10655.889185 (without initial connection time)
`

// pgbenchConnect: pgbench -S -n -C -c 8 -j 2 -T 2 (the connection rate).
const pgbenchConnect = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 53
number of failed transactions: 0 (0.000%)
latency average = 316.842 ms
average connection time = 77.985 ms
tps = 25.249217 (including reconnection times)
`

// pgbenchFixed: pgbench -S -n -c 8 -j 2 -t 200 (the run under strace).
const pgbenchFixed = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
number of transactions per client: 200
number of transactions actually processed: 1600/1600
number of failed transactions: 0 (0.000%)
latency average = 1.906 ms
initial connection time = 223.631 ms
tps = 4198.075707 (without initial connection time)
`

// pgbenchFailed: 8 clients of a REPEATABLE READ update of one row
// (serialization failures, -T 2); pgbench exits 0.
const pgbenchFailed = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: ser.sql
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 334
number of failed transactions: 1978 (85.554%)
latency average = 6.271 ms (including failures)
initial connection time = 209.986 ms
tps = 184.304436 (without initial connection time)
`

// pgbenchAborted: a script running "SELECT 1/0" (-c 2 -t 10); exit
// status 2, no tps line.
const pgbenchAborted = `pgbench (15.18 (Debian 15.18-0+deb12u1))
pgbench: error: client 1 script 0 aborted in command 0 query 0: ERROR:  division by zero
pgbench: error: client 0 script 0 aborted in command 0 query 0: ERROR:  division by zero
transaction type: err.sql
scaling factor: 1
query mode: simple
number of clients: 2
number of threads: 2
maximum number of tries: 1
number of transactions per client: 10
number of transactions actually processed: 0/20
number of failed transactions: 0 (NaN%)
pgbench: error: Run was aborted; the above results are incomplete.
`

// pgbenchRefused: no server on the port; exit status 1.
const pgbenchRefused = `pgbench: error: connection to server on socket "/tmp/pgvp-samples/.s.PGSQL.1" failed: No such file or directory
	Is the server running locally and accepting connections on that socket?
pgbench: error: could not create connection for setup
`

func TestParsePgbench(t *testing.T) {
	for _, tc := range []struct {
		name    string
		out     string
		tx      int64
		tps     float64
		wantErr string // substring of the error; "" for success
	}{
		{"select-only, -T", pgbenchSelectT, 19835, 10655.889185, ""},
		{"new connection per transaction, -C", pgbenchConnect, 53, 25.249217, ""},
		{"fixed count, -t: processed n/n", pgbenchFixed, 1600, 4198.075707, ""},
		{"serialization failures", pgbenchFailed, 0, 0, "1978 failed transactions"},
		{"clients aborted, no tps line", pgbenchAborted, 0, 0, "no tps in the output"},
		{"connection refused", pgbenchRefused, 0, 0, "no transaction count in the output"},
		{"empty output", "", 0, 0, "no transaction count in the output"},
		{"zero transactions", "number of transactions actually processed: 0\nnumber of failed transactions: 0 (0.000%)\ntps = 0.000000 (without initial connection time)\n", 0, 0, "no transactions (0, 0.0 tps)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, err := parsePgbench(tc.out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if run.tx != tc.tx || run.tps != tc.tps {
				t.Errorf("tx %d, tps %v; want %d, %v", run.tx, run.tps, tc.tx, tc.tps)
			}
		})
	}
}

// straceSummaryPgbench: strace -c -f -o FILE pgbench -S -n -c 2 -j 2 -t 100
// (two threads, calls with and without errors).
const straceSummaryPgbench = `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 24.69    0.010787          91       118           ppoll
 16.50    0.007206          22       323       118 recvfrom
 15.53    0.006782          32       208           sendto
 12.50    0.005462        2731         2           execve
  6.39    0.002793          10       274       199 newfstatat
  4.19    0.001830          44        41           lseek
  3.93    0.001715          10       157           mmap
  3.49    0.001526          20        76           read
  2.41    0.001053          12        82        13 openat
  2.26    0.000986          25        39           brk
  2.09    0.000911          24        37           mprotect
  1.03    0.000448           6        71           close
  0.75    0.000326         163         2         2 access
  0.72    0.000313          39         8           poll
  0.49    0.000214           9        23        23 ioctl
  0.39    0.000169         169         1           madvise
  0.37    0.000162          54         3           rseq
  0.37    0.000160          32         5           futex
  0.32    0.000139          34         4           munmap
  0.28    0.000121          40         3           getrandom
  0.26    0.000112          37         3           socket
  0.21    0.000092           6        14           fcntl
  0.14    0.000063          31         2           write
  0.14    0.000059          19         3           connect
  0.11    0.000050           6         8           getuid
  0.06    0.000028           7         4           pread64
  0.06    0.000028           9         3           getsockopt
  0.05    0.000022          11         2           arch_prctl
  0.04    0.000017           2         8           getgid
  0.04    0.000017           1        10           geteuid
  0.04    0.000016           2         8           getegid
  0.03    0.000014           4         3           getsockname
  0.03    0.000013           2         5           rt_sigprocmask
  0.03    0.000013           4         3           prlimit64
  0.03    0.000011           5         2           set_tid_address
  0.03    0.000011           3         3           set_robust_list
  0.02    0.000009           9         1           getpid
  0.01    0.000004           1         4           rt_sigaction
  0.00    0.000000           0         1           readlink
  0.00    0.000000           0         2           getdents64
  0.00    0.000000           0         1           clone3
------ ----------- ----------- --------- --------- ----------------
100.00    0.043682          27      1567       355 total
`

// straceSummaryTrue: strace -c -o FILE true.
const straceSummaryTrue = `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 52.85    0.000426         426         1           munmap
 45.53    0.000367         122         3           mprotect
  1.61    0.000013          13         1           prlimit64
  0.00    0.000000           0         1           read
  0.00    0.000000           0         2           close
  0.00    0.000000           0         8           mmap
  0.00    0.000000           0         1           brk
  0.00    0.000000           0         2           pread64
  0.00    0.000000           0         1         1 access
  0.00    0.000000           0         1           execve
  0.00    0.000000           0         1           arch_prctl
  0.00    0.000000           0         1           set_tid_address
  0.00    0.000000           0         2           openat
  0.00    0.000000           0         2           newfstatat
  0.00    0.000000           0         1           set_robust_list
  0.00    0.000000           0         1           rseq
------ ----------- ----------- --------- --------- ----------------
100.00    0.000806          27        29         1 total
`

func TestParseStraceSummary(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		total   int64
		n       int              // distinct system calls
		some    map[string]int64 // a few of them
		top3    string           // topSyscalls(calls, tx, 3)
		tx      int64
		wantErr bool
	}{
		{
			name: "pgbench under strace -f", in: straceSummaryPgbench, total: 1567, n: 41,
			some: map[string]int64{"ppoll": 118, "recvfrom": 323, "newfstatat": 274, "execve": 2, "clone3": 1, "access": 2},
			tx:   100, top3: "recvfrom 3.2, newfstatat 2.7, sendto 2.1",
		},
		{
			name: "true", in: straceSummaryTrue, total: 29, n: 16,
			some: map[string]int64{"mmap": 8, "access": 1, "munmap": 1},
			// Ties are broken by name.
			tx: 1, top3: "mmap 8.0, mprotect 3.0, close 2.0",
		},
		// strace attached to a process that made no system call before the
		// interrupt writes an empty summary.
		{name: "empty summary", in: "", wantErr: true},
		{name: "header only", in: strings.Join(strings.Split(straceSummaryTrue, "\n")[:2], "\n"), wantErr: true},
		{name: "not a summary", in: "strace: Process 2091 attached\nstrace: Process 2091 detached\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			total, calls, err := parseStraceSummary(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error; total %d, calls %v", total, calls)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if total != tc.total || len(calls) != tc.n {
				t.Errorf("total %d over %d calls; want %d over %d", total, len(calls), tc.total, tc.n)
			}
			var sum int64
			for _, n := range calls {
				sum += n
			}
			if sum != total {
				t.Errorf("the calls add up to %d, the total line says %d", sum, total)
			}
			for name, want := range tc.some {
				if calls[name] != want {
					t.Errorf("%s: %d calls, want %d", name, calls[name], want)
				}
			}
			if got := topSyscalls(calls, tc.tx, 3); got != tc.top3 {
				t.Errorf("topSyscalls = %q, want %q", got, tc.top3)
			}
		})
	}
}

func TestLatencyStats(t *testing.T) {
	// testdata/pgbench-log: the two -l files (one per thread) of
	// pgbench -S -n -c 4 -j 2 -t 10 -l --log-prefix=tx: 40 transactions,
	// latencies adding up to 299,541 µs, the slowest 51,452 µs.
	n, avg, p99, err := latencyStats("testdata/pgbench-log")
	if err != nil {
		t.Fatal(err)
	}
	if n != 40 || math.Abs(avg-7.488525) > 1e-9 || p99 != 51.452 {
		t.Errorf("n %d, avg %v ms, p99 %v ms; want 40, 7.488525, 51.452", n, avg, p99)
	}

	// A transaction that failed is logged with "failed" for its latency
	// (real lines of the serialization failure run, -l).
	dir := t.TempDir()
	failed := "1 1 8692 0 1796233564 41338\n0 1 failed 0 1796233564 42318\n1 2 3230 0 1796233564 44683\n"
	if err := os.WriteFile(filepath.Join(dir, "tx.1234"), []byte(failed), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := latencyStats(dir); err == nil || !strings.Contains(err.Error(), `bad latency "failed"`) {
		t.Errorf("log with a failed transaction: %v, want a bad latency error", err)
	}
	if _, _, _, err := latencyStats(t.TempDir()); err == nil {
		t.Error("no log files: no error")
	}
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "tx.1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := latencyStats(empty); err == nil {
		t.Error("empty log file: no error")
	}
}

func TestPercentileMedian(t *testing.T) {
	for _, tc := range []struct {
		v           []float64
		p99, median float64
	}{
		{[]float64{5}, 5, 5},
		{[]float64{3, 1, 2}, 3, 2},
		{[]float64{4, 1, 3, 2}, 4, 2.5},
		// Nearest rank: the 99th of 100 sorted values.
		{func() []float64 {
			v := make([]float64, 100)
			for i := range v {
				v[i] = float64(100 - i)
			}
			return v
		}(), 99, 50.5},
	} {
		if m := median(tc.v); m != tc.median {
			t.Errorf("median(%v) = %v, want %v", tc.v, m, tc.median)
		}
		if p := percentile(tc.v, 0.99); p != tc.p99 {
			t.Errorf("percentile(%v, 0.99) = %v, want %v", tc.v, p, tc.p99)
		}
	}
}

// statPostgres is /proc/PID/stat of a PostgreSQL 15 postmaster (parent
// 1).
const statPostgres = `32360 (postgres) S 1 32360 32360 0 -1 4194304 5304 86602 0 2 11 28 501 413 20 0 1 0 826757 222330880 7288 18446744073709551615 94775949414400 94775954827689 140729710953408 0 0 0 0 24129536 84487 1 0 0 17 1 0 0 0 0 0 94775957293232 94775957510538 94776073351168 140729710954688 140729710954801 140729710954801 140729710956500 0
`

// statOddName is /proc/PID/stat of a copy of yes(1) named "pg) (x y"
// (parent 1993): counting from the first ')' would read the wrong fields.
const statOddName = `1994 (pg) (x y) R 1993 1989 25661 0 -1 4194304 140 0 0 0 25 38 0 0 20 0 1 0 836263 2990080 402 18446744073709551615 94511430660096 94511430677065 140721314826528 0 0 0 0 6 0 0 0 0 17 1 0 0 0 0 0 94511430692112 94511430693344 94512249987072 140721314834902 140721314834931 140721314834931 140721314836443 0
`

func TestParseStatPPid(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		ppid    int
		wantErr bool
	}{
		{"postgres", statPostgres, 1, false},
		{"a name with parentheses and spaces", statOddName, 1993, false},
		{"no parenthesis", "garbage", 0, true},
		{"cut short", "1994 (yes) R", 0, true},
		{"not a number", "1 (x) R x 1 1 0", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatPPid([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.ppid {
				t.Errorf("parseStatPPid = %v, %v; want %v (error: %v)", got, err, tc.ppid, tc.wantErr)
			}
		})
	}
}

// statusPostgres is the start of /proc/PID/status of a PostgreSQL 15
// postmaster, through the memory lines.
const statusPostgres = `Name:	postgres
Umask:	0077
State:	S (sleeping)
Tgid:	32360
Ngid:	0
Pid:	32360
PPid:	1
TracerPid:	0
Uid:	101	101	101	101
Gid:	104	104	104	104
FDSize:	1024
Groups:	103 104 
NStgid:	32360
NSpid:	32360
NSpgid:	32360
NSsid:	32360
Kthread:	0
VmPeak:	  217120 kB
VmSize:	  217120 kB
VmLck:	       0 kB
VmPin:	       0 kB
VmHWM:	   29208 kB
VmRSS:	   29208 kB
RssAnon:	    2308 kB
RssFile:	   16096 kB
`

// statusZombie is the start of /proc/PID/status of a zombie: no memory
// lines at all.
const statusZombie = `Name:	sleep
State:	Z (zombie)
Tgid:	2007
Ngid:	0
Pid:	2007
PPid:	2005
TracerPid:	0
Uid:	0	0	0	0
Gid:	0	0	0	0
FDSize:	0
Groups:	 
NStgid:	2007
NSpid:	2007
NSpgid:	1989
NSsid:	25661
Kthread:	0
Threads:	1
SigQ:	0/96362
`

func TestParseVmRSS(t *testing.T) {
	if v, err := parseVmRSS([]byte(statusPostgres)); err != nil || v != 29208 {
		t.Errorf("postmaster: %v, %v; want 29208", v, err)
	}
	if v, err := parseVmRSS([]byte(statusZombie)); err == nil {
		t.Errorf("zombie: %v, no error", v)
	}
}

func TestGenReader(t *testing.T) {
	const total = 3 << 20
	g, lines := newGenReader(total)
	b, err := io.ReadAll(g)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < total {
		t.Fatalf("%d bytes, want at least %d", len(b), total)
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if int64(len(got)) != lines || !strings.HasSuffix(string(b), "\n") {
		t.Fatalf("%d lines (ending in a newline: %v), newGenReader said %d", len(got), strings.HasSuffix(string(b), "\n"), lines)
	}
	for i, l := range got {
		id, payload, ok := strings.Cut(l, "\t")
		if !ok || id == "" || len(payload) != 96 || len(l) < copyRowMin-1 {
			t.Fatalf("line %d: %q", i+1, l)
		}
	}
}

// TestWindowTx counts the transactions of pgbench's per-transaction logs
// (client, tx, latency, script, epoch seconds, µs) inside the window, and
// refuses a window that a client's connection did not last through.
func TestWindowTx(t *testing.T) {
	line := func(client int, sec, usec int64) string {
		return strings.Join([]string{itoa(int64(client)), "0", "150", "0", itoa(sec), itoa(usec)}, " ")
	}
	const from, to = 100_000_000, 105_000_000 // µs
	for _, tc := range []struct {
		name    string
		lines   []string
		want    int64
		wantErr string
	}{
		{name: "two clients through the window", lines: []string{
			line(0, 99, 0), line(0, 101, 0), line(0, 104, 999_999), line(0, 106, 0),
			line(1, 99, 500_000), line(1, 102, 0), line(1, 105, 1),
		}, want: 3},
		{name: "a client that starts inside the window counts", lines: []string{
			line(0, 99, 0), line(0, 101, 0), line(0, 106, 0),
			line(1, 103, 0), line(1, 106, 0),
		}, want: 2},
		{name: "a client whose last transaction was still running at the end counts", lines: []string{
			line(0, 99, 0), line(0, 101, 0), line(0, 106, 0),
			line(1, 99, 0), line(1, 104, 400_000),
		}, want: 2},
		{name: "a client that ends inside the window is refused", lines: []string{
			line(0, 99, 0), line(0, 101, 0), line(0, 106, 0),
			line(1, 99, 0), line(1, 102, 0),
		}, wantErr: "client 1 completed transactions only from"},
		{name: "nothing inside the window", lines: []string{line(0, 99, 0), line(0, 106, 0)}, wantErr: "no transaction completed inside the window"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "tx.1"), []byte(strings.Join(tc.lines, "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			n, err := windowTx(dir, from, to)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one with %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case n != tc.want:
				t.Errorf("%d transactions in the window, want %d", n, tc.want)
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
