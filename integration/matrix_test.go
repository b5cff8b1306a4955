//go:build linux

package integration

// The client compatibility matrix (issue 4, items 5 and 6): real clients
// through the proxy against the PostgreSQL 15 of TestMain, with the SCRAM
// user and the md5 user, in each client's plaintext mode and its
// TLS-required mode, through a proxy with the default settings (auth auto)
// and through one in auth relay mode. The table of docs/clients.md is rendered from
// what the cells observed, and the test fails when docs/clients.md no longer
// matches.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// matrixUser is a column of the matrix.
type matrixUser struct {
	label, name, password string
}

// matrixUsers are the matrix's columns, in order.
var matrixUsers = []matrixUser{
	{"SCRAM user", harness.ScramUser, harness.ScramPassword},
	{"md5 user", harness.MD5User, harness.MD5Password},
}

// matrixLeg is what the client's own leg to the proxy must be.
type matrixLeg int

const (
	matrixLegPlain  matrixLeg = iota // no TLS
	matrixLegTLS                     // TLS required by the client
	matrixLegEither                  // the client decides (libpq's sslmode=prefer)
)

// matrixWant is the kind of outcome expected of a cell (found by running
// the cells; the table itself is rendered from what they observe).
type matrixWant int

const (
	matrixWorks   matrixWant = iota // logs in, reads back its user and ssl=true
	matrixRefused                   // refused by the proxy with the channel-binding hint
	// matrixClientRefuses: the client itself gives up, because it
	// requires channel binding: at the proxy's request for a cleartext
	// password (the proxy then logs the fix), or, for the md5 user, at
	// the server's md5 request as it would directly.
	matrixClientRefuses
)

// The proxy's auth modes, as the rows name them: each mode has its own
// proxy; matrixDefault has the default settings.
const (
	matrixDefault = proxy.AuthAuto
	matrixRelay   = proxy.AuthRelay
)

// matrixClient is one client program or library.
type matrixClient struct {
	// name is the client as shown in the table.
	name string
	// cbOption: the client has libpq's channel_binding option, so a
	// refusal must show the fix channel_binding=disable.
	cbOption bool
	// cbAdvice, for a client without that option, says how to turn its
	// channel binding off; the table's note shows it under a refusal.
	cbAdvice string
	// batch: run runs all of the client's cells in one launch (a JVM costs
	// a second or two); otherwise each cell runs on its own.
	batch bool
	// run runs cells through the proxy on port. Its error means the cells
	// could not be run at all (a missing tool, named with what to install).
	run func(t *testing.T, port int, cells []matrixCell) ([]matrixObs, error)
}

// matrixRow is one row of the table: a client in one mode through a
// proxy in one auth mode.
type matrixRow struct {
	client *matrixClient
	// auth is the proxy's auth mode: each mode has its own proxy.
	auth proxy.AuthMode
	// mode is shown in the table, in the client's own words.
	mode string
	// spec is the mode in the client's native form, added to what
	// client.run builds: a libpq/pgx connection string fragment, JDBC URL
	// parameters, or a JSON object merged into node-postgres' config.
	spec string
	leg  matrixLeg
	// want is the expected kind of outcome for each of matrixUsers.
	want [2]matrixWant
}

// matrixCell is one cell: a row and a user.
type matrixCell struct {
	id   string // unique and usable as an SQL identifier, e.g. "r4_scram_user"
	row  *matrixRow
	user matrixUser
}

// matrixObs is what a client showed for one cell.
type matrixObs struct {
	connected bool   // logged in and ran the query
	value     string // the query's result, "user|ssl" as the server sees it
	clientTLS string // "true" or "false" for the client's own leg; "" when the client cannot tell
	errText   string // what the client printed when it failed
}

// The clients of the matrix.
var (
	matrixPsqlClient     = &matrixClient{name: "psql (libpq 15)", cbOption: true, run: matrixRunPsql}
	matrixPgbenchClient  = &matrixClient{name: "pgbench (libpq 15)", cbOption: true, run: matrixRunPgbench}
	matrixPgxClient      = &matrixClient{name: "pgx v5 (Go)", cbOption: true, run: matrixRunPgx}
	matrixPsycopg2Client = &matrixClient{name: "psycopg2 (libpq 15)", cbOption: true, batch: true, run: matrixRunPsycopg2}
	matrixJDBCClient     = &matrixClient{name: "PgJDBC 42.5", batch: true, run: matrixRunJDBC}
	matrixNodeClient     = &matrixClient{name: "node-postgres 8", batch: true, run: matrixRunNode,
		cbAdvice: "leave `enableChannelBinding` off (the default), as the rows without it show, or set `auth: relay` on the route"}
)

