package soakrun

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// Operation kinds, in the order the summary lists them.
const (
	opQuery     = iota // simple-protocol "select 1"
	opParams           // extended protocol with parameters, result checked
	opTx               // begin; insert; commit; count checked
	opRollback         // begin; insert; rollback; count unchanged
	opCopy             // COPY FROM STDIN then COPY TO STDOUT, checksums compared
	opCancel           // a CancelRequest through the proxy ends pg_sleep
	opIdle             // the session stays idle a moment, then select 1
	opReconnect        // Terminate and a new connection
	opDrop             // the socket is closed without Terminate (half the time mid-query)
	numOps
)

// opNames name the operation kinds in the summary.
var opNames = [numOps]string{"query", "params", "tx", "rollback", "copy", "cancel", "idle", "reconnect", "drop"}

// opWeights are the relative frequencies of the operation kinds.
var opWeights = [numOps]int{25, 20, 15, 5, 8, 4, 6, 12, 5}

// connectKind names connection failures (they happen outside any
// operation: at the start and after a reconnect, drop or error).
const connectKind = "connect"

// opTimeout bounds one operation; under 200 clients on two cores an
// operation takes milliseconds to a few seconds.
const opTimeout = 60 * time.Second

// leg is how a client reaches the proxy.
type leg struct {
	name   string
	tls    bool
	direct bool // PostgreSQL 17 direct TLS (sslnegotiation=direct)
	weight int
}

// legs are the client legs, with their relative frequencies.
var legs = []leg{
	{name: "plain", weight: 45},
	{name: "tls", tls: true, weight: 40},
	{name: "tls-direct", tls: true, direct: true, weight: 15},
}

// login is a test user.
type login struct {
	name, user, password string
}

// logins are the md5 and SCRAM users of the harness, used alike.
var logins = []login{
	{"md5", harness.MD5User, harness.MD5Password},
	{"scram", harness.ScramUser, harness.ScramPassword},
}

// maxMessages is how many error messages a run keeps.
const maxMessages = 10

// stats are the counters all clients share.
type stats struct {
	ok      [numOps]atomic.Int64
	errs    [numOps]atomic.Int64
	connErr atomic.Int64
	conns   [3][2]atomic.Int64 // by leg, login
	copyIn  atomic.Int64
	copyOut atomic.Int64

	mu   sync.Mutex
	msgs []string
}

// record notes an unexpected error of kind (an op index, or -1 for
// connect) and keeps its message among the first few.
func (s *stats) record(kind int, msg string) {
	if kind < 0 {
		s.connErr.Add(1)
	} else {
		s.errs[kind].Add(1)
	}
	s.mu.Lock()
	if len(s.msgs) < maxMessages {
		s.msgs = append(s.msgs, time.Now().Format("15:04:05.000")+" "+msg)
	}
	s.mu.Unlock()
}

// totalOps is the number of successful operations so far.
func (s *stats) totalOps() int64 {
	var n int64
	for i := range s.ok {
		n += s.ok[i].Load()
	}
	return n
}

// totalErrors is the number of unexpected errors so far.
func (s *stats) totalErrors() int64 {
	n := s.connErr.Load()
	for i := range s.errs {
		n += s.errs[i].Load()
	}
	return n
}

// worker is one client: one connection at a time, operations in a loop.
type worker struct {
	id      int
	port    int
	rng     *rand.Rand
	st      *stats
	verbose bool
	logf    func(string, ...any)

	conn    *pgx.Conn
	leg     int
	login   int
	txTable string
	cpTable string
	txCount int64 // rows in txTable, as this client (its only writer) knows
	txKnown bool  // txCount is valid; false after an error mid-transaction
}

// newWorker returns client id.
func newWorker(id, port int, seed int64, st *stats, verbose bool, logf func(string, ...any)) *worker {
	return &worker{
		id: id, port: port, rng: rand.New(rand.NewSource(seed + int64(id)*7919)), st: st, verbose: verbose, logf: logf,
		txTable: fmt.Sprintf("soak_tx_%d", id), cpTable: fmt.Sprintf("soak_copy_%d", id),
	}
}

