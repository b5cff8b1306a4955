//go:build linux

package integration

// Protocol features and query cancellation through the proxy (issue 4,
// items 3 and 4), against the real PostgreSQL 15 of TestMain. Each test does
// what an application does and asserts what its user sees; where it helps,
// the proxied result is compared with the same thing done directly against
// the server (verify-full to host=localhost, the test root as sslrootcert).

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// protoLegs are the two client legs to the proxy: plaintext and TLS. The md5
// user logs in on both without channel-binding concerns.
var protoLegs = []struct {
	name, sslmode string
}{
	{"plaintext", "disable"},
	{"TLS", "require"},
}

// protoProxyDSN is a connection string to the proxy on port.
func protoProxyDSN(port int, user, password, sslmode string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=%s connect_timeout=20",
		port, user, password, sslmode)
}

// protoDirectDSN is a connection string straight to the server, verified
// like the proxy verifies it.
func protoDirectDSN(user, password string) string {
	return fmt.Sprintf("host=localhost port=%d user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=20",
		cluster.Port, user, password, rootFile)
}

// protoConnect opens a pgx connection closed at the end of the test.
func protoConnect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connecting (%s): %v", protoRedact(dsn), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// scratchTable creates table name (id int, note text), dropping any earlier
// one, for the md5 user to write, and returns the superuser connection
// (closed at the end of the test) that checks it.
func scratchTable(t *testing.T, ctx context.Context, name string) *pgx.Conn {
	t.Helper()
	adm := protoConnect(t, ctx, cluster.AdminConnString())
	if _, err := adm.Exec(ctx, fmt.Sprintf("drop table if exists %[1]s; create table %[1]s (id int, note text); grant all on %[1]s to %[2]s", name, harness.MD5User)); err != nil {
		t.Fatal(err)
	}
	return adm
}

// protoRedact hides the password of a key=value connection string.
func protoRedact(dsn string) string {
	f := strings.Fields(dsn)
	for i, kv := range f {
		if strings.HasPrefix(kv, "password=") {
			f[i] = "password=***"
		}
	}
	return strings.Join(f, " ")
}

// protoAdminExec runs SQL as the superuser and fails the test on error.
func protoAdminExec(t *testing.T, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cluster.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

// protoWaitActive polls pg_stat_activity as the superuser until a statement
// containing marker is active.
func protoWaitActive(t *testing.T, ctx context.Context, marker string) {
	t.Helper()
	admin, err := pgx.Connect(ctx, cluster.AdminConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	for {
		var n int
		if err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where state = 'active' and query like '%'||$1||'%' and pid <> pg_backend_pid()", marker).Scan(&n); err != nil {
			t.Fatalf("polling pg_stat_activity for %q: %v", marker, err)
		}
		if n > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the statement %q never showed up as active in pg_stat_activity", marker)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// protoErrString describes an error as a user sees it: a server error by
// severity, SQLSTATE and message, anything else by its text.
func protoErrString(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s %s: %s", pe.Severity, pe.Code, pe.Message)
	}
	return "client error: " + err.Error()
}

// protoBatchOutcomes sends b as one pipelined batch and returns, per query,
// its rows (formatted) or its error.
func protoBatchOutcomes(ctx context.Context, conn *pgx.Conn, b *pgx.Batch) ([]string, error) {
	br := conn.SendBatch(ctx, b)
	out := make([]string, b.Len())
	for i := range out {
		rows, err := br.Query()
		if err == nil {
			var vals [][]any
			for rows.Next() {
				v, verr := rows.Values()
				if verr != nil {
					err = verr
					break
				}
				vals = append(vals, v)
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
			if err == nil {
				out[i] = fmt.Sprint(vals)
				continue
			}
		}
		out[i] = protoErrString(err)
	}
	return out, br.Close()
}

// TestProtocolBatchPipeline sends 500 parameterized queries of four kinds as
// one pgx Batch (extended protocol, pipelined: pgx prepares the four
// statements in one round trip, then writes all 500 Bind/Describe/Execute
// groups before a single Sync) with a division by zero in the middle. Through the
// proxy, every query before the failing one returns its exact value, the
// failing one reports 22012, the ones after it are not run, and the outcome
// list equals the one of the same batch sent directly to the server. A second
// batch without error then succeeds entirely on the same connection.
func TestProtocolBatchPipeline(t *testing.T) {
	const n, errAt = 500, 317
	p := startProxy(t, proxyOpts{})
	build := func(withError bool) (*pgx.Batch, []string) {
		b := &pgx.Batch{}
		want := make([]string, n)
		for i := range n {
			switch {
			case withError && i == errAt:
				b.Queue("select 1 / $1::int", 0)
				want[i] = "ERROR 22012: division by zero"
			case i%3 == 0:
				b.Queue("select $1::int * 2, $2::text || '-' || $1::text", i, fmt.Sprintf("row%d", i))
				want[i] = fmt.Sprint([][]any{{int32(2 * i), fmt.Sprintf("row%d-%d", i, i)}})
			case i%3 == 1:
				b.Queue("select $1::bigint + $2::bigint", int64(i), int64(1)<<40)
				want[i] = fmt.Sprint([][]any{{int64(i) + 1<<40}})
			default:
				b.Queue("select repeat($1::text, $2::int) from generate_series(1, $3::int)", "ab", i%50, i%4)
				var rows [][]any
				for range i % 4 {
					rows = append(rows, []any{strings.Repeat("ab", i%50)})
				}
				want[i] = fmt.Sprint(rows)
			}
		}
		return b, want
	}
	for _, leg := range protoLegs {
		t.Run(leg.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			conn := protoConnect(t, ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode))
			direct := protoConnect(t, ctx, protoDirectDSN(harness.MD5User, harness.MD5Password))

			b, want := build(true)
			got, closeErr := protoBatchOutcomes(ctx, conn, b)
			db, _ := build(true)
			gotDirect, closeErrDirect := protoBatchOutcomes(ctx, direct, db)
			for i := range n {
				switch {
				case i <= errAt && got[i] != want[i]:
					t.Errorf("query %d through the proxy: got %s, want %s", i, got[i], want[i])
				case i > errAt && !strings.HasPrefix(got[i], "ERROR") && !strings.HasPrefix(got[i], "client error"):
					t.Errorf("query %d after the failing one ran through the proxy: %s", i, got[i])
				}
				if got[i] != gotDirect[i] {
					t.Errorf("query %d: through the proxy %s, directly %s", i, got[i], gotDirect[i])
				}
			}
			t.Logf("after the failing query pgx reports: %s", got[errAt+1])
			if fmt.Sprint(closeErr) != fmt.Sprint(closeErrDirect) {
				t.Errorf("batch close: through the proxy %v, directly %v", closeErr, closeErrDirect)
			}

			b, want = build(false)
			got, err := protoBatchOutcomes(ctx, conn, b)
			if err != nil {
				t.Fatalf("second batch: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("second batch, query %d: got %s, want %s", i, got[i], want[i])
					}
				}
			}
		})
	}
}