// matrixRows are the table's rows, in order: each client's rows through the
// proxy with the default settings, then through the relay proxy.
var matrixRows = []*matrixRow{
	{matrixPsqlClient, matrixDefault, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsqlClient, matrixDefault, "sslmode=prefer", "sslmode=prefer", matrixLegEither, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsqlClient, matrixDefault, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsqlClient, matrixDefault, "sslmode=require channel_binding=disable", "sslmode=require channel_binding=disable", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	// libpq refuses a cleartext (or md5) request when it must bind.
	{matrixPsqlClient, matrixDefault, "sslmode=require channel_binding=require", "sslmode=require channel_binding=require", matrixLegTLS, [2]matrixWant{matrixClientRefuses, matrixClientRefuses}},
	{matrixPsqlClient, matrixRelay, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsqlClient, matrixRelay, "sslmode=prefer", "sslmode=prefer", matrixLegEither, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsqlClient, matrixRelay, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsqlClient, matrixRelay, "sslmode=require channel_binding=require", "sslmode=require channel_binding=require", matrixLegTLS, [2]matrixWant{matrixClientRefuses, matrixClientRefuses}},
	{matrixPgbenchClient, matrixDefault, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgbenchClient, matrixDefault, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgbenchClient, matrixDefault, "sslmode=require channel_binding=disable", "sslmode=require channel_binding=disable", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgbenchClient, matrixRelay, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgxClient, matrixDefault, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgxClient, matrixDefault, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgxClient, matrixDefault, "sslmode=require channel_binding=disable", "sslmode=require channel_binding=disable", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	// pgx, like libpq, refuses a cleartext or md5 request when it must bind.
	{matrixPgxClient, matrixDefault, "sslmode=require channel_binding=require", "sslmode=require channel_binding=require", matrixLegTLS, [2]matrixWant{matrixClientRefuses, matrixClientRefuses}},
	{matrixPgxClient, matrixRelay, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgxClient, matrixRelay, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPgxClient, matrixRelay, "sslmode=require channel_binding=require", "sslmode=require channel_binding=require", matrixLegTLS, [2]matrixWant{matrixClientRefuses, matrixClientRefuses}},
	{matrixPsycopg2Client, matrixDefault, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsycopg2Client, matrixDefault, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsycopg2Client, matrixDefault, "sslmode=require channel_binding=disable", "sslmode=require channel_binding=disable", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsycopg2Client, matrixRelay, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixPsycopg2Client, matrixRelay, "sslmode=require", "sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixJDBCClient, matrixDefault, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	// PgJDBC 42.5 has no channel-binding support: it sends GS2 flag n.
	{matrixJDBCClient, matrixDefault, "ssl=true&sslmode=require", "ssl=true&sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixJDBCClient, matrixRelay, "sslmode=disable", "sslmode=disable", matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixJDBCClient, matrixRelay, "ssl=true&sslmode=require", "ssl=true&sslmode=require", matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixNodeClient, matrixDefault, "ssl: false", `{"ssl": false}`, matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixNodeClient, matrixDefault, "ssl: { rejectUnauthorized: false }", `{"ssl": {"rejectUnauthorized": false}}`, matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	// node-postgres' opt-in channel binding sends GS2 flag y even in
	// plaintext when the server offers no SCRAM-SHA-256-PLUS; a plaintext
	// leg is relayed as it is in auth auto.
	{matrixNodeClient, matrixDefault, "ssl: false, enableChannelBinding: true", `{"ssl": false, "enableChannelBinding": true}`, matrixLegPlain, [2]matrixWant{matrixRefused, matrixWorks}},
	{matrixNodeClient, matrixDefault, "ssl: { rejectUnauthorized: false }, enableChannelBinding: true", `{"ssl": {"rejectUnauthorized": false}, "enableChannelBinding": true}`, matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixNodeClient, matrixRelay, "ssl: false", `{"ssl": false}`, matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixNodeClient, matrixRelay, "ssl: { rejectUnauthorized: false }", `{"ssl": {"rejectUnauthorized": false}}`, matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixNodeClient, matrixRelay, "ssl: false, enableChannelBinding: true", `{"ssl": false, "enableChannelBinding": true}`, matrixLegPlain, [2]matrixWant{matrixWorks, matrixWorks}},
	{matrixNodeClient, matrixRelay, "ssl: { rejectUnauthorized: false }, enableChannelBinding: true", `{"ssl": {"rejectUnauthorized": false}, "enableChannelBinding": true}`, matrixLegTLS, [2]matrixWant{matrixWorks, matrixWorks}},
}

// TestClientMatrix runs every cell of the matrix through two proxies, one
// with the default settings and one in auth relay mode, checks each
// against its expected kind of outcome, renders the docs/clients.md table from what
// the cells observed (and from the proxies' logs, which say how they
// logged in upstream themselves) and compares it with docs/clients.md (or
// rewrites it when PGVP_UPDATE_MATRIX=1).
func TestClientMatrix(t *testing.T) {
	logs := map[proxy.AuthMode]*matrixLog{matrixDefault: {}, matrixRelay: {}}
	ports := map[proxy.AuthMode]int{
		matrixDefault: startProxy(t, proxyOpts{log: logs[matrixDefault].logger()}).port,
		matrixRelay:   startProxy(t, proxyOpts{auth: proxy.AuthRelay, log: logs[matrixRelay].logger()}).port,
	}
	start := time.Now()

	var (
		mu      sync.Mutex
		outcome = map[string]string{} // cell id -> rendered outcome
		failed  []string              // cells that failed
	)
	cellCount := len(matrixRows) * len(matrixUsers)
	// Runs after every subtest, parallel ones included, has finished (and
	// before the proxies close: cleanups run last in, first out).
	t.Cleanup(func() {
		t.Logf("matrix: %d of %d cells ran in %v", len(outcome), cellCount, time.Since(start).Round(time.Millisecond))
		for mode, l := range logs {
			for _, u := range matrixUsers {
				if l.contains(u.password) {
					t.Errorf("the password of %s reached the %s proxy's log", u.name, mode)
				}
			}
		}
		// A proxy logs a client that hung up at its request for a password
		// once it reads that client's EOF, which can be after the cell
		// ended: with every cell run, wait for the expected count. The
		// relay proxy asks every client; the default one asks only where
		// the server offers SCRAM-SHA-256-PLUS (the SCRAM user), so the
		// md5 user's client refuses the server's md5 request instead.
		wantLeft := map[proxy.AuthMode]map[string]int{matrixDefault: {}, matrixRelay: {}}
		for i, u := range matrixUsers {
			for _, row := range matrixRows {
				if row.want[i] == matrixClientRefuses && (row.auth == matrixRelay || u.name == harness.ScramUser) {
					wantLeft[row.auth][u.name]++
				}
			}
		}
		logins := map[proxy.AuthMode]map[string][]string{}
		left := map[proxy.AuthMode]map[string]int{}
		read := func() error {
			for mode, l := range logs {
				var err error
				if logins[mode], left[mode], err = l.logins(); err != nil {
					return err
				}
			}
			return nil
		}
		err := read()
		for deadline := time.Now().Add(10 * time.Second); err == nil && len(failed) == 0 && len(outcome) == cellCount && time.Now().Before(deadline); {
			if maps.Equal(left[matrixDefault], wantLeft[matrixDefault]) && maps.Equal(left[matrixRelay], wantLeft[matrixRelay]) {
				break
			}
			time.Sleep(50 * time.Millisecond)
			err = read()
		}
		if err != nil {
			t.Errorf("%v (docs/clients.md not compared)", err)
			return
		}
		update := os.Getenv("PGVP_UPDATE_MATRIX") == "1"
		switch {
		case len(failed) > 0:
			if update {
				t.Errorf("docs/clients.md not updated: cells failed: %s", strings.Join(failed, ", "))
			} else {
				t.Logf("docs/clients.md not compared: %d cells failed", len(failed))
			}
			return
		case len(outcome) < cellCount:
			if update {
				t.Errorf("docs/clients.md not updated: only %d of %d cells ran (run without -run filters below TestClientMatrix)", len(outcome), cellCount)
			} else {
				t.Logf("docs/clients.md not compared: only %d of %d cells ran", len(outcome), cellCount)
			}
			return
		}
		// Each client that refused the cleartext request hung up before
		// sending a password, and the proxy logged the fix.
		for mode := range logs {
			for _, u := range matrixUsers {
				if want := wantLeft[mode][u.name]; left[mode][u.name] != want {
					t.Errorf("the %s proxy logged %q with its hint for %s %d times; want once per cell where the client refused its request (%d)", mode, matrixLeftMsg, u.name, left[mode][u.name], want)
					return
				}
			}
		}
		matrixSyncReadme(t, filepath.Join("..", "docs", "clients.md"), matrixRender(outcome, logins), update)
	})

	// One launch per batched client and proxy, shared by its cells.
	type batchKey struct {
		client *matrixClient
		auth   proxy.AuthMode
	}
	type batchResult struct {
		once sync.Once
		obs  map[string]matrixObs
		err  error
	}
	batches := map[batchKey]*batchResult{}
	batchCells := map[batchKey][]matrixCell{}
	clientCells := map[*matrixClient][]matrixCell{}
	var clients []*matrixClient
	for i, row := range matrixRows {
		if _, ok := clientCells[row.client]; !ok {
			clients = append(clients, row.client)
		}
		key := batchKey{row.client, row.auth}
		if _, ok := batches[key]; !ok {
			batches[key] = &batchResult{}
		}
		for _, u := range matrixUsers {
			cell := matrixCell{id: fmt.Sprintf("r%d_%s", i, u.name), row: row, user: u}
			clientCells[row.client] = append(clientCells[row.client], cell)
			batchCells[key] = append(batchCells[key], cell)
		}
	}

	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, cell := range clientCells[c] {
				name := cell.row.mode + " " + cell.user.name
				if cell.row.auth != matrixDefault {
					name = "auth=" + string(cell.row.auth) + " " + name
				}
				port := ports[cell.row.auth]
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					defer func() { // also after t.Fatal
						if t.Failed() {
							mu.Lock()
							defer mu.Unlock()
							failed = append(failed, t.Name())
						}
					}()
					var obs matrixObs
					if c.batch {
						key := batchKey{c, cell.row.auth}
						b := batches[key]
						b.once.Do(func() {
							cells := batchCells[key]
							all, err := c.run(t, port, cells)
							if err == nil && len(all) != len(cells) {
								err = fmt.Errorf("%s returned %d results for %d cells", c.name, len(all), len(cells))
							}
							b.err = err
							b.obs = map[string]matrixObs{}
							for i, o := range all {
								b.obs[cells[i].id] = o
							}
						})
						if b.err != nil {
							t.Fatal(b.err)
						}
						obs = b.obs[cell.id]
					} else {
						one, err := c.run(t, port, []matrixCell{cell})
						if err != nil {
							t.Fatal(err)
						}
						obs = one[0]
					}
					text := matrixJudge(t, cell, obs)
					mu.Lock()
					defer mu.Unlock()
					outcome[cell.id] = text
				})
			}
		})
	}
}

