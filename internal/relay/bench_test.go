package relay

// Micro-benchmarks of the relay, runnable without PostgreSQL:
//
//	go test -run - -bench . -benchmem ./internal/relay
//
// They relay between a plaintext loopback TCP client leg and a TLS
// upstream leg (a loopback TLS server), as in the proxy, on every engine.
// Besides ns/op and allocs/op they report syscalls/op (read+write system
// calls of the whole process, from /proc/self/io: harness and relay
// together; the kernel does not count recvmsg(2) there, which the relay
// uses on a TCP client leg, so use strace -c -f or the bench command for
// the full count), cs/op (context switches of the whole process, from
// getrusage: a measure of wake-ups) and cpu-ns/op (user+system CPU time of
// the whole process, from getrusage: steadier than ns/op on a shared
// machine, where wall time also counts waiting for a CPU).

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
)

// sysMeter counts the process's read/write system calls and context
// switches.
type sysMeter struct{ sys, cs, cpu int64 }

func readSysMeter() sysMeter {
	var m sysMeter
	if b, err := os.ReadFile("/proc/self/io"); err == nil {
		for _, line := range bytes.Split(b, []byte("\n")) {
			k, v, ok := bytes.Cut(line, []byte(": "))
			if ok && (string(k) == "syscr" || string(k) == "syscw") {
				n, _ := strconv.ParseInt(string(v), 10, 64)
				m.sys += n
			}
		}
	}
	m.cs, m.cpu = rusage()
	return m
}

func (m sysMeter) report(b *testing.B) {
	e := readSysMeter()
	b.ReportMetric(float64(e.sys-m.sys)/float64(b.N), "syscalls/op")
	b.ReportMetric(float64(e.cs-m.cs)/float64(b.N), "cs/op")
	b.ReportMetric(float64(e.cpu-m.cpu)/float64(b.N), "cpu-ns/op")
}

// BenchmarkRelayPingPong sends a 30-byte query from the application and
// answers it from the server (one op is one round trip through the relay).
func BenchmarkRelayPingPong(b *testing.B) {
	for _, e := range testEngines() {
		for _, answer := range []int{200, 8 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("relay=%s/answer=%d", e, answer), func(b *testing.B) {
				benchPingPong(b, e, answer)
			})
		}
	}
}

func benchPingPong(b *testing.B, e Engine, answer int) {
	r := startSession(b, newTestPool(b, e, Options{}), legTCP, legTLS)
	q := bytes.Repeat([]byte{'Q'}, 30)
	a := bytes.Repeat([]byte{'D'}, answer)
	go func() {
		buf := make([]byte, len(q))
		for {
			if _, err := io.ReadFull(r.server, buf); err != nil {
				return
			}
			if _, err := r.server.Write(a); err != nil {
				return
			}
		}
	}()
	got := make([]byte, answer)
	// Warm up (TLS dynamic record sizing, buffers).
	for range 200 {
		r.app.Write(q)
		io.ReadFull(r.app, got)
	}
	b.ReportAllocs()
	m := readSysMeter()
	b.ResetTimer()
	for range b.N {
		if _, err := r.app.Write(q); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r.app, got); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	m.report(b)
}

// BenchmarkRelayStream sends bulk bytes one way (COPY-like), in writes of
// the given size: c2u from the application to the server, u2c from the
// server to the application.
func BenchmarkRelayStream(b *testing.B) {
	for _, e := range testEngines() {
		for _, dir := range []string{"c2u", "u2c"} {
			for _, chunk := range []int{8 << 10, 64 << 10} {
				b.Run(fmt.Sprintf("relay=%s/%s/write=%d", e, dir, chunk), func(b *testing.B) {
					benchStream(b, e, dir, chunk)
				})
			}
		}
	}
}

func benchStream(b *testing.B, e Engine, dir string, chunk int) {
	r := startSession(b, newTestPool(b, e, Options{}), legTCP, legTLS)
	var src, dst net.Conn = r.app, r.server
	if dir == "u2c" {
		src, dst = r.server, r.app
	}
	data := bytes.Repeat([]byte{'d'}, chunk)
	// The reader drains dst continuously; wait blocks until
	// it has read total bytes.
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		read    int64
		readErr error
	)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			m, err := dst.Read(buf)
			mu.Lock()
			read += int64(m)
			if err != nil {
				readErr = err
			}
			cond.Signal()
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	send := func(ops int) {
		for range ops {
			if _, err := src.Write(data); err != nil {
				b.Fatal(err)
			}
		}
	}
	var total int64
	wait := func(ops int) {
		total += int64(ops * chunk)
		mu.Lock()
		defer mu.Unlock()
		for read < total && readErr == nil {
			cond.Wait()
		}
		if read < total {
			b.Fatal(readErr)
		}
	}
	send(256) // past TLS dynamic record sizing's slow start
	wait(256)
	b.SetBytes(int64(chunk))
	b.ReportAllocs()
	m := readSysMeter()
	b.ResetTimer()
	send(b.N)
	wait(b.N)
	b.StopTimer()
	m.report(b)
}

// BenchmarkRelayIdleSessions reports the memory of 1000 idle sessions on
// the default engine (see idleSessionMemory), after small messages only
// and after bulk data; its ns/op is meaningless (run it with
// -benchtime=1x).
func BenchmarkRelayIdleSessions(b *testing.B) {
	const n = 1000
	for _, bulk := range []bool{false, true} {
		b.Run(fmt.Sprintf("bulk=%v", bulk), func(b *testing.B) {
			var m idleMem
			for range b.N {
				m = idleSessionMemory(b, newTestPool(b, Loop, Options{}), n, bulk)
			}
			b.ReportMetric(m.relay(), "relay-B/session")
			b.ReportMetric(m.relayStack, "relay-stack-B/session")
			b.ReportMetric(m.tlsIn, "tls-bufs-B/session")
			b.ReportMetric(m.all, "all-B/session")
		})
	}
}