// protoCopyAlphabet holds 64 characters that COPY's text format passes
// unescaped.
const protoCopyAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// protoCopyRows is a deterministic COPY text stream of (id, payload) rows,
// generated while it is read: it never holds more than one 64 KiB chunk.
// It hashes what it produced: the whole stream (sha256) and, as the server
// computes it, the md5 of the payloads' md5s (hex) concatenated in id order.
type protoCopyRows struct {
	rng          *rand.PCG
	target       int64 // stop after the row that reaches this many bytes
	produced     int64
	rows         int64
	payloadBytes int64
	buf, pending []byte
	streamSHA    hash.Hash
	payloadMD5   hash.Hash
	hex          [32]byte
}

func newProtoCopyRows(target int64) *protoCopyRows {
	return &protoCopyRows{
		rng: rand.NewPCG(20260401, 4), target: target,
		buf:       make([]byte, 0, 72<<10),
		streamSHA: sha256.New(), payloadMD5: md5.New(),
	}
}

func (g *protoCopyRows) Read(p []byte) (int, error) {
	if len(g.pending) == 0 {
		if g.produced >= g.target {
			return 0, io.EOF
		}
		g.fill()
	}
	n := copy(p, g.pending)
	g.pending = g.pending[n:]
	return n, nil
}

// fill generates the next chunk of whole rows; payloads are 100 to 1999
// characters long.
func (g *protoCopyRows) fill() {
	b := g.buf[:0]
	for len(b) < 64<<10 && g.produced+int64(len(b)) < g.target {
		g.rows++
		b = strconv.AppendInt(b, g.rows, 10)
		b = append(b, '\t')
		start := len(b)
		n := 100 + int(g.rows*7919%1900)
		for len(b)-start < n {
			x := g.rng.Uint64()
			for j := 0; j < 10 && len(b)-start < n; j++ {
				b = append(b, protoCopyAlphabet[x&63])
				x >>= 6
			}
		}
		sum := md5.Sum(b[start:])
		g.payloadMD5.Write(hex.AppendEncode(g.hex[:0], sum[:]))
		g.payloadBytes += int64(n)
		b = append(b, '\n')
	}
	g.produced += int64(len(b))
	g.streamSHA.Write(b)
	g.buf, g.pending = b, b
}

// TestProtocolCopyLarge streams 1 GiB of generated rows into an UNLOGGED
// table with COPY FROM STDIN over the plaintext leg, and the table back out
// with COPY TO STDOUT over the TLS leg, neither ever held in memory. The
// server's count, total payload length and md5 over the payloads' md5s in id
// order must equal what the client computed while sending, and the sha256
// of the COPY TO output (text format, ordered by id) must equal the sha256
// of the COPY FROM input, byte for byte the same stream. It runs once per
// relay engine of this system (on Linux the loop, the goroutine engine and
// the portable one), and both sessions of each run must be relayed by
// that engine.
func TestProtocolCopyLarge(t *testing.T) {
	engines := []proxy.RelayEngine{proxy.RelayLoop, proxy.RelayGoroutine, proxy.RelayPortable}
	if harness.DefaultRelay() != "loop" {
		engines = []proxy.RelayEngine{proxy.RelayPortable}
	}
	for _, e := range engines {
		t.Run(string(e), func(t *testing.T) { protocolCopyLarge(t, e) })
	}
}

