//go:build linux

package integration

// The attack table of the relay: peers that passed admission, verification
// and the login, then try to make the proxy hold what they never take, or
// meet it at its descriptor limit. The proxy is the real binary, on its
// default relay engine, in front of the real PostgreSQL 15 or of a hostile
// server that holds a valid certificate.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

// gcLive reads the live heap the Go runtime reports after each collection
// (GODEBUG=gctrace=1: "gc N @… A->B->C MB"), from the proxy's stderr.
var gcLive = regexp.MustCompile(`(?m)^gc \d+ @[^\n]*? \d+->\d+->(\d+) MB`)

// gcLiveMB returns the live heap, in MB, after every collection logged in
// log from offset on.
func gcLiveMB(log string, from int) []int {
	var out []int
	for _, m := range gcLive.FindAllStringSubmatch(log[from:], -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// floodSlack is what the proxy's live heap may grow by, in MB, while one
// hostile session floods it: the relay's bound (2 × 256 KiB per session),
// crypto/tls's buffers, and gctrace's 1 MB resolution. Without the bound a
// 16 MiB KeyUpdate flood kept about 14 MB live.
const floodSlack = 3

// hostileFloodTotal is how much a flooding peer sends at most; it stops
// earlier once a write has waited two seconds (the proxy stopped reading).
const hostileFloodTotal = 16 << 20

// hostileRow is one row of the relay's attack table.
type hostileRow struct {
	name string
	// upstream, when set, starts the server the route points at and
	// returns its port (default: the real PostgreSQL).
	upstream func(t *testing.T, r *hostileRun) int
	// attack runs the hostile session until its flood is over (all sent,
	// or the proxy stopped reading), and says what it sent.
	attack func(t *testing.T, r *hostileRun) string
}

// hostileRun is one row's proxy and what its peers share.
type hostileRun struct {
	p        *cliProxy
	upstream int
	flooded  chan string // a hostile server's report
	arm      func()      // a hostile server floods the next login
}

// TestHostilePeersDuringRelay: each row is one hostile session through the
// proxy binary (GOGC=10, so that it collects often, and gctrace, so that
// the test reads its live heap). While the flood runs and once it has
// stalled, the live heap may grow by at most floodSlack MB; the session
// stays bounded, not ended, and a good session through the same proxy
// still works.
func TestHostilePeersDuringRelay(t *testing.T) {
	for _, row := range []hostileRow{
		{name: "client floods TLS 1.3 KeyUpdates and never reads", attack: clientKeyUpdateFlood},
		{name: "server with a valid certificate floods KeyUpdates at a client that never reads", upstream: keyUpdateServer, attack: silentClient},
		{name: "client starts COPY TO and never reads", attack: copyToNeverRead},
	} {
		t.Run(row.name, func(t *testing.T) {
			r := &hostileRun{upstream: cluster.Port, flooded: make(chan string, 1)}
			if row.upstream != nil {
				r.upstream = row.upstream(t, r)
			}
			r.p = startCLI(t, []string{"GODEBUG=gctrace=1", "GOGC=10"},
				"--upstream", fmt.Sprintf("localhost:%d", r.upstream), "--ca-file", rootFile, "--pin-dir", t.TempDir())
			stir := func() { // TLS handshakes upstream: allocations, so collections
				for range 3 {
					runPsql(t, r.p.port, "user="+harness.MD5User+" sslmode=require connect_timeout=5", harness.MD5Password, whoAmI)
				}
			}
			stir()
			base := 0
			for _, n := range gcLiveMB(r.p.log(), 0) {
				base = max(base, n)
			}
			from := len(r.p.log())
			what := row.attack(t, r)
			stir()
			during := gcLiveMB(r.p.log(), from)
			if len(during) == 0 {
				t.Fatalf("no collection ran during and after the flood (%s): the live heap cannot be read\n%s", what, r.p.log())
			}
			top := 0
			for _, n := range during {
				top = max(top, n)
			}
			t.Logf("%s; live heap at most %d MB before, %d MB during and after (%d collections)", what, base, top, len(during))
			if top > base+floodSlack {
				t.Errorf("one hostile session grew the proxy's live heap from %d MB to %d MB (allowed: +%d MB)", base, top, floodSlack)
			}
			if row.upstream == nil {
				res := runPsql(t, r.p.port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, whoAmI)
				if res.code != 0 || res.out != harness.MD5User+"|true" {
					t.Errorf("psql during the hostile session: exit %d %q %q", res.code, res.out, res.err)
				}
			}
			if strings.Contains(r.p.log(), "panic") {
				t.Errorf("proxy log:\n%s", r.p.log())
			}
		})
	}
}

// floodConn writes what fill makes to c until hostileFloodTotal bytes went
// out or a write has waited two seconds, and returns what was written.
func floodConn(t *testing.T, c net.Conn, fill func() []byte) int64 {
	t.Helper()
	var sent int64
	for sent < hostileFloodTotal {
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Write(fill())
		sent += int64(n)
		if err != nil {
			if !os.IsTimeout(err) {
				t.Logf("flood ended: %v", err)
			}
			break
		}
	}
	return sent
}

// keyUpdates returns a fill for floodConn: 2400 KeyUpdates asking for an
// answer, with one byte of data() after every 15.
func keyUpdates(t *testing.T, rw *testpki.RecordWriter, data func() []byte) func() []byte {
	return func() []byte {
		if _, err := rw.KeyUpdateBatch(2400, data); err != nil {
			t.Fatal(err)
		}
		return rw.Take()
	}
}

// slowQuery hands out, a byte at a time, a Query message longer than any
// flood: the server waits for the rest instead of refusing garbage.
func slowQuery() func() []byte {
	body := append([]byte("select 1 /* "), bytes.Repeat([]byte("x"), 4<<20)...)
	body = append(body, " */\x00"...)
	msg := append([]byte{'Q'}, binary.BigEndian.AppendUint32(nil, uint32(4+len(body)))...)
	msg = append(msg, body...)
	return func() []byte {
		b := msg[:1]
		msg = msg[1:]
		return b
	}
}

// clientKeyUpdateFlood logs in over TLS as the md5 user, then sends
// KeyUpdates that ask for an answer, and reads nothing.
func clientKeyUpdateFlood(t *testing.T, r *hostileRun) string {
	raw, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.p.port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := raw.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil { // SSLRequest
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(raw, b); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", b, err)
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // the proxy's generated certificate
	if _, err := portableLogin(c); err != nil {
		t.Fatal(err)
	}
	_ = raw.SetDeadline(time.Time{})
	rw, err := testpki.TakeOver(c, raw)
	if err != nil {
		t.Fatal(err)
	}
	sent := floodConn(t, raw, keyUpdates(t, rw, slowQuery()))
	return fmt.Sprintf("the client sent %.1f MiB of KeyUpdates", float64(sent)/(1<<20))
}

// keyUpdateServer starts a server with the test PKI's valid leaf that
// lets anyone in. Its first session floods the proxy with KeyUpdates that
// ask for an answer (NoticeResponse bytes after every 15) and reads
// nothing; the others (the proxy's probes, psql) just end.
func keyUpdateServer(t *testing.T, r *hostileRun) int {
	t.Helper()
	notice, err := (&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "x"}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	armed := false // set when the hostile client is about to log in
	r.flooded = make(chan string, 1)
	fake, err := testpki.StartFakeUpstream(func(c net.Conn, _ *testpki.FakeUpstream) net.Conn {
		if _, err := c.Write([]byte{'S'}); err != nil {
			return nil
		}
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{pki.Leaf.TLSCertificate(pki.Intermediate)}, MinVersion: tls.VersionTLS13})
		if err := s.Handshake(); err != nil {
			return nil
		}
		be := pgproto3.NewBackend(s, s)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return nil
		}
		mu.Lock()
		hostile := armed
		armed = false
		mu.Unlock()
		if !hostile {
			be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28000", Message: "not this one"})
			_ = be.Flush()
			return nil
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if be.Flush() != nil {
			return nil
		}
		rw, err := testpki.TakeOver(s, c)
		if err != nil {
			t.Error(err)
			return nil
		}
		i := 0
		sent := floodConn(t, c, keyUpdates(t, rw, func() []byte {
			b := notice[i%len(notice) : i%len(notice)+1]
			i++
			return b
		}))
		r.flooded <- fmt.Sprintf("the server sent %.1f MiB of KeyUpdates", float64(sent)/(1<<20))
		time.Sleep(10 * time.Second) // hold the session while the test reads the heap
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	t.Cleanup(func() {
		mu.Lock()
		armed = false
		mu.Unlock()
	})
	r.arm = func() {
		mu.Lock()
		armed = true
		mu.Unlock()
	}
	return fake.Port
}

// silentClient logs in through the proxy in plaintext to keyUpdateServer
// and never reads.
func silentClient(t *testing.T, r *hostileRun) string {
	r.arm()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.p.port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(protoStartupPacket(196608, [][2]string{{"user", "anyone"}, {"database", "postgres"}})); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("logging in through the proxy to the hostile server: %v\n%s", err, r.p.log())
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	select {
	case what := <-r.flooded:
		return what
	case <-time.After(2 * time.Minute):
		t.Fatal("the hostile server's flood neither ended nor stalled in 2 minutes")
		return ""
	}
}

// copyToNeverRead logs in in plaintext, starts a COPY TO of 2 GB and reads
// nothing: the server's backend must come to wait to write to its client
// (the back-pressure reached it).
func copyToNeverRead(t *testing.T, r *hostileRun) string {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.p.port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := portableLogin(c); err != nil {
		t.Fatal(err)
	}
	const marker = "pgvp-copy-never-read"
	q := "copy (select repeat('x', 1000) from generate_series(1, 2000000)) to stdout /* " + marker + " */"
	msg := append([]byte{'Q'}, binary.BigEndian.AppendUint32(nil, uint32(4+len(q)+1))...)
	if _, err := c.Write(append(append(msg, q...), 0)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	adm := protoConnect(t, ctx, cluster.AdminConnString())
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ev string
		err := adm.QueryRow(ctx, "select coalesce(wait_event, '') from pg_stat_activity where query like '%"+marker+"%' and pid <> pg_backend_pid()").Scan(&ev)
		if err == nil && ev == "ClientWrite" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backend of the unread COPY TO never waited to write to its client (wait_event %q, %v)", ev, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "the server's COPY TO waits to write (wait_event ClientWrite)"
}

// TestHandOverAtTheDescriptorLimitBinary: the proxy binary at its
// open-files limit, with the descriptors a session needs (the client's,
// the upstream's) and none for the event loop's hand-over. The session
// goes on, on the goroutine engine, with the reason in its log line;
// before issue 23 the failed hand-over closed both connections, and psql
// lost its session.
func TestHandOverAtTheDescriptorLimitBinary(t *testing.T) {
	const limit = 96
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--upstream", fmt.Sprintf("127.0.0.1:%d", cluster.Port), "--server-name", "localhost", "--ca-file", rootFile,
		"--pin-dir", t.TempDir(), "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--max-startup-connections", "1000"}
	p := startBinary(t, "prlimit", cleanEnv(), append([]string{fmt.Sprintf("--nofile=%d:%d", limit, limit), "--", binPath}, args...)...)
	pid := p.cmd.Process.Pid // prlimit execs the proxy
	psql := func() psqlResult {
		return runPsql(t, port, "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, whoAmI)
	}
	// A first session: the loops' descriptors are open, the CA file read.
	if r := psql(); r.code != 0 {
		t.Fatalf("psql: exit %d %q\n%s", r.code, r.err, p.log())
	}
	// open counts the descriptors below the limit: the numbers a new one
	// can take (one inherited from the test runner may sit above it).
	open := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd < limit {
				n++
			}
		}
		return n
	}
	// Connections that send nothing take descriptors until two are left:
	// the next session's two connections.
	time.Sleep(200 * time.Millisecond) // the first session's descriptors are closed
	for n := open(); n < limit-2; n = open() {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		deadline := time.Now().Add(5 * time.Second)
		for open() == n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n := open(); n != limit-2 {
		t.Fatalf("%d descriptors open, want %d", n, limit-2)
	}
	r := psql()
	if r.code != 0 || r.out != harness.MD5User+"|true" {
		t.Fatalf("psql at the descriptor limit: exit %d %q %q\n%s", r.code, r.out, r.err, p.log())
	}
	waitForLog(t, p, "relay_fallback=")
	for _, line := range strings.Split(p.log(), "\n") {
		if strings.Contains(line, "relay_fallback=") && (!strings.Contains(line, "relay=goroutine") || !strings.Contains(line, "too many open files")) {
			t.Errorf("fallback line without the goroutine engine and the reason: %s", line)
		}
	}
}
