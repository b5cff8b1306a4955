//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// How the hop's CPU time and context switches are counted.
//
// /proc/PID/stat's utime and stime come in USER_HZ (100 Hz) ticks, split
// between user and system by sampling at the scheduler tick (250 Hz here,
// CONFIG_TICK_CPU_ACCOUNTING). The scheduler itself keeps, for every task
// (thread), the nanoseconds it has been on a CPU (se.sum_exec_runtime):
// the first field of /proc/PID/task/TID/schedstat. That file exists
// without CONFIG_SCHEDSTATS (it needs only CONFIG_SCHED_INFO).
//
// /proc/PID/schedstat is the main thread's alone, not the process's, and
// a thread that exits takes its schedstat and status files with it. The
// kernel adds an exiting thread's nanoseconds to its process
// (signal->sum_sched_runtime); the process CPU clock (clock_gettime on
// the clock clock_getcpuclockid(3) names) returns that plus every live
// thread's runtime, in nanoseconds. Its context switch counts go to
// signal->nvcsw and nivcsw, which only getrusage(RUSAGE_SELF) and the
// parent's wait4 read: /proc has no per-process total that includes
// exited threads.
//
// So a sample is every task's schedstat runtime and context switches,
// read from /proc/PID/task/*/, plus the process CPU clock, for the hop's
// process and its descendants. Between two samples, a task present in
// both counts its difference, a task born in between counts in full, and
// a task that exited in between is lost to the per-task sums; its CPU
// time is still in the process clock. The select runs take their samples
// while every pgbench client is connected, so stunnel's per-connection
// threads live through the window; a Go process keeps its threads.

// taskCounters are one task's (thread's) counters.
type taskCounters struct {
	cpuNs      int64 // schedstat field 1: nanoseconds on a CPU
	vol, invol int64 // voluntary_ctxt_switches, nonvoluntary_ctxt_switches
}

// hopSample is the counters of a hop's process tree at one moment.
type hopSample struct {
	at     time.Time
	tasks  map[int]taskCounters // by TID (unique across processes)
	procNs map[int]int64        // process CPU clock, by PID
}

// hopDelta is what a hop's processes did between two samples.
type hopDelta struct {
	cpuNs        int64 // Σ schedstat runtime over the tasks alive at the end
	vol, invol   int64 // Σ context switches, likewise
	procNs       int64 // Σ process CPU clock over the processes alive at both samples
	exited, born int   // tasks gone since the first sample, tasks new in the second
	procsChanged bool  // a process of the tree started or ended in between
}

// cpu is the hop's CPU time between the samples: the per-task schedstat
// sum, or the process clock when tasks exited in between (the clock keeps
// their time; the per-task sum lost it).
func (d hopDelta) cpu() time.Duration {
	if d.exited > 0 && !d.procsChanged {
		return time.Duration(d.procNs)
	}
	return time.Duration(d.cpuNs)
}

// ctxComplete reports whether the context switch counts cover every
// task: none exited in between.
func (d hopDelta) ctxComplete() error {
	if d.exited > 0 || d.procsChanged {
		return fmt.Errorf("%d task(s) exited inside the window (process set changed: %v); their context switches are lost", d.exited, d.procsChanged)
	}
	return nil
}

// String summarises d for the progress log.
func (d hopDelta) String() string {
	s := fmt.Sprintf("schedstat %.3fs, process clock %.3fs, ctx switches %d vol + %d invol",
		float64(d.cpuNs)/1e9, float64(d.procNs)/1e9, d.vol, d.invol)
	if d.exited > 0 || d.born > 0 || d.procsChanged {
		s += fmt.Sprintf(" (tasks: %d exited, %d born; process set changed: %v)", d.exited, d.born, d.procsChanged)
	}
	return s
}