func protocolCopyLarge(t *testing.T, engine proxy.RelayEngine) {
	const size = 1 << 30
	const table = "pgvp_proto_copy"
	logger, logBuf := relayLog()
	p := startProxy(t, proxyOpts{log: logger, relay: engine})
	protoAdminExec(t, fmt.Sprintf("drop table if exists %[1]s; create unlogged table %[1]s (id bigint not null, payload text not null); grant select, insert on %[1]s to %[2]s", table, harness.MD5User))
	t.Cleanup(func() { protoAdminExec(t, "drop table if exists "+table) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	in := protoConnect(t, ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, "disable"))
	gen := newProtoCopyRows(size)
	start := time.Now()
	tag, err := in.PgConn().CopyFrom(ctx, gen, "copy "+table+" (id, payload) from stdin")
	if err != nil {
		t.Fatalf("COPY FROM STDIN through the proxy: %v", err)
	}
	inDur := time.Since(start)
	inSHA := hex.EncodeToString(gen.streamSHA.Sum(nil))
	payloadMD5 := hex.EncodeToString(gen.payloadMD5.Sum(nil))
	t.Logf("COPY FROM STDIN (plaintext leg): %d bytes (%.1f MiB), %d rows, payload %d bytes, in %v (%.0f MiB/s); stream sha256 %s; payload md5 %s",
		gen.produced, float64(gen.produced)/(1<<20), gen.rows, gen.payloadBytes, inDur.Round(time.Millisecond),
		float64(gen.produced)/(1<<20)/inDur.Seconds(), inSHA, payloadMD5)
	if gen.produced < size {
		t.Fatalf("generated only %d bytes", gen.produced)
	}
	if tag.RowsAffected() != gen.rows {
		t.Errorf("COPY reported %d rows, the client sent %d", tag.RowsAffected(), gen.rows)
	}

	start = time.Now()
	var rows, lenSum, minID, maxID int64
	var serverMD5 string
	// A text value is at most 1 GB: the server hashes each payload, then
	// the hashes in id order.
	if err := in.QueryRow(ctx, "select count(*), sum(length(payload)), md5(string_agg(md5(payload), '' order by id)), min(id), max(id) from "+table).
		Scan(&rows, &lenSum, &serverMD5, &minID, &maxID); err != nil {
		t.Fatalf("server-side checksum: %v", err)
	}
	t.Logf("server side: %d rows, ids %d..%d, sum(length(payload)) %d, md5(string_agg(md5(payload) order by id)) %s, in %v",
		rows, minID, maxID, lenSum, serverMD5, time.Since(start).Round(time.Millisecond))
	if rows != gen.rows || minID != 1 || maxID != gen.rows || lenSum != gen.payloadBytes || serverMD5 != payloadMD5 {
		t.Errorf("server has %d rows (ids %d..%d), %d payload bytes, md5 %s; the client sent %d rows, %d payload bytes, md5 %s",
			rows, minID, maxID, lenSum, serverMD5, gen.rows, gen.payloadBytes, payloadMD5)
	}

	// An index on id spares the server sorting 1 GiB for "order by id".
	start = time.Now()
	protoAdminExec(t, fmt.Sprintf("alter table %[1]s add primary key (id); analyze %[1]s", table))
	t.Logf("primary key and analyze in %v", time.Since(start).Round(time.Millisecond))

	out := protoConnect(t, ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, "require"))
	if _, ok := out.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatal("the COPY TO connection is not on the TLS leg")
	}
	copyOut := "copy (select id, payload from " + table + " order by id) to stdout"
	var plan []string
	rs, err := out.Query(ctx, "explain (costs off) select id, payload from "+table+" order by id")
	if err == nil {
		plan, err = pgx.CollectRows(rs, pgx.RowTo[string])
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan: %s", strings.Join(plan, " / "))
	w := harness.NewSHA256Writer()
	start = time.Now()
	tag, err = out.PgConn().CopyTo(ctx, w, copyOut)
	if err != nil {
		t.Fatalf("COPY TO STDOUT through the proxy: %v", err)
	}
	outDur := time.Since(start)
	outSHA := hex.EncodeToString(w.Sum())
	t.Logf("COPY TO STDOUT (TLS leg): %d bytes (%.1f MiB), %d rows, in %v (%.0f MiB/s); sha256 %s (expected, from what was sent: %s)",
		w.Len(), float64(w.Len())/(1<<20), tag.RowsAffected(), outDur.Round(time.Millisecond), float64(w.Len())/(1<<20)/outDur.Seconds(), outSHA, inSHA)
	if w.Len() != gen.produced || outSHA != inSHA || tag.RowsAffected() != gen.rows {
		t.Errorf("COPY TO gave %d bytes, %d rows, sha256 %s; COPY FROM sent %d bytes, %d rows, sha256 %s",
			w.Len(), tag.RowsAffected(), outSHA, gen.produced, gen.rows, inSHA)
	}

	_ = in.Close(ctx)
	_ = out.Close(ctx)
	waitFor(t, "both COPY sessions ended", func() bool { return strings.Count(logBuf.String(), `msg="session ended"`) == 2 })
	if n := strings.Count(logBuf.String(), " relay="+string(engine)); n != 2 {
		t.Errorf("%d of the 2 COPY sessions were relayed by the %s engine, want both:\n%s", n, engine, logBuf.String())
	}
}

// TestProtocolListenNotify LISTENs on one proxied connection (plaintext leg)
// and NOTIFYs from another (TLS leg): the listener receives each payload
// (non-ASCII, and one near the 8000-byte limit) on the right channel, from
// the notifier's backend PID, in order.
func TestProtocolListenNotify(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	listener := protoConnect(t, ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, "disable"))
	notifier := protoConnect(t, ctx, protoProxyDSN(p.port, harness.ScramUser, harness.ScramPassword, "require channel_binding=disable"))
	const channel = "pgvp proto Channel"
	if _, err := listener.Exec(ctx, "listen "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	var notifierPID uint32
	if err := notifier.QueryRow(ctx, "select pg_backend_pid()").Scan(&notifierPID); err != nil {
		t.Fatal(err)
	}
	if notifierPID != notifier.PgConn().PID() {
		t.Errorf("pg_backend_pid() %d, BackendKeyData PID %d", notifierPID, notifier.PgConn().PID())
	}
	payloads := []string{"héllo ✓ from the TLS leg", strings.Repeat("0123456789", 790)}
	for _, pl := range payloads {
		if _, err := notifier.Exec(ctx, "select pg_notify($1, $2)", channel, pl); err != nil {
			t.Fatal(err)
		}
	}
	for i, pl := range payloads {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := listener.WaitForNotification(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("notification %d: %v", i, err)
		}
		if n.Channel != channel || n.Payload != pl || n.PID != notifierPID {
			t.Errorf("notification %d: channel %q, payload %d bytes %.40q, PID %d; want %q, %d bytes %.40q, PID %d",
				i, n.Channel, len(n.Payload), n.Payload, n.PID, channel, len(pl), pl, notifierPID)
		}
	}
	var one int
	if err := listener.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("listener after notifications: %v", err)
	}
}