// matrixLog keeps the relay proxy's log (JSON lines) for the table's note
// on how the proxy logged in upstream, and shows it on stderr too when
// PGVP_TEST_LOG=1.
type matrixLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *matrixLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if os.Getenv("PGVP_TEST_LOG") == "1" {
		os.Stderr.Write(p)
	}
	return l.b.Write(p)
}

// logger is a debug-level JSON logger writing to l.
func (l *matrixLog) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// contains reports whether s occurs anywhere in the log.
func (l *matrixLog) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), s)
}

// matrixLeftMsg is a proxy's log line for a client that hung up at its
// request for a password; matrixLeftHint is in the same line's hint.
const (
	matrixLeftMsg  = "client left when the proxy asked for its password"
	matrixLeftHint = "set channel_binding=prefer (libpq's default) on that client"
)

// logins returns, for each user the proxy logged in upstream as, the
// mechanisms of those logins (its "proxy login" lines), sorted, and for
// each user the number of clients that left at its request for a password
// (with the hint that names the fix).
func (l *matrixLog) logins() (logins map[string][]string, left map[string]int, err error) {
	l.mu.Lock()
	text := l.b.String()
	l.mu.Unlock()
	logins, left = map[string][]string{}, map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		var rec struct {
			Msg          string `json:"msg"`
			User         string `json:"user"`
			UpstreamAuth string `json:"upstream_auth"`
			Hint         string `json:"hint"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			return nil, nil, fmt.Errorf("the relay proxy's log line %q: %w", line, err)
		}
		if rec.Msg == matrixLeftMsg && strings.Contains(rec.Hint, matrixLeftHint) {
			left[rec.User]++
		}
		if rec.Msg != "proxy login" {
			continue
		}
		if rec.User == "" || rec.UpstreamAuth == "" {
			return nil, nil, fmt.Errorf("the relay proxy's log line %q lacks user or upstream_auth", line)
		}
		if !slices.Contains(logins[rec.User], rec.UpstreamAuth) {
			logins[rec.User] = append(logins[rec.User], rec.UpstreamAuth)
			slices.Sort(logins[rec.User])
		}
	}
	return logins, left, nil
}

// matrixJudge checks one cell's observation against what a user must see
// and returns the cell's text for the table, built from the observation.
func matrixJudge(t *testing.T, cell matrixCell, o matrixObs) string {
	t.Helper()
	row, u := cell.row, cell.user
	var want matrixWant
	for i, mu := range matrixUsers {
		if mu == u {
			want = row.want[i]
		}
	}
	switch {
	case o.connected:
		t.Logf("%s %s as %s: %q (client leg TLS: %q)", row.client.name, row.mode, u.name, o.value, o.clientTLS)
		if o.value != u.name+"|true" {
			t.Errorf("the server reports %q; want %q (the user, and ssl=true on the proxy's verified upstream leg)", o.value, u.name+"|true")
		}
		switch {
		case row.leg == matrixLegPlain && o.clientTLS == "true":
			t.Errorf("the client leg used TLS in a plaintext mode")
		case row.leg == matrixLegTLS && o.clientTLS == "false":
			t.Errorf("the client leg did not use TLS in a TLS-required mode")
		}
		if want != matrixWorks {
			t.Errorf("the cell works; want it refused")
		}
		switch {
		case row.leg == matrixLegEither && o.clientTLS == "true":
			return "works (client leg: TLS)"
		case row.leg == matrixLegEither && o.clientTLS == "false":
			return "works (client leg: plaintext)"
		}
		return "works"
	case strings.Contains(o.errText, channelBindingHint):
		t.Logf("%s %s as %s refused: %s", row.client.name, row.mode, u.name, o.errText)
		fix := strings.Contains(o.errText, "channel_binding=disable")
		if row.client.cbOption && !fix {
			t.Errorf("the client shows the refusal but not the fix channel_binding=disable: %s", o.errText)
		}
		if want != matrixRefused {
			t.Errorf("refused with the channel-binding hint; want the cell to work: %s", o.errText)
		}
		if row.client.cbOption && fix {
			return "refused, with the hint to add `channel_binding=disable`"
		}
		return "refused, with the proxy's channel-binding hint" + matrixNoOptionMark
	case want == matrixClientRefuses:
		// The message from "channel binding" on: what precedes it names
		// the proxy's address and port, which change at every run.
		first, _, _ := strings.Cut(strings.TrimSpace(o.errText), "\n")
		i := strings.Index(strings.ToLower(first), "channel binding")
		if i < 0 {
			t.Errorf("%s %s as %s failed without naming channel binding; want the client to refuse the cleartext password request because it requires channel binding: %s",
				row.client.name, row.mode, u.name, o.errText)
			return "fails: " + first
		}
		t.Logf("%s %s as %s refused by the client: %s", row.client.name, row.mode, u.name, o.errText)
		return "refused by the client: \"" + strings.TrimSpace(first[i:]) + "\""
	default:
		t.Errorf("%s %s as %s failed: %s", row.client.name, row.mode, u.name, o.errText)
		first, _, _ := strings.Cut(strings.TrimSpace(o.errText), "\n")
		return "fails: " + first
	}
}

// matrixNoOptionMark marks a refusal of a client that has no
// channel_binding option; matrixRender explains it under the table.
const matrixNoOptionMark = "¹"

// matrixRender renders the docs/clients.md table from the cells' outcomes, with
// notes under it for the kinds of outcome that occur and, from each proxy's
// log, how it logged in upstream itself as each user (logins).
func matrixRender(outcome map[string]string, logins map[proxy.AuthMode]map[string][]string) string {
	var b strings.Builder
	b.WriteString("| client | mode | proxy `auth` | " + matrixUsers[0].label + " | " + matrixUsers[1].label + " |\n")
	b.WriteString("|---|---|---|---|---|\n")
	var refused, clientRefused, pgbench, relay bool
	var noOption []*matrixClient // refused clients without channel_binding
	for i, row := range matrixRows {
		auth := string(row.auth) + " (default)"
		if row.auth != matrixDefault {
			auth = "**" + string(row.auth) + "**"
			relay = true
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s |", row.client.name, row.mode, auth)
		for _, u := range matrixUsers {
			text := outcome[fmt.Sprintf("r%d_%s", i, u.name)]
			refused = refused || strings.HasPrefix(text, "refused,")
			clientRefused = clientRefused || strings.HasPrefix(text, "refused by the client")
			if strings.HasSuffix(text, matrixNoOptionMark) && !slices.Contains(noOption, row.client) {
				noOption = append(noOption, row.client)
			}
			pgbench = pgbench || row.client == matrixPgbenchClient && text == "works"
			fmt.Fprintf(&b, " %s |", text)
		}
		b.WriteString("\n")
	}
	seenAs := func(mode proxy.AuthMode) string {
		var seen []string
		for _, u := range matrixUsers {
			mechs := logins[mode][u.name]
			if len(mechs) == 0 {
				mechs = []string{"none"}
			}
			seen = append(seen, fmt.Sprintf("as the %s with `%s`", u.label, strings.Join(mechs, "` and `")))
		}
		return "its log shows its own logins " + strings.Join(seen, ", ") + "."
	}
	notes := "\"works\": the client logged in and read back its own user and `ssl = t` from `pg_stat_ssl`: " +
		"the proxy's leg to the server is verified TLS in every mode."
	if pgbench {
		notes += " For pgbench: `pgbench -i -s 1`, then 2 clients × 50 transactions, all 100 recorded by the server that way."
	}
	if refused {
		notes += " \"refused\": the client shows the proxy's FATAL \"SCRAM " + channelBindingHint +
			"\" and its HINT, which names the route's fix first (see [SCRAM channel binding](trust-model.md#scram-channel-binding))."
	}
	b.WriteString("\n" + matrixWrap(notes))
	notes = "**auto (default)**: the proxy with no setting changed. It relays each client's own login, except where " +
		"the server offers SCRAM-SHA-256-PLUS and the client's leg is TLS: there it asks the client for its password " +
		"inside that TLS and logs in itself, with channel binding to the verified server, on the same upstream " +
		"connection; " + seenAs(matrixDefault)
	if relay {
		notes += " **relay**: the proxy runs with `auth: relay`: it asks every client for its password in clear " +
			"(inside the client's TLS leg when it has one) and logs in to the server itself " +
			"(see [Auth relay mode](trust-model.md#auth-relay-mode-the-proxy-logs-in-itself)); " + seenAs(matrixRelay)
	}
	if clientRefused {
		notes += " \"refused by the client\": the client requires channel binding, which cannot cross a proxy that " +
			"ends its TLS: it gives up at the proxy's request for a cleartext password (the md5 user's client with " +
			"`auth: auto`: at the server's md5 request, as it would without the proxy), with the error quoted. " +
			"The proxy logs \"" + matrixLeftMsg + "\" with the fix: " + matrixLeftHint + "."
	}
	b.WriteString("\n" + matrixWrap(strings.TrimSpace(notes)))
	for _, c := range noOption {
		note := fmt.Sprintf("%s %s has no `channel_binding` option", matrixNoOptionMark, c.name)
		if c.cbAdvice != "" {
			note += ": " + c.cbAdvice
		}
		b.WriteString("\n" + matrixWrap(note+"."))
	}
	return b.String()
}

// matrixWrap wraps text at 100 columns, like the docs' prose, and ends
// it with a newline.
func matrixWrap(text string) string {
	var b strings.Builder
	n := 0
	for _, w := range strings.Fields(text) {
		if n > 0 && n+1+len([]rune(w)) > 100 {
			b.WriteString("\n")
			n = 0
		} else if n > 0 {
			b.WriteString(" ")
			n++
		}
		b.WriteString(w)
		n += len([]rune(w))
	}
	return b.String() + "\n"
}

// matrixBegin and matrixEnd delimit the generated table in docs/clients.md.
const (
	matrixBegin = "<!-- matrix:begin -->"
	matrixEnd   = "<!-- matrix:end -->"
)

// matrixSyncReadme compares the text between the markers in readme with
// rendered, or rewrites it when update is set.
func matrixSyncReadme(t *testing.T, readme, rendered string, update bool) {
	t.Helper()
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	b := strings.Index(text, matrixBegin)
	e := strings.Index(text, matrixEnd)
	if b < 0 || e < b {
		t.Fatalf("%s lacks the markers %s and %s", readme, matrixBegin, matrixEnd)
	}
	current := strings.TrimPrefix(text[b+len(matrixBegin):e], "\n")
	if current == rendered {
		return
	}
	if update {
		updated := text[:b+len(matrixBegin)] + "\n" + rendered + text[e:]
		if err := os.WriteFile(readme, []byte(updated), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("updated the client matrix in %s", readme)
		return
	}
	t.Errorf("the client matrix in %s does not match what the clients did (- docs, + observed):\n%s\n"+
		"if the change is intended, run: PGVP_UPDATE_MATRIX=1 go test ./integration -run TestClientMatrix",
		readme, matrixDiff(current, rendered))
}

// matrixDiff is a line diff of a and b: common lines indented, lines only
// in a prefixed "-", lines only in b "+".
func matrixDiff(a, b string) string {
	lines := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	}
	x, y := lines(a), lines(b)
	// lcs[i][j] is the length of the longest common subsequence of x[i:] and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			out.WriteString("  " + x[i] + "\n")
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			out.WriteString("- " + x[i] + "\n")
			i++
		default:
			out.WriteString("+ " + y[j] + "\n")
			j++
		}
	}
	return out.String()
}

// matrixOut is what a client program printed.
type matrixOut struct {
	stdout, stderr string
	code           int
}

// matrixExec runs a client program with a clean libpq environment plus env,
// in dir when set. Its error means the program could not be run or did not
// finish in time.
func matrixExec(ctx context.Context, dir string, env []string, name string, args ...string) (matrixOut, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = cleanEnv(env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := matrixOut{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return out, fmt.Errorf("%s did not finish in time: %v\n%s%s", name, ctx.Err(), out.stdout, out.stderr)
	case errors.As(err, &ee):
		out.code = ee.ExitCode()
	case err != nil:
		return out, fmt.Errorf("running %s: %w", name, err)
	}
	return out, nil
}

// matrixLibpqDSN is a libpq (or pgx) connection string to the proxy for
// cell, without the password, to database db.
func matrixLibpqDSN(port int, cell matrixCell, db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s connect_timeout=20 %s", port, cell.user.name, db, cell.row.spec)
}

// matrixRunPsql runs the query and \conninfo with psql, one cell.
func matrixRunPsql(t *testing.T, port int, cells []matrixCell) ([]matrixObs, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var obs []matrixObs
	for _, cell := range cells {
		r, err := matrixExec(ctx, "", []string{"PGPASSWORD=" + cell.user.password}, "psql",
			"-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", matrixLibpqDSN(port, cell, "postgres"), "-c", whoAmI, "-c", `\conninfo`)
		if err != nil {
			return nil, fmt.Errorf("%w (psql: install postgresql-client)", err)
		}
		if r.code != 0 {
			obs = append(obs, matrixObs{errText: r.stderr})
			continue
		}
		value, info, _ := strings.Cut(strings.TrimSpace(r.stdout), "\n")
		obs = append(obs, matrixObs{connected: true, value: value, clientTLS: fmt.Sprint(strings.Contains(info, "SSL connection"))})
	}
	return obs, nil
}

// matrixPgbenchScript is pgbench's built-in tpcb-like transaction plus one
// statement that records how the server sees the session.
const matrixPgbenchScript = `\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO matrix_seen (who) SELECT current_user || '|' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();
END;
`

// matrixRunPgbench runs, for one cell, pgbench -i -s 1 and then 2 clients
// of 50 transactions each, in a database of the cell's own (owned by the
// cell's user, dropped at the end), and reads back how the server saw
// pgbench's sessions.
func matrixRunPgbench(t *testing.T, port int, cells []matrixCell) ([]matrixObs, error) {
	if _, err := exec.LookPath("pgbench"); err != nil {
		return nil, errors.New("pgbench not found on PATH: install postgresql-client")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var obs []matrixObs
	for _, cell := range cells {
		db := "pgvp_matrix_" + cell.id
		admin, err := pgx.ParseConfig(cluster.AdminConnString())
		if err != nil {
			return nil, err
		}
		admin.Database = db
		for _, sql := range []string{"DROP DATABASE IF EXISTS " + db + " WITH (FORCE)", "CREATE DATABASE " + db + " OWNER " + cell.user.name} {
			if err := cluster.Exec(ctx, sql); err != nil {
				return nil, err
			}
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := cluster.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
				t.Errorf("dropping the pgbench database: %v", err)
			}
		})
		conn, err := pgx.ConnectConfig(ctx, admin)
		if err != nil {
			return nil, err
		}
		_, err = conn.Exec(ctx, "CREATE TABLE matrix_seen (who text); GRANT INSERT ON matrix_seen TO "+cell.user.name)
		conn.Close(context.Background())
		if err != nil {
			return nil, err
		}
		script := filepath.Join(t.TempDir(), "matrix.sql")
		if err := os.WriteFile(script, []byte(matrixPgbenchScript), 0o644); err != nil {
			return nil, err
		}

		env := []string{"PGPASSWORD=" + cell.user.password}
		dsn := matrixLibpqDSN(port, cell, db)
		init, err := matrixExec(ctx, "", env, "pgbench", "-i", "-s", "1", "-q", dsn)
		if err != nil {
			return nil, err
		}
		if init.code != 0 {
			obs = append(obs, matrixObs{errText: init.stderr})
			continue
		}
		run, err := matrixExec(ctx, "", env, "pgbench", "-n", "-t", "50", "-c", "2", "-f", script, dsn)
		if err != nil {
			return nil, err
		}
		const processed = "number of transactions actually processed: 100/100"
		if run.code != 0 || !strings.Contains(run.stdout, processed) {
			obs = append(obs, matrixObs{errText: fmt.Sprintf("pgbench exit %d, no %q:\n%s%s", run.code, processed, run.stdout, run.stderr)})
			continue
		}
		t.Logf("pgbench: %s", processed)
		var seen string
		var rows int
		if conn, err = pgx.ConnectConfig(ctx, admin); err != nil {
			return nil, err
		}
		err = conn.QueryRow(ctx, "SELECT coalesce(string_agg(DISTINCT who, ','), ''), count(*) FROM matrix_seen").Scan(&seen, &rows)
		conn.Close(context.Background())
		if err != nil {
			return nil, err
		}
		if rows != 100 {
			obs = append(obs, matrixObs{errText: fmt.Sprintf("pgbench reported 100 transactions but the server recorded %d", rows)})
			continue
		}
		obs = append(obs, matrixObs{connected: true, value: seen})
	}
	return obs, nil
}

// matrixRunPgx connects with pgx v5, one cell. A refusal is shown as a
// user of pgx sees it: the error, and the server's hint from *pgconn.PgError.
func matrixRunPgx(t *testing.T, port int, cells []matrixCell) ([]matrixObs, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var obs []matrixObs
	for _, cell := range cells {
		conn, err := pgx.Connect(ctx, matrixLibpqDSN(port, cell, "postgres")+" password="+cell.user.password)
		if err != nil {
			text := err.Error()
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Hint != "" {
				text += "\nHINT: " + pe.Hint
			}
			obs = append(obs, matrixObs{errText: text})
			continue
		}
		var value string
		err = conn.QueryRow(ctx, whoAmI).Scan(&value)
		_, isTLS := conn.PgConn().Conn().(*tls.Conn)
		conn.Close(context.Background())
		if err != nil {
			obs = append(obs, matrixObs{errText: err.Error()})
			continue
		}
		obs = append(obs, matrixObs{connected: true, value: value, clientTLS: fmt.Sprint(isTLS)})
	}
	return obs, nil
}

// matrixSystemPython is the interpreter Debian's python3-psycopg2 is
// installed for (the python3 first on PATH may be another one).
const matrixSystemPython = "/usr/bin/python3"

// matrixRunPsycopg2 runs clients/python/matrix.py once for all cells.
func matrixRunPsycopg2(t *testing.T, port int, cells []matrixCell) ([]matrixObs, error) {
	const install = "install Debian's python3-psycopg2 (for /usr/bin/python3)"
	if _, err := os.Stat(matrixSystemPython); err != nil {
		return nil, fmt.Errorf("%s is missing: %s", matrixSystemPython, install)
	}
	args := []string{filepath.Join("clients", "python", "matrix.py"), whoAmI}
	for _, cell := range cells {
		args = append(args, cell.id, matrixLibpqDSN(port, cell, "postgres")+" password="+cell.user.password)
	}
	return matrixRunScript(cells, install, "", matrixSystemPython, args...)
}

// matrixJDBCJar is where Debian's libpostgresql-jdbc-java puts PgJDBC.
const matrixJDBCJar = "/usr/share/java/postgresql.jar"

// matrixRunJDBC runs clients/java/Matrix.java in one JVM for all cells.
func matrixRunJDBC(t *testing.T, port int, cells []matrixCell) ([]matrixObs, error) {
	if _, err := exec.LookPath("java"); err != nil {
		return nil, errors.New("java not found on PATH: install a JDK >= 11 (Debian: openjdk-17-jdk-headless; the single-file source launch needs its compiler)")
	}
	if _, err := os.Stat(matrixJDBCJar); err != nil {
		return nil, fmt.Errorf("the PostgreSQL JDBC driver is missing (%v): install libpostgresql-jdbc-java", err)
	}
	args := []string{"-cp", matrixJDBCJar, filepath.Join("clients", "java", "Matrix.java"), whoAmI}
	for _, cell := range cells {
		q := url.Values{"user": {cell.user.name}, "password": {cell.user.password}, "connectTimeout": {"20"}}
		args = append(args, cell.id, fmt.Sprintf("jdbc:postgresql://127.0.0.1:%d/postgres?%s&%s", port, q.Encode(), cell.row.spec))
	}
	return matrixRunScript(cells, "install a JDK (openjdk-17-jdk-headless) and libpostgresql-jdbc-java", "", "java", args...)
}

// matrixNodeDir holds the node-postgres script and its package.json.
var matrixNodeDir = filepath.Join("clients", "node")

// matrixRunNode runs clients/node/matrix.js once for all cells.
func matrixRunNode(t *testing.T, port int, cells []matrixCell) ([]matrixObs, error) {
	if _, err := exec.LookPath("node"); err != nil {
		return nil, errors.New("node not found on PATH: install Node.js (Debian: nodejs)")
	}
	if _, err := os.Stat(filepath.Join(matrixNodeDir, "node_modules", "pg", "package.json")); err != nil {
		return nil, fmt.Errorf("node-postgres is not installed (%v): run `npm ci` in integration/clients/node", err)
	}
	args := []string{"matrix.js", whoAmI}
	for _, cell := range cells {
		config := map[string]any{}
		if err := json.Unmarshal([]byte(cell.row.spec), &config); err != nil {
			return nil, fmt.Errorf("row %q: %w", cell.row.mode, err)
		}
		config["host"], config["port"], config["database"] = "127.0.0.1", port, "postgres"
		config["user"], config["password"] = cell.user.name, cell.user.password
		config["connectionTimeoutMillis"] = 20000
		js, err := json.Marshal(config)
		if err != nil {
			return nil, err
		}
		args = append(args, cell.id, string(js))
	}
	return matrixRunScript(cells, "install Node.js and run `npm ci` in integration/clients/node", matrixNodeDir, "node", args...)
}

// matrixRunScript runs one of the client scripts, which print one line per
// cell, "ID\tok\tVALUE[\ttls=true|false]" or "ID\terror\tMESSAGE", and
// returns the cells' observations in order. install says what to install
// when the script cannot run.
func matrixRunScript(cells []matrixCell, install, dir, name string, args ...string) ([]matrixObs, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := matrixExec(ctx, dir, nil, name, args...)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, install)
	}
	if r.code != 0 {
		return nil, fmt.Errorf("%s exited with status %d (%s):\n%s%s", name, r.code, install, r.stdout, r.stderr)
	}
	lines := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		f := strings.Split(line, "\t")
		lines[f[0]] = f[1:]
	}
	var obs []matrixObs
	for _, cell := range cells {
		f := lines[cell.id]
		switch {
		case len(f) >= 2 && f[0] == "ok":
			o := matrixObs{connected: true, value: f[1]}
			if len(f) >= 3 {
				o.clientTLS = strings.TrimPrefix(f[2], "tls=")
			}
			obs = append(obs, o)
		case len(f) >= 2 && f[0] == "error":
			obs = append(obs, matrixObs{errText: strings.Join(f[1:], "\t")})
		default:
			return nil, fmt.Errorf("%s printed no result for cell %s:\n%s%s", name, cell.id, r.stdout, r.stderr)
		}
	}
	return obs, nil
}