// run loops over random operations until the deadline or ctx ends, then
// closes its connection (with Terminate).
func (w *worker) run(ctx context.Context, until time.Time) {
	defer w.close()
	for ctx.Err() == nil && time.Now().Before(until) {
		if w.conn == nil {
			if err := w.connect(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				w.fail(-1, err)
				_ = harness.Sleep(ctx, 100*time.Millisecond)
				continue
			}
		}
		op := w.pick()
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := w.do(octx, op)
		cancel()
		if ctx.Err() != nil {
			return // interrupted: not a finding
		}
		if err != nil {
			w.fail(op, err)
			w.discard()
			continue
		}
		w.st.ok[op].Add(1)
		_ = harness.Sleep(ctx, time.Duration(w.rng.Intn(5000))*time.Microsecond)
	}
}

// runOps runs the given operations once each, for the warm-up, and returns
// the first error.
func (w *worker) runOps(ctx context.Context, leg, login int, ops ...int) error {
	defer w.close()
	if err := w.connectAs(ctx, leg, login); err != nil {
		return err
	}
	for _, op := range ops {
		if w.conn == nil {
			if err := w.connectAs(ctx, leg, login); err != nil {
				return err
			}
		}
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := w.do(octx, op)
		cancel()
		if err != nil {
			return fmt.Errorf("%s %s: %w", legs[leg].name, logins[login].name, err)
		}
	}
	return nil
}

// fail records an unexpected error.
func (w *worker) fail(op int, err error) {
	kind := connectKind
	if op >= 0 {
		kind = opNames[op]
	}
	msg := fmt.Sprintf("client %d (%s, %s) %s: %v", w.id, legs[w.leg].name, logins[w.login].name, kind, err)
	w.st.record(op, msg)
	if w.verbose {
		w.logf("error: %s", msg)
	}
}

// pick chooses an operation by weight.
func (w *worker) pick() int {
	total := 0
	for _, wt := range opWeights {
		total += wt
	}
	n := w.rng.Intn(total)
	for i, wt := range opWeights {
		if n < wt {
			return i
		}
		n -= wt
	}
	return opQuery
}

// connect opens a connection on a random leg as a random user.
func (w *worker) connect(ctx context.Context) error {
	return w.connectAs(ctx, w.pickLeg(), w.rng.Intn(len(logins)))
}

// connectAs opens a connection on legs[li] as logins[ui] and checks that
// the leg is what was asked for. Half the TLS connections say
// channel_binding=disable (their login is relayed as the client's own);
// the others keep pgx's default, prefer, so that on the auth auto route
// the proxy logs in for the SCRAM user itself.
func (w *worker) connectAs(ctx context.Context, li, ui int) error {
	w.leg, w.login = li, ui
	l, u := legs[li], logins[ui]
	cs := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres connect_timeout=40 application_name=pgvp-soak-%d",
		w.port, u.user, u.password, w.id)
	switch {
	case !l.tls:
		cs += " sslmode=disable"
	case l.direct:
		cs += " sslmode=require sslnegotiation=direct"
	default:
		cs += " sslmode=require sslnegotiation=postgres"
	}
	if l.tls && w.rng.Intn(2) == 0 {
		cs += " channel_binding=disable"
	}
	cfg, err := pgx.ParseConfig(cs)
	if err != nil {
		return fmt.Errorf("parsing the connection string: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return err
	}
	if _, isTLS := conn.PgConn().Conn().(*tls.Conn); isTLS != l.tls {
		conn.Close(context.Background())
		return fmt.Errorf("leg %s: connection has TLS %v", l.name, isTLS)
	}
	w.conn = conn
	w.st.conns[li][ui].Add(1)
	return nil
}

// close ends the connection with Terminate.
func (w *worker) close() {
	if w.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = w.conn.Close(ctx)
	w.conn = nil
}

// discard drops a connection whose state is unknown after an error.
func (w *worker) discard() {
	if w.conn != nil {
		_ = w.conn.PgConn().Conn().Close()
		w.close()
	}
	w.txKnown = false
}