// TestProtocolLargeBytea sends a 64 MiB bytea as a parameter on each leg,
// has the server hash it (sha256(b), length(b)) and reads it back: both
// hashes equal the client's and the bytes are identical.
func TestProtocolLargeBytea(t *testing.T) {
	const size = 64 << 20
	data := make([]byte, size)
	rng := rand.NewPCG(64, 20260401)
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(data[i:], rng.Uint64())
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	p := startProxy(t, proxyOpts{})
	for _, leg := range protoLegs {
		t.Run(leg.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			conn := protoConnect(t, ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode))
			if _, err := conn.Exec(ctx, "create temp table pgvp_proto_blob (b bytea)"); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := conn.Exec(ctx, "insert into pgvp_proto_blob values ($1)", data); err != nil {
				t.Fatalf("insert: %v", err)
			}
			insertDur := time.Since(start)
			var serverSHA string
			var serverLen int
			if err := conn.QueryRow(ctx, "select encode(sha256(b), 'hex'), length(b) from pgvp_proto_blob").Scan(&serverSHA, &serverLen); err != nil {
				t.Fatal(err)
			}
			start = time.Now()
			var back []byte
			if err := conn.QueryRow(ctx, "select b from pgvp_proto_blob").Scan(&back); err != nil {
				t.Fatalf("select: %v", err)
			}
			selectDur := time.Since(start)
			backSum := sha256.Sum256(back)
			got := hex.EncodeToString(backSum[:])
			t.Logf("64 MiB bytea (%s leg): client sha256 %s; server sha256(b) %s, length %d; read back %d bytes, sha256 %s; insert %v, select %v",
				leg.name, want, serverSHA, serverLen, len(back), got, insertDur.Round(time.Millisecond), selectDur.Round(time.Millisecond))
			if serverSHA != want || serverLen != size {
				t.Errorf("server: sha256 %s, length %d; client sent sha256 %s, length %d", serverSHA, serverLen, want, size)
			}
			if got != want || !bytes.Equal(back, data) {
				t.Errorf("read back %d bytes with sha256 %s; want %d bytes with sha256 %s", len(back), got, size, want)
			}
		})
	}
}

// protoStartupPacket encodes a StartupMessage with the parameters in the
// given order (pgproto3 encodes a map, in random order).
func protoStartupPacket(version uint32, params [][2]string) []byte {
	b := []byte{0, 0, 0, 0}
	b = binary.BigEndian.AppendUint32(b, version)
	for _, kv := range params {
		b = append(b, kv[0]...)
		b = append(b, 0)
		b = append(b, kv[1]...)
		b = append(b, 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// protoReadRaw reads one whole backend message, header included.
func protoReadRaw(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > 1<<20 {
		return nil, fmt.Errorf("message %q with length %d", hdr[0], n)
	}
	raw := make([]byte, 1+n)
	copy(raw, hdr)
	_, err := io.ReadFull(r, raw[5:])
	return raw, err
}

// protoRawResult is what a hand-driven session saw.
type protoRawResult struct {
	first  []byte   // the first backend message, raw
	after  []string // types of the messages after it, up to ReadyForQuery
	params map[string]string
	rows   []string // DataRow values of the query, '|'-joined
}

// protoRawSession drives a session by hand over conn with pgproto3: the
// startup packet, the first server message read raw, md5 password
// authentication, then one simple query.
func protoRawSession(conn net.Conn, startup []byte, user, password, query string) (*protoRawResult, error) {
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(startup); err != nil {
		return nil, err
	}
	res := &protoRawResult{params: map[string]string{}}
	var err error
	if res.first, err = protoReadRaw(conn); err != nil {
		return nil, fmt.Errorf("reading the first server message: %w", err)
	}
	fe := pgproto3.NewFrontend(conn, conn)
	// The first message may itself be the authentication request.
	var pending pgproto3.BackendMessage
	if res.first[0] == 'R' {
		var md5req pgproto3.AuthenticationMD5Password
		if err := md5req.Decode(res.first[5:]); err != nil {
			return nil, fmt.Errorf("first message: %w", err)
		}
		pending = &md5req
	}
	for {
		msg := pending
		pending = nil
		if msg == nil {
			if msg, err = fe.Receive(); err != nil {
				return res, fmt.Errorf("receiving: %w", err)
			}
			res.after = append(res.after, fmt.Sprintf("%T", msg))
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationMD5Password:
			inner := md5.Sum([]byte(password + user))
			outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), m.Salt[:]...))
			fe.Send(&pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(outer[:])})
			if err := fe.Flush(); err != nil {
				return res, err
			}
		case *pgproto3.ParameterStatus:
			res.params[m.Name] = m.Value
		case *pgproto3.ErrorResponse:
			return res, fmt.Errorf("server error: %s %s: %s", m.Severity, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			if query == "" {
				fe.Send(&pgproto3.Terminate{})
				return res, fe.Flush()
			}
			fe.Send(&pgproto3.Query{String: query})
			if err := fe.Flush(); err != nil {
				return res, err
			}
			query = ""
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
			res.rows = append(res.rows, strings.Join(vals, "|"))
		}
	}
}

