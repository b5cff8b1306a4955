package proxy

// Micro-benchmarks of the relay and of admission, runnable without
// PostgreSQL:
//
//	go test -run - -bench . -benchmem ./proxy
//
// The relay benchmarks run Relay between a plaintext loopback TCP client leg
// and a TLS upstream leg (a loopback TLS server with a self-signed
// certificate), as in production. Besides ns/op and allocs/op they report
// syscalls/op (read+write system calls of the whole process, from
// /proc/self/io: harness and relay together; the kernel does not count
// recvmsg(2) there, which the relay uses on a TCP client leg, so use strace
// -c -f or the bench command for the full count), cs/op (context switches of
// the whole process, from getrusage: a measure of wake-ups) and cpu-ns/op
// (user+system CPU time of the whole process, from getrusage: steadier than
// ns/op on a shared machine, where wall time also counts waiting for a CPU).

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

var benchTLS struct {
	once sync.Once
	cfg  *tls.Config
	err  error
}

// rigServerTLS is the upstream server's TLS configuration. Dynamic record
// sizing is off, as in OpenSSL (PostgreSQL's TLS library), so that the
// server's records are as large as its writes.
func rigServerTLS(tb testing.TB) *tls.Config {
	tb.Helper()
	benchTLS.once.Do(func() {
		benchTLS.cfg, benchTLS.err = SelfSignedTLSConfig()
		if benchTLS.err == nil {
			benchTLS.cfg.DynamicRecordSizingDisabled = true
		}
	})
	if benchTLS.err != nil {
		tb.Fatal(benchTLS.err)
	}
	return benchTLS.cfg
}

// rigClientTLS is the proxy's upstream TLS configuration: like
// chain.Dialer.TLSConfig, Go's defaults (dynamic record sizing on).
var rigClientTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"} //nolint:gosec // test rig

// rigTCPPair returns both ends of a loopback TCP connection accepted on ln.
func rigTCPPair(tb testing.TB, ln net.Listener) (dialed, accepted net.Conn) {
	tb.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		tb.Fatal(r.err)
	}
	return d, r.c
}

// relayRig is one relayed session: app ⇄ (pc | Relay | pu) ⇄ server.
type relayRig struct {
	app      net.Conn  // the application's end of the client leg (plaintext)
	server   *tls.Conn // the upstream server's end of the upstream leg
	pc       net.Conn  // the proxy's client leg
	pu       net.Conn  // the proxy's upstream leg (*tls.Conn)
	counters Counters
	done     chan RelayStats
	mode     relayMode // the relay's implementation: defaultRelayMode unless a test sets it
}

func rigListener(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// newRig connects both legs (the upstream leg with a TLS handshake) on ln,
// without starting the relay.
func newRig(tb testing.TB, ln net.Listener) *relayRig {
	tb.Helper()
	r := &relayRig{done: make(chan RelayStats, 1), mode: defaultRelayMode}
	r.app, r.pc = rigTCPPair(tb, ln)
	ut, st := rigTCPPair(tb, ln)
	r.server = tls.Server(st, rigServerTLS(tb))
	cli := tls.Client(ut, rigClientTLS)
	errc := make(chan error, 1)
	go func() { errc <- r.server.Handshake() }()
	if err := cli.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	r.pu = cli
	tb.Cleanup(r.close)
	return r
}

func (r *relayRig) start() { go func() { r.done <- relayWith(r.pc, r.pu, &r.counters, r.mode) }() }

func (r *relayRig) close() {
	r.app.Close()
	r.server.Close()
	r.pc.Close()
	r.pu.Close()
}

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
	for _, answer := range []int{200, 8 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("answer=%d", answer), func(b *testing.B) {
			r := newRig(b, rigListener(b))
			r.start()
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
		})
	}
}

// BenchmarkRelayStream sends bulk bytes one way (COPY-like), in writes of
// the given size: c2u from the application to the server, u2c from the
// server to the application.
func BenchmarkRelayStream(b *testing.B) {
	for _, dir := range []string{"c2u", "u2c"} {
		for _, chunk := range []int{8 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s/write=%d", dir, chunk), func(b *testing.B) {
				r := newRig(b, rigListener(b))
				r.start()
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
			})
		}
	}
}