// do runs one operation on the open connection.
func (w *worker) do(ctx context.Context, op int) error {
	switch op {
	case opQuery:
		return w.selectOne(ctx)
	case opParams:
		return w.params(ctx)
	case opTx:
		return w.tx(ctx, true)
	case opRollback:
		return w.tx(ctx, false)
	case opCopy:
		return w.copy(ctx)
	case opCancel:
		return w.cancel(ctx)
	case opIdle:
		if err := harness.Sleep(ctx, time.Duration(100+w.rng.Intn(900))*time.Millisecond); err != nil {
			return err
		}
		return w.selectOne(ctx)
	case opReconnect:
		c := w.conn
		w.conn = nil
		if err := c.Close(ctx); err != nil {
			return fmt.Errorf("closing: %w", err)
		}
		if err := w.connectAs(ctx, w.pickLeg(), w.rng.Intn(len(logins))); err != nil {
			return fmt.Errorf("reconnecting: %w", err)
		}
		return nil
	case opDrop:
		return w.drop(ctx)
	}
	return fmt.Errorf("unknown operation %d", op)
}

// pickLeg chooses a leg by weight.
func (w *worker) pickLeg() int {
	total := 0
	for _, l := range legs {
		total += l.weight
	}
	n := w.rng.Intn(total)
	for i, l := range legs {
		if n < l.weight {
			return i
		}
		n -= l.weight
	}
	return 0
}