// protoDialDirectTLS connects to the server the way libpq's verify-full
// does, with the project's own verified dialer (SSLRequest, 'S', TLS
// verified against the test root for localhost).
func protoDialDirectTLS(ctx context.Context) (net.Conn, error) {
	d := &chain.Dialer{Host: "localhost", Port: cluster.Port, Roots: testpki.Pool(pki.Root)}
	c, err := d.Dial(ctx)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, nil
}

// protoDialProxy connects to the proxy in plaintext or, with useTLS, after an
// SSLRequest (the proxy's local certificate is not verified: that is the
// client's local hop).
func protoDialProxy(ctx context.Context, port int, useTLS bool) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil || !useTLS {
		return c, err
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		c.Close()
		return nil, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		c.Close()
		return nil, fmt.Errorf("proxy answered SSLRequest with %q, %v", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// TestProtocolNegotiateVersion sends StartupMessages a PostgreSQL 15 server
// must negotiate down (protocol 3.2, unknown _pq_. options) through the
// proxy on each leg, by hand with pgproto3. The server's
// NegotiateProtocolVersion reaches the client byte for byte as the server
// sends it on a direct verify-full connection (3.0 as newest version, the
// unknown options listed in order), the rest of the exchange has the same
// message sequence, and the session then works: md5 password
// authentication and a simple query. A plain 3.0 startup is the control: no
// NegotiateProtocolVersion at all.
func TestProtocolNegotiateVersion(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	base := [][2]string{{"user", harness.MD5User}, {"database", "postgres"}}
	tests := []struct {
		name    string
		version uint32
		extra   [][2]string
		wantNPV *pgproto3.NegotiateProtocolVersion // nil: none expected
	}{
		{"3.0 plain (control)", pgproto3.ProtocolVersion30, nil, nil},
		{"3.2", pgproto3.ProtocolVersion32, nil,
			&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: pgproto3.ProtocolVersion30, UnrecognizedOptions: []string{}}},
		{"3.0 with _pq_.some_ext", pgproto3.ProtocolVersion30, [][2]string{{"_pq_.some_ext", "on"}},
			&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: pgproto3.ProtocolVersion30, UnrecognizedOptions: []string{"_pq_.some_ext"}}},
		{"3.2 with two _pq_ options", pgproto3.ProtocolVersion32, [][2]string{{"_pq_.some_ext", "on"}, {"_pq_.another_ext", "1"}},
			&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: pgproto3.ProtocolVersion30, UnrecognizedOptions: []string{"_pq_.some_ext", "_pq_.another_ext"}}},
	}
	const query = "select current_user, ssl, 6 * 7 from pg_stat_ssl where pid = pg_backend_pid()"
	for _, tc := range tests {
		startup := protoStartupPacket(tc.version, append(append([][2]string{}, base...), tc.extra...))
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dc, err := protoDialDirectTLS(ctx)
			if err != nil {
				t.Fatalf("direct TLS connection: %v", err)
			}
			defer dc.Close()
			direct, err := protoRawSession(dc, startup, harness.MD5User, harness.MD5Password, query)
			if err != nil {
				t.Fatalf("direct session: %v", err)
			}
			for _, leg := range protoLegs {
				c, err := protoDialProxy(ctx, p.port, leg.sslmode == "require")
				if err != nil {
					t.Fatalf("%s: connecting to the proxy: %v", leg.name, err)
				}
				got, err := protoRawSession(c, startup, harness.MD5User, harness.MD5Password, query)
				c.Close()
				if err != nil {
					t.Fatalf("%s: session through the proxy: %v", leg.name, err)
				}
				if tc.wantNPV == nil {
					if got.first[0] != 'R' || direct.first[0] != 'R' {
						t.Errorf("%s: first message %q through the proxy, %q directly; want 'R' (authentication request)", leg.name, got.first[0], direct.first[0])
					}
				} else {
					var npv pgproto3.NegotiateProtocolVersion
					if got.first[0] != 'v' {
						t.Fatalf("%s: first message %q (% x); want NegotiateProtocolVersion 'v'", leg.name, got.first[0], got.first)
					}
					if err := npv.Decode(got.first[5:]); err != nil {
						t.Fatal(err)
					}
					if !reflect.DeepEqual(&npv, tc.wantNPV) {
						t.Errorf("%s: NegotiateProtocolVersion %+v, want %+v", leg.name, npv, *tc.wantNPV)
					}
					if !bytes.Equal(got.first, direct.first) {
						t.Errorf("%s: NegotiateProtocolVersion through the proxy % x, directly % x", leg.name, got.first, direct.first)
					}
					t.Logf("%s: NegotiateProtocolVersion % x (newest version %d.%d, options %q), identical to the direct one",
						leg.name, got.first, npv.NewestMinorProtocol>>16, npv.NewestMinorProtocol&0xffff, npv.UnrecognizedOptions)
				}
				if !reflect.DeepEqual(got.after, direct.after) {
					t.Errorf("%s: messages after the first through the proxy %v, directly %v", leg.name, got.after, direct.after)
				}
				want := []string{harness.MD5User + "|t|42"}
				if !reflect.DeepEqual(got.rows, want) || !reflect.DeepEqual(direct.rows, want) {
					t.Errorf("%s: query rows through the proxy %q, directly %q; want %q", leg.name, got.rows, direct.rows, want)
				}
				if got.params["server_version"] == "" || got.params["server_version"] != direct.params["server_version"] {
					t.Errorf("%s: server_version %q through the proxy, %q directly", leg.name, got.params["server_version"], direct.params["server_version"])
				}
			}
		})
	}
}