// BenchmarkAdmission runs an SSLRequest-less StartupMessage through the
// admission path: parse only (readStartupPacket + startupParams), and
// session.admit over net.Pipe.
func BenchmarkAdmission(b *testing.B) {
	sm, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
		"user": "app", "database": "appdb", "application_name": "psql", "client_encoding": "UTF8",
	}}).Encode(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		rd := bytes.NewReader(sm)
		for range b.N {
			rd.Reset(sm)
			pkt, err := readStartupPacket(rd)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := startupParams(pkt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("admit", func(b *testing.B) {
		b.ReportAllocs()
		route := &Route{Name: "bench", ClientTLS: ClientTLSAllow}
		for range b.N {
			c, a := net.Pipe()
			go func() { c.Write(sm) }()
			ss := &session{route: route, client: a}
			pkt, err := ss.admit()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := startupParams(pkt); err != nil {
				b.Fatal(err)
			}
			c.Close()
			a.Close()
		}
	})
}

// idleSessionMemory opens n relayed sessions, passes traffic through each
// (a small query and answer; with bulk, then a 64 KiB burst each way and
// another small exchange), lets them go idle and returns the heap+stack
// bytes per session that the relays hold (the connections and their TLS
// state are measured before the relays start and excluded, and so is what
// the relayed traffic added to crypto/tls's own buffers), the capacity of
// crypto/tls's buffers of the proxy's upstream leg, and the heap+stack bytes
// per session of everything (both ends of both legs included: an upper
// bound of a session's cost). The relays use mode.
func idleSessionMemory(tb testing.TB, n int, bulk bool, mode relayMode) idleMem {
	tb.Helper()
	ln := rigListener(tb)
	base := relayMemInUse()
	rigs := make([]*relayRig, n)
	small := bytes.Repeat([]byte{'s'}, 100)
	burst := bytes.Repeat([]byte{'b'}, 64<<10)
	// Grow both TLS ends' buffers as the relayed traffic will, so that the
	// relay's own cost is what remains.
	exchange := func(a, b net.Conn) {
		buf := make([]byte, len(burst))
		msgs := [][]byte{small}
		if bulk {
			msgs = append(msgs, burst, small)
		}
		for _, msg := range msgs {
			for _, pair := range [][2]net.Conn{{a, b}, {b, a}} {
				errc := make(chan error, 1)
				go func() { _, err := pair[0].Write(msg); errc <- err }()
				if _, err := io.ReadFull(pair[1], buf[:len(msg)]); err != nil {
					tb.Fatal(err)
				}
				if err := <-errc; err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
	for i := range rigs {
		rigs[i] = newRig(tb, ln)
		rigs[i].mode = mode
		exchange(rigs[i].pu, rigs[i].server)
	}
	tlsP0, tlsS0 := tlsBufs(rigs)
	before := relayMemInUse()
	for _, r := range rigs {
		r.start()
		exchange(r.app, r.server)
	}
	time.Sleep(100 * time.Millisecond) // let every relay block in Read
	after := relayMemInUse()
	tlsP1, tlsS1 := tlsBufs(rigs)
	for _, r := range rigs {
		r.app.Close()
		r.server.Close()
	}
	for _, r := range rigs {
		<-r.done
	}
	per := func(d int64) float64 { return float64(d) / float64(n) }
	return idleMem{
		// The relayed traffic may have grown crypto/tls's buffers (of
		// both ends) past what the direct exchange did: not the relay's.
		relayHeap:  per(after.heap - before.heap - (tlsP1 - tlsP0) - (tlsS1 - tlsS0)),
		tlsIn:      per(tlsP1),
		relayStack: per(after.stack - before.stack),
		all:        per(after.heap + after.stack - base.heap - base.stack),
	}
}

// relayMemUse is heap and stack in use after a collection.
type relayMemUse struct{ heap, stack int64 }

func relayMemInUse() relayMemUse {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return relayMemUse{int64(ms.HeapInuse), int64(ms.StackInuse)}
}

// idleMem is the result of idleSessionMemory, in bytes per session.
type idleMem struct {
	relayHeap, relayStack float64 // held by the relays
	tlsIn                 float64 // crypto/tls's buffers of the proxy's upstream leg
	all                   float64 // everything, both ends of both legs included
}

func (m idleMem) relay() float64 { return m.relayHeap + m.relayStack }

// tlsBufCap is the capacity of a tls.Conn's internal buffers (raw input,
// handshake, send), read by reflection: crypto/tls grows its raw input
// buffer to the records it receives (and to how much arrives per read) and
// never shrinks it, whoever reads. It is measured apart so that the relay's
// own memory is what the benchmark reports. It returns 0 if crypto/tls's
// fields are not found.
func tlsBufCap(c *tls.Conn) int64 {
	v := reflect.ValueOf(c).Elem()
	var n int64
	for _, f := range []string{"rawInput", "hand"} {
		if b := v.FieldByName(f); b.IsValid() {
			if buf := b.FieldByName("buf"); buf.IsValid() && buf.Kind() == reflect.Slice {
				n += int64(buf.Cap())
			}
		}
	}
	if b := v.FieldByName("sendBuf"); b.IsValid() && b.Kind() == reflect.Slice {
		n += int64(b.Cap())
	}
	return n
}

// tlsBufs sums tlsBufCap over the rigs' TLS conns: the proxy's upstream leg
// and the server's end.
func tlsBufs(rigs []*relayRig) (proxy, server int64) {
	for _, r := range rigs {
		proxy += tlsBufCap(r.pu.(*tls.Conn))
		server += tlsBufCap(r.server)
	}
	return proxy, server
}

// BenchmarkRelayIdleSessions reports the memory of 1000 idle relayed
// sessions (see idleSessionMemory), after small messages only and after
// bulk data; its ns/op is meaningless (run it with -benchtime=1x).
func BenchmarkRelayIdleSessions(b *testing.B) {
	const n = 1000
	for _, bulk := range []bool{false, true} {
		b.Run(fmt.Sprintf("bulk=%v", bulk), func(b *testing.B) {
			var m idleMem
			for range b.N {
				m = idleSessionMemory(b, n, bulk, defaultRelayMode)
			}
			b.ReportMetric(m.relay(), "relay-B/session")
			b.ReportMetric(m.relayStack, "relay-stack-B/session")
			b.ReportMetric(m.tlsIn, "tls-bufs-B/session")
			b.ReportMetric(m.all, "all-B/session")
		})
	}
}