// selectOne runs "select 1" in the simple protocol and checks the answer.
func (w *worker) selectOne(ctx context.Context) error {
	res, err := w.conn.PgConn().Exec(ctx, "select 1").ReadAll()
	if err != nil {
		return fmt.Errorf("select 1: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 || string(res[0].Rows[0][0]) != "1" {
		return fmt.Errorf("select 1: unexpected result %v", res)
	}
	return nil
}

// letters fill the random strings of params.
const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-"

// params runs a prepared (cached) statement with three parameters and
// checks every column against the values computed here.
func (w *worker) params(ctx context.Context) error {
	a, b := w.rng.Int63n(1<<40), w.rng.Int63n(1<<40)
	s := make([]byte, 1+w.rng.Intn(4000))
	for i := range s {
		s[i] = letters[w.rng.Intn(len(letters))]
	}
	var (
		sum int64
		h   string
		n   int
	)
	if err := w.conn.QueryRow(ctx, "select $1::int8 + $2::int8, md5($3::text), length($3::text)", a, b, string(s)).Scan(&sum, &h, &n); err != nil {
		return fmt.Errorf("select with parameters: %w", err)
	}
	want := md5.Sum(s)
	if sum != a+b || h != hex.EncodeToString(want[:]) || n != len(s) {
		return fmt.Errorf("select with parameters: got (%d, %s, %d), want (%d, %x, %d)", sum, h, n, a+b, want, len(s))
	}
	return nil
}

// tx inserts one to three rows in a transaction, commits (or rolls back)
// and checks the table's row count.
func (w *worker) tx(ctx context.Context, commit bool) error {
	if !w.txKnown {
		if err := w.conn.QueryRow(ctx, "select count(*) from "+w.txTable).Scan(&w.txCount); err != nil {
			return fmt.Errorf("counting rows: %w", err)
		}
		w.txKnown = true
	}
	w.txKnown = false // until the outcome is known
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	k := 1 + w.rng.Intn(3)
	for i := 0; i < k; i++ {
		if _, err := tx.Exec(ctx, "insert into "+w.txTable+" (n, v) values ($1, $2)", w.txCount+int64(i)+1, fmt.Sprintf("client %d row", w.id)); err != nil {
			_ = tx.Rollback(ctx)
			return fmt.Errorf("insert: %w", err)
		}
	}
	want := w.txCount
	if commit {
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		want += int64(k)
	} else if err := tx.Rollback(ctx); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	var got int64
	if err := w.conn.QueryRow(ctx, "select count(*) from "+w.txTable).Scan(&got); err != nil {
		return fmt.Errorf("counting rows: %w", err)
	}
	if got != want {
		return fmt.Errorf("row count after %s: got %d, want %d", map[bool]string{true: "commit", false: "rollback"}[commit], got, want)
	}
	w.txCount, w.txKnown = got, true
	return nil
}

// copy sends 80 to 500 KB of COPY text with COPY FROM STDIN, reads it back
// with COPY TO STDOUT (ordered by id) and compares length and SHA-256.
func (w *worker) copy(ctx context.Context) error {
	rows := 400 + w.rng.Intn(1600)
	var buf bytes.Buffer
	raw := make([]byte, 125)
	for i := 1; i <= rows; i++ {
		n := 40 + w.rng.Intn(len(raw)-40)
		w.rng.Read(raw[:n])
		fmt.Fprintf(&buf, "%d\t%s\n", i, hex.EncodeToString(raw[:n]))
	}
	sent := sha256.Sum256(buf.Bytes())
	size := int64(buf.Len())
	pg := w.conn.PgConn()
	if _, err := pg.Exec(ctx, "truncate "+w.cpTable).ReadAll(); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	tag, err := pg.CopyFrom(ctx, &buf, "copy "+w.cpTable+" (id, payload) from stdin")
	if err != nil {
		return fmt.Errorf("copy from stdin: %w", err)
	}
	if tag.RowsAffected() != int64(rows) {
		return fmt.Errorf("copy from stdin: %d rows copied, want %d", tag.RowsAffected(), rows)
	}
	w.st.copyIn.Add(size)
	cw := harness.NewSHA256Writer()
	tag, err = pg.CopyTo(ctx, cw, "copy (select id, payload from "+w.cpTable+" order by id) to stdout")
	if err != nil {
		return fmt.Errorf("copy to stdout: %w", err)
	}
	w.st.copyOut.Add(cw.Len())
	if tag.RowsAffected() != int64(rows) || cw.Len() != size || !bytes.Equal(cw.Sum(), sent[:]) {
		return fmt.Errorf("copy to stdout: %d rows, %d bytes, sha256 %x; sent %d rows, %d bytes, sha256 %x",
			tag.RowsAffected(), cw.Len(), cw.Sum(), rows, size, sent)
	}
	return nil
}

// cancel runs pg_sleep(30) and sends CancelRequests through the proxy (a
// second connection, on the same leg as the session) until the query ends;
// it must end with SQLSTATE 57014 and leave the session usable.
func (w *worker) cancel(ctx context.Context) error {
	pg := w.conn.PgConn()
	done, helperDone := make(chan struct{}), make(chan struct{})
	var (
		cancelErr error
		sent      int
	)
	go func() {
		defer close(helperDone)
		t := time.NewTimer(100 * time.Millisecond)
		defer t.Stop()
		for sent < 20 {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := pg.CancelRequest(cctx)
			cancel()
			sent++
			if err != nil {
				cancelErr = err
				return
			}
			// A backend idle between queries ignores a cancel; a
			// second one reaches it once the query runs.
			t.Reset(time.Second)
		}
	}()
	_, err := pg.Exec(ctx, "select pg_sleep(30)").ReadAll()
	close(done)
	<-helperDone
	if cancelErr != nil {
		return fmt.Errorf("cancel request: %w", cancelErr)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		return fmt.Errorf("pg_sleep after %d cancel request(s): want SQLSTATE 57014, got %v", sent, err)
	}
	return w.selectOne(ctx)
}

// drop closes the socket without Terminate: half the time while idle,
// half the time while a short query runs; the next operation reconnects.
func (w *worker) drop(ctx context.Context) error {
	pg := w.conn.PgConn()
	if w.rng.Intn(2) == 0 {
		ran := make(chan struct{})
		go func() {
			defer close(ran)
			_, _ = pg.Exec(ctx, "select pg_sleep(0.3)").ReadAll() // fails: the socket goes
		}()
		_ = harness.Sleep(ctx, time.Duration(10+w.rng.Intn(40))*time.Millisecond)
		_ = pg.Conn().Close()
		<-ran
	} else {
		_ = pg.Conn().Close()
	}
	w.close() // pgx's own close of a dead socket; its error is expected
	w.txKnown = false
	return nil
}