// protoNoticeConn connects with a notice collector.
func protoNoticeConn(t *testing.T, ctx context.Context, dsn string) (*pgx.Conn, func() []pgconn.Notice) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var notices []pgconn.Notice
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		defer mu.Unlock()
		notices = append(notices, *n)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connecting (%s): %v", protoRedact(dsn), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, func() []pgconn.Notice {
		mu.Lock()
		defer mu.Unlock()
		out := notices
		notices = nil
		return out
	}
}

// TestProtocolErrorsAndNotices runs statements that make the server send
// errors and notices with many fields (custom SQLSTATE, DETAIL, HINT,
// schema/table/column/type/constraint names, positions, internal query,
// context) through the proxy on each leg and directly. Every field of every
// pgconn.PgError and notice is identical both ways, and the fields the
// statement sets are what it set.
func TestProtocolErrorsAndNotices(t *testing.T) {
	const table = "pgvp_proto_err"
	protoAdminExec(t, fmt.Sprintf("drop table if exists %[1]s; create table %[1]s (id int constraint %[1]s_id_positive check (id > 0)); grant select, insert on %[1]s to %[2]s", table, harness.MD5User))
	t.Cleanup(func() { protoAdminExec(t, "drop table if exists "+table) })
	const raiseAll = `do $$
begin
  raise info 'pgvp info %', 1;
  raise notice 'pgvp notice: % and %', 'α', 42 using detail = 'notice detail ✓', hint = 'notice hint';
  raise warning 'pgvp warning' using errcode = 'PV002', detail = 'warning detail';
  raise exception 'pgvp custom failure: %', 'boom' using errcode = 'PV001', detail = 'the detail', hint = 'the hint',
    column = 'the_column', constraint = 'the_constraint', datatype = 'the_datatype', table = 'the_table', schema = 'the_schema';
end $$`
	tests := []struct {
		name        string
		sql         string
		args        []any
		wantErr     pgconn.PgError // fields that must be set as given (zero: not checked)
		wantNotices []pgconn.Notice
	}{
		{
			name: "RAISE with every field", sql: raiseAll,
			wantErr: pgconn.PgError{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "PV001", Message: "pgvp custom failure: boom",
				Detail: "the detail", Hint: "the hint", SchemaName: "the_schema", TableName: "the_table", ColumnName: "the_column",
				DataTypeName: "the_datatype", ConstraintName: "the_constraint", Where: "PL/pgSQL function inline_code_block line 6 at RAISE",
				Routine: "exec_stmt_raise"},
			wantNotices: []pgconn.Notice{
				{Severity: "INFO", Code: "00000", Message: "pgvp info 1"},
				{Severity: "NOTICE", Code: "00000", Message: "pgvp notice: α and 42", Detail: "notice detail ✓", Hint: "notice hint"},
				{Severity: "WARNING", Code: "PV002", Message: "pgvp warning", Detail: "warning detail"},
			},
		},
		{
			name: "check constraint violation", sql: "insert into " + table + " values ($1)", args: []any{-7},
			wantErr: pgconn.PgError{Severity: "ERROR", Code: "23514", Message: `new row for relation "` + table + `" violates check constraint "` + table + `_id_positive"`,
				Detail: "Failing row contains (-7).", SchemaName: "public", TableName: table, ConstraintName: table + "_id_positive"},
		},
		{
			name: "undefined table with position", sql: "select 1 from pgvp_no_such_table",
			wantErr: pgconn.PgError{Severity: "ERROR", Code: "42P01", Message: `relation "pgvp_no_such_table" does not exist`, Position: 15},
		},
		{
			name: "bad parameter value (extended protocol)", sql: "select $1::int", args: []any{"abc"},
			wantErr: pgconn.PgError{Severity: "ERROR", Code: "22P02", Message: `invalid input syntax for type integer: "abc"`},
		},
		{
			name: "error in dynamic SQL with internal query", sql: "do $$ begin execute 'select 1 from from'; end $$",
			wantErr: pgconn.PgError{Severity: "ERROR", Code: "42601", Message: `syntax error at or near "from"`, InternalQuery: "select 1 from from", InternalPosition: 15},
		},
	}
	p := startProxy(t, proxyOpts{})
	for _, leg := range protoLegs {
		t.Run(leg.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			conn, proxied := protoNoticeConn(t, ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode))
			dconn, directNotices := protoNoticeConn(t, ctx, protoDirectDSN(harness.MD5User, harness.MD5Password))
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					_, err := conn.Exec(ctx, tc.sql, tc.args...)
					_, derr := dconn.Exec(ctx, tc.sql, tc.args...)
					var pe, dpe *pgconn.PgError
					if !errors.As(err, &pe) || !errors.As(derr, &dpe) {
						t.Fatalf("through the proxy: %v; directly: %v; want server errors", err, derr)
					}
					if *pe != *dpe {
						t.Errorf("error through the proxy:\n%+v\ndirectly:\n%+v", *pe, *dpe)
					}
					protoCheckFields(t, "error", *pe, tc.wantErr)
					gotN, dirN := proxied(), directNotices()
					if !reflect.DeepEqual(gotN, dirN) {
						t.Errorf("notices through the proxy:\n%+v\ndirectly:\n%+v", gotN, dirN)
					}
					if len(gotN) != len(tc.wantNotices) {
						t.Fatalf("got %d notices, want %d: %+v", len(gotN), len(tc.wantNotices), gotN)
					}
					for i := range gotN {
						protoCheckFields(t, fmt.Sprintf("notice %d", i), pgconn.PgError(gotN[i]), pgconn.PgError(tc.wantNotices[i]))
					}
					var n int
					if err := conn.QueryRow(ctx, "select 1").Scan(&n); err != nil {
						t.Fatalf("connection after the error: %v", err)
					}
				})
			}
		})
	}
}