// diffSamples is the hop's activity from a to b.
func diffSamples(a, b hopSample) hopDelta {
	var d hopDelta
	for tid, end := range b.tasks {
		start, ok := a.tasks[tid]
		if !ok {
			d.born++
		}
		d.cpuNs += end.cpuNs - start.cpuNs
		d.vol += end.vol - start.vol
		d.invol += end.invol - start.invol
	}
	for tid := range a.tasks {
		if _, ok := b.tasks[tid]; !ok {
			d.exited++
		}
	}
	d.procsChanged = len(a.procNs) != len(b.procNs)
	for pid, end := range b.procNs {
		start, ok := a.procNs[pid]
		if !ok {
			d.procsChanged = true
			continue
		}
		d.procNs += end - start
	}
	return d
}

// sampleHop reads the counters of process pid, its threads and its
// descendants.
func sampleHop(pid int) (hopSample, error) {
	s := hopSample{tasks: map[int]taskCounters{}, procNs: map[int]int64{}}
	pids, err := processTree(pid)
	if err != nil {
		return s, err
	}
	s.at = time.Now()
	for _, p := range pids {
		ns, err := processCPUClock(p)
		if err != nil {
			if p == pid {
				return s, err
			}
			continue // a descendant that has just exited
		}
		s.procNs[p] = ns
		if err := readTasks(p, s.tasks); err != nil && p == pid {
			return s, err
		}
	}
	return s, nil
}

// processCPUClock is the CPU time of process pid, all its threads
// including exited ones, in nanoseconds: clock_gettime on the process's
// CPU clock (CPUCLOCK_SCHED, as clock_getcpuclockid(3) makes it).
func processCPUClock(pid int) (int64, error) {
	const cpuclockSched = 2
	clock := int32((^pid)<<3 | cpuclockSched)
	var ts unix.Timespec
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return 0, fmt.Errorf("CPU clock of pid %d: %w", pid, err)
	}
	return ts.Nano(), nil
}

// readTasks adds the counters of every live task of process pid to
// tasks. A task that exits while it is read is skipped.
func readTasks(pid int, tasks map[int]taskCounters) error {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sched, err1 := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		status, err2 := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if err1 != nil || err2 != nil {
			continue // exited in between
		}
		var c taskCounters
		if c.cpuNs, err = parseSchedstat(sched); err != nil {
			return fmt.Errorf("%s/%d/schedstat: %w", dir, tid, err)
		}
		if c.vol, c.invol, err = parseCtxtSwitches(status); err != nil {
			return fmt.Errorf("%s/%d/status: %w", dir, tid, err)
		}
		tasks[tid] = c
	}
	return nil
}

// parseSchedstat reads the first field of /proc/PID/task/TID/schedstat:
// the task's time on a CPU in nanoseconds (then: time waiting on a run
// queue, and time slices run).
func parseSchedstat(raw []byte) (int64, error) {
	f := strings.Fields(string(raw))
	if len(f) != 3 {
		return 0, fmt.Errorf("want 3 fields, have %d: %q", len(f), raw)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || ns < 0 {
		return 0, fmt.Errorf("bad run time %q", f[0])
	}
	return ns, nil
}

// parseCtxtSwitches reads voluntary_ctxt_switches and
// nonvoluntary_ctxt_switches from the contents of /proc/PID/status.
func parseCtxtSwitches(raw []byte) (vol, invol int64, err error) {
	found := 0
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "voluntary_ctxt_switches":
			dst = &vol
		case "nonvoluntary_ctxt_switches":
			dst = &invol
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			return 0, 0, fmt.Errorf("bad %s %q", k, strings.TrimSpace(v))
		}
		*dst = n
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("no voluntary_ctxt_switches and nonvoluntary_ctxt_switches lines")
	}
	return vol, invol, nil
}

// processTree is pid and its descendants, from the parent PIDs in
// /proc/*/stat.
func processTree(pid int) ([]int, error) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if ppid, err := parseStatPPid(raw); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree, nil
}