// protoCheckFields checks that every non-zero field of want is equal in got.
func protoCheckFields(t *testing.T, what string, got, want pgconn.PgError) {
	t.Helper()
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range wv.NumField() {
		if wv.Field(i).IsZero() {
			continue
		}
		if g, w := gv.Field(i).Interface(), wv.Field(i).Interface(); g != w {
			t.Errorf("%s field %s = %q, want %q (all: %+v)", what, wv.Type().Field(i).Name, fmt.Sprint(g), fmt.Sprint(w), got)
		}
	}
}

// TestProtocolSessionParameters connects through the proxy with
// application_name=xyz and options='-c search_path=foo,public -c
// work_mem=7MB', with pgx and psql on each leg: the session's settings, its
// current schema and its pg_stat_activity row show them, exactly as on a
// direct connection with the same parameters.
func TestProtocolSessionParameters(t *testing.T) {
	protoAdminExec(t, fmt.Sprintf("create schema if not exists foo; grant usage on schema foo to %s, %s", harness.MD5User, harness.ScramUser))
	t.Cleanup(func() { protoAdminExec(t, "drop schema if exists foo") })
	const params = "application_name=xyz options='-c search_path=foo,public -c work_mem=7MB'"
	const query = "select current_setting('application_name'), current_setting('search_path'), current_setting('work_mem'), current_schema(), " +
		"(select application_name from pg_stat_activity where pid = pg_backend_pid())"
	const want = "xyz|foo,public|7MB|foo|xyz"
	p := startProxy(t, proxyOpts{})
	direct := psqlDSN(t, protoDirectDSN(harness.MD5User, harness.MD5Password)+" "+params, harness.MD5Password, query)
	if direct.code != 0 || direct.out != want {
		t.Fatalf("direct psql: exit %d, out %q, stderr %q; want %q", direct.code, direct.out, direct.err, want)
	}
	for _, leg := range protoLegs {
		t.Run("psql "+leg.name, func(t *testing.T) {
			r := runPsql(t, p.port, "user="+harness.MD5User+" sslmode="+leg.sslmode+" "+params, harness.MD5Password, query)
			if r.code != 0 || r.out != direct.out {
				t.Fatalf("psql through the proxy: exit %d, out %q, stderr %q; want %q as directly", r.code, r.out, r.err, direct.out)
			}
		})
		t.Run("pgx "+leg.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			read := func(conn *pgx.Conn) string {
				var a, sp, wm, cs, psa string
				if err := conn.QueryRow(ctx, query).Scan(&a, &sp, &wm, &cs, &psa); err != nil {
					t.Fatal(err)
				}
				return strings.Join([]string{a, sp, wm, cs, psa}, "|")
			}
			conn := protoConnect(t, ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode)+" "+params)
			dconn := protoConnect(t, ctx, protoDirectDSN(harness.MD5User, harness.MD5Password)+" "+params)
			if got, d := read(conn), read(dconn); got != want || d != want {
				t.Errorf("through the proxy %q, directly %q; want %q", got, d, want)
			}
			// The superuser's view of the proxied session, found by the PID
			// the client got in BackendKeyData.
			admin := protoConnect(t, ctx, cluster.AdminConnString())
			var app, user string
			var ssl bool
			if err := admin.QueryRow(ctx, "select a.application_name, a.usename, s.ssl from pg_stat_activity a join pg_stat_ssl s using (pid) where pid = $1",
				int64(conn.PgConn().PID())).Scan(&app, &user, &ssl); err != nil {
				t.Fatalf("pg_stat_activity row of PID %d: %v", conn.PgConn().PID(), err)
			}
			if app != "xyz" || user != harness.MD5User || !ssl {
				t.Errorf("pg_stat_activity: application_name %q, user %q, ssl %v; want xyz, %s, true", app, user, ssl, harness.MD5User)
			}
		})
	}
}

// protoPsqlCancelRun is one psql run interrupted by SIGINT.
type protoPsqlCancelRun struct {
	stderr  string
	code    int
	waitDur time.Duration // from SIGINT to exit
}

// TestCancelPsqlSIGINT starts psql -c "select pg_sleep(60)" through the
// proxy on each leg, waits until the server runs it, and sends psql SIGINT
// (Ctrl-C): libpq sends a CancelRequest to the proxy, which forwards it over
// one verified connection; psql reports "canceling statement due to user
// request" and exits 1 within seconds.
func TestCancelPsqlSIGINT(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Fatal("psql not found on PATH: install postgresql-client")
	}
	for _, leg := range protoLegs {
		t.Run(leg.name, func(t *testing.T) {
			p := startProxy(t, proxyOpts{})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			marker := "pgvp-psql-cancel-" + leg.name
			dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s sslmode=%s connect_timeout=20", p.port, harness.MD5User, leg.sslmode)
			cmd := exec.Command("psql", "-X", "-A", "-t", "-d", dsn, "-c", "select pg_sleep(60) /* "+marker+" */")
			cmd.Env = cleanEnv("PGPASSWORD=" + harness.MD5Password)
			var stderr syncBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatalf("starting psql: %v", err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				if cmd.ProcessState == nil {
					_ = cmd.Process.Kill()
					<-exited
				}
			})
			protoWaitActive(t, ctx, marker)
			dialsBefore := p.dials.Load()
			start := time.Now()
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			var run protoPsqlCancelRun
			select {
			case err := <-exited:
				run.waitDur = time.Since(start)
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					run.code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("psql still running 20s after SIGINT; stderr %q", stderr.String())
			}
			run.stderr = stderr.String()
			t.Logf("psql (%s leg) exited %d, %v after SIGINT: %q", leg.name, run.code, run.waitDur.Round(time.Millisecond), strings.TrimSpace(run.stderr))
			if !strings.Contains(run.stderr, "canceling statement due to user request") || run.code != 1 {
				t.Errorf("psql exit %d, stderr %q; want exit 1 with %q", run.code, run.stderr, "canceling statement due to user request")
			}
			if run.waitDur > 10*time.Second {
				t.Errorf("psql took %v to exit after SIGINT", run.waitDur)
			}
			if d := p.dials.Load() - dialsBefore; d != 1 {
				t.Errorf("the cancel used %d upstream dials through the proxy, want 1", d)
			}
		})
	}
}

// TestCancelPgxContextCancel configures pgx so that cancelling a query's
// context sends a CancelRequest (CancelRequestContextWatcherHandler), runs
// pg_sleep(60) through the proxy on each leg and cancels the context once
// the server runs it: the query fails with SQLSTATE 57014 within seconds,
// the cancel went through the proxy, and the same connection (same backend)
// is still usable.
func TestCancelPgxContextCancel(t *testing.T) {
	for _, leg := range protoLegs {
		t.Run(leg.name, func(t *testing.T) {
			p := startProxy(t, proxyOpts{})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg, err := pgx.ParseConfig(protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode))
			if err != nil {
				t.Fatal(err)
			}
			cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
				return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 20 * time.Second}
			}
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			pid := conn.PgConn().PID()
			marker := "pgvp-pgx-cancel-" + leg.name
			qctx, qcancel := context.WithCancel(ctx)
			defer qcancel()
			res := make(chan error, 1)
			go func() {
				_, err := conn.Exec(qctx, "select pg_sleep(60) /* "+marker+" */")
				res <- err
			}()
			protoWaitActive(t, ctx, marker)
			dialsBefore := p.dials.Load()
			start := time.Now()
			qcancel()
			select {
			case err = <-res:
			case <-time.After(25 * time.Second):
				t.Fatal("query still running 25s after its context was cancelled")
			}
			took := time.Since(start)
			t.Logf("pgx (%s leg): %v, %v after the context was cancelled", leg.name, err, took.Round(time.Millisecond))
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "57014" || pe.Message != "canceling statement due to user request" {
				t.Fatalf("query ended with %v; want SQLSTATE 57014 (canceling statement due to user request)", err)
			}
			if took > 10*time.Second {
				t.Errorf("the cancel took %v", took)
			}
			if d := p.dials.Load() - dialsBefore; d != 1 {
				t.Errorf("the cancel used %d upstream dials through the proxy, want 1", d)
			}
			var backend uint32
			var n int
			if err := conn.QueryRow(ctx, "select pg_backend_pid(), 6 * 7").Scan(&backend, &n); err != nil || n != 42 {
				t.Fatalf("same connection after the cancel: %v (got %d)", err, n)
			}
			if conn.IsClosed() || backend != pid {
				t.Errorf("after the cancel: closed %v, backend PID %d, want the original %d", conn.IsClosed(), backend, pid)
			}
		})
	}
}

// protoJDBCJar is where Debian's libpostgresql-jdbc-java puts the driver.
const protoJDBCJar = "/usr/share/java/postgresql.jar"

// TestCancelJDBCStatementCancel runs clients/java/CancelJDBC.java through
// the proxy on each leg (JDBC's TLS: ssl=true&sslmode=require): it runs
// pg_sleep(60), calls Statement.cancel() from another thread once the server
// runs it, and prints the SQLState: 57014, after which the same connection
// answers a query. The proxy saw exactly three upstream dials: the two
// sessions of the program and the cancel.
func TestCancelJDBCStatementCancel(t *testing.T) {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Fatal("java not found on PATH: install a Java runtime >= 11 (Debian: default-jre-headless)")
	}
	if _, err := os.Stat(protoJDBCJar); err != nil {
		t.Fatalf("the PostgreSQL JDBC driver is missing (%v): install libpostgresql-jdbc-java", err)
	}
	src := filepath.Join("clients", "java", "CancelJDBC.java")
	if _, err := os.Stat(src); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, params string
	}{
		{"plaintext", "sslmode=disable"},
		{"TLS", "ssl=true&sslmode=require"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, proxyOpts{})
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			url := fmt.Sprintf("jdbc:postgresql://127.0.0.1:%d/postgres?%s", p.port, tc.params)
			cmd := exec.CommandContext(ctx, java, "-cp", protoJDBCJar, src, url, harness.MD5User, harness.MD5Password, "pgvp-jdbc-cancel-"+tc.name)
			cmd.Env = cleanEnv()
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			start := time.Now()
			err := cmd.Run()
			t.Logf("java %s (%v): exit %v\n%s%s", url, time.Since(start).Round(time.Millisecond), err, stdout.String(), stderr.String())
			if err != nil {
				t.Fatalf("CancelJDBC failed: %v", err)
			}
			out := stdout.String()
			for _, want := range []string{"SQLSTATE=57014\n", "AFTER=42\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("CancelJDBC output lacks %q", want)
				}
			}
			var ms int
			for _, line := range strings.Split(out, "\n") {
				if v, ok := strings.CutPrefix(line, "ELAPSED_MS="); ok {
					ms, _ = strconv.Atoi(v)
				}
			}
			if ms <= 0 || ms > 30000 {
				t.Errorf("the statement ran %d ms; want it canceled well before pg_sleep(60) ends", ms)
			}
			if d := p.dials.Load(); d != 3 {
				t.Errorf("the proxy made %d upstream dials, want 3 (two sessions, one cancel)", d)
			}
		})
	}
}
