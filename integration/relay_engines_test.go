//go:build linux

package integration

// Each relay engine end to end against the real PostgreSQL 15 of TestMain:
// the event loop (Linux's default), the goroutine engine (--relay
// goroutine), and the portable engine that Windows and macOS use (--relay
// portable). A slice of what the other integration tests check runs
// through each.

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
)

// TestRelayEngines runs, through each relay engine of the binary (the
// event loop, Linux's default; the goroutine relay, its fallback, with
// --relay goroutine; the portable engine that Windows and macOS use, with
// --relay portable): psql in plaintext and with sslmode=require; a COPY FROM
// STDIN and a COPY TO STDOUT of 32 MiB on each client leg, the output's
// sha256 equal to the input's; a cancel request; a client that half-closes
// after its query (the answer still arrives, then the end) and one that
// terminates (its backend goes away); a backend terminated mid-query (the
// client gets the server's 57P01 at once). The proxy's log must show that
// the engine did the relaying of every session, on both client legs.
func TestRelayEngines(t *testing.T) {
	for _, e := range []struct {
		name  string
		args  []string
		relay string // the relay field of every "session ended" line
	}{
		{name: "loop", relay: "loop"},
		{name: "goroutine", args: []string{"--relay", "goroutine"}, relay: "goroutine"},
		{name: "portable", args: []string{"--relay", "portable"}, relay: "portable"},
	} {
		t.Run(e.name, func(t *testing.T) {
			p := startCLI(t, nil, append([]string{
				"--upstream", fmt.Sprintf("localhost:%d", cluster.Port), "--ca-file", rootFile, "--pin-dir", t.TempDir()}, e.args...)...)

			t.Run("psql", func(t *testing.T) {
				for _, sslmode := range []string{"disable", "require"} {
					r := runPsql(t, p.port, "user="+harness.MD5User+" sslmode="+sslmode, harness.MD5Password, whoAmI)
					if r.code != 0 || r.out != harness.MD5User+"|true" {
						t.Fatalf("psql sslmode=%s: exit %d out %q err %q\nproxy log:\n%s", sslmode, r.code, r.out, r.err, p.log())
					}
				}
				// The relay that carried these sessions was this engine.
				waitForLog(t, p, "relay="+e.relay)
			})

			t.Run("COPY", func(t *testing.T) { portableCopy(t, p.port) })

			t.Run("cancel", func(t *testing.T) {
				for _, leg := range protoLegs {
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					conn, err := pgconn.Connect(ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode))
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close(context.Background())
					marker := "portable-cancel-" + leg.sslmode
					res := make(chan error, 1)
					go func() {
						_, err := conn.Exec(ctx, "select pg_sleep(50) /* "+marker+" */").ReadAll()
						res <- err
					}()
					protoWaitActive(t, ctx, marker)
					if err := conn.CancelRequest(ctx); err != nil {
						t.Fatalf("%s leg: cancel request: %v", leg.name, err)
					}
					var pe *pgconn.PgError
					if err := <-res; !errors.As(err, &pe) || pe.Code != "57014" {
						t.Fatalf("%s leg: the query ended with %v; want SQLSTATE 57014 (canceled)", leg.name, err)
					}
					// The session goes on after the cancel.
					if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
						t.Fatalf("%s leg: query after the cancel: %v", leg.name, err)
					}
				}
			})

			t.Run("client half-closes after its query", func(t *testing.T) {
				for _, leg := range protoLegs {
					portableHalfClose(t, p, leg.name == "TLS")
				}
			})

			t.Run("client terminates", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				adm := protoConnect(t, ctx, cluster.AdminConnString())
				for _, leg := range protoLegs {
					app := "pgvp-portable-terminate-" + leg.sslmode
					conn, err := pgx.Connect(ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode)+" application_name="+app)
					if err != nil {
						t.Fatal(err)
					}
					var n int
					if err := conn.QueryRow(ctx, "select 5").Scan(&n); err != nil || n != 5 {
						t.Fatalf("%s leg: %d %v", leg.name, n, err)
					}
					if err := conn.Close(ctx); err != nil { // Terminate, then close
						t.Fatal(err)
					}
					waitFor(t, leg.name+" leg: the backend of the terminated session ends", func() bool {
						var left int
						_ = adm.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = $1", app).Scan(&left)
						return left == 0
					})
				}
			})

			t.Run("backend terminated mid-query", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				adm := protoConnect(t, ctx, cluster.AdminConnString())
				for _, leg := range protoLegs {
					conn, err := pgx.Connect(ctx, protoProxyDSN(p.port, harness.MD5User, harness.MD5Password, leg.sslmode))
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close(context.Background())
					var pid int
					if err := conn.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
						t.Fatal(err)
					}
					marker := "portable-terminate-" + leg.sslmode
					done := make(chan error, 1)
					go func() {
						_, err := conn.Exec(ctx, "select pg_sleep(30) /* "+marker+" */")
						done <- err
					}()
					protoWaitActive(t, ctx, marker)
					var ok bool
					if err := adm.QueryRow(ctx, "select pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
						t.Fatalf("pg_terminate_backend(%d): %v %v", pid, ok, err)
					}
					select {
					case err := <-done:
						var pe *pgconn.PgError
						if !errors.As(err, &pe) || pe.Code != "57P01" {
							t.Errorf("%s leg: the query ended with %v; want the server's 57P01", leg.name, err)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("%s leg: the client still waits 10s after its backend was terminated", leg.name)
					}
					waitFor(t, leg.name+" leg: the client's connection is closed", conn.IsClosed)
				}
			})

			if strings.Contains(p.log(), "panic") {
				t.Errorf("proxy log:\n%s", p.log())
			}
			log := p.log()
			ended := strings.Count(log, "session ended")
			if n := strings.Count(log, "relay="+e.relay); n != ended || ended == 0 {
				t.Errorf("%d of %d sessions relayed by the %s relay, want all:\n%s", n, ended, e.relay, log)
			}
			if strings.Contains(log, "relay_fallback") {
				t.Errorf("a session fell back to another engine:\n%s", log)
			}
		})
	}
}

// portableCopy streams 32 MiB of generated rows in with COPY FROM STDIN and
// back out with COPY TO STDOUT on each client leg: the server must have
// every row, and the output's sha256 must equal the input's.
func portableCopy(t *testing.T, port int) {
	const size = 32 << 20
	const table = "pgvp_portable_copy"
	protoAdminExec(t, fmt.Sprintf("drop table if exists %[1]s; create unlogged table %[1]s (id bigint not null, payload text not null); grant select, insert, truncate on %[1]s to %[2]s", table, harness.MD5User))
	t.Cleanup(func() { protoAdminExec(t, "drop table if exists "+table) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, leg := range protoLegs {
		conn := protoConnect(t, ctx, protoProxyDSN(port, harness.MD5User, harness.MD5Password, leg.sslmode))
		if _, err := conn.Exec(ctx, "truncate "+table); err != nil {
			t.Fatal(err)
		}
		gen := newProtoCopyRows(size)
		start := time.Now()
		tag, err := conn.PgConn().CopyFrom(ctx, gen, "copy "+table+" (id, payload) from stdin")
		if err != nil {
			t.Fatalf("%s leg: COPY FROM STDIN: %v", leg.name, err)
		}
		inDur := time.Since(start)
		if tag.RowsAffected() != gen.rows {
			t.Errorf("%s leg: COPY reported %d rows, the client sent %d", leg.name, tag.RowsAffected(), gen.rows)
		}
		inSHA := hex.EncodeToString(gen.streamSHA.Sum(nil))
		w := harness.NewSHA256Writer()
		start = time.Now()
		tag, err = conn.PgConn().CopyTo(ctx, w, "copy (select id, payload from "+table+" order by id) to stdout")
		if err != nil {
			t.Fatalf("%s leg: COPY TO STDOUT: %v", leg.name, err)
		}
		outDur := time.Since(start)
		outSHA := hex.EncodeToString(w.Sum())
		t.Logf("%s leg: COPY FROM %d bytes in %v, COPY TO %d bytes in %v; sha256 in %s, out %s",
			leg.name, gen.produced, inDur.Round(time.Millisecond), w.Len(), outDur.Round(time.Millisecond), inSHA, outSHA)
		if w.Len() != gen.produced || outSHA != inSHA || tag.RowsAffected() != gen.rows {
			t.Errorf("%s leg: COPY TO gave %d bytes, %d rows, sha256 %s; COPY FROM sent %d bytes, %d rows, sha256 %s",
				leg.name, w.Len(), tag.RowsAffected(), outSHA, gen.produced, gen.rows, inSHA)
		}
	}
}

// portableHalfClose logs in by hand over a plaintext or TLS client leg,
// sends a query and half-closes its side (TLS: close_notify). The answer
// must still arrive whole, and then the end: the server sees the client's
// EOF after the query, and the proxy passes its end on.
func portableHalfClose(t *testing.T, p *cliProxy, useTLS bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := protoDialProxy(ctx, p.port, useTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fe, err := portableLogin(conn)
	if err != nil {
		t.Fatalf("TLS=%v: login: %v", useTLS, err)
	}
	fe.Send(&pgproto3.Query{String: "select 42"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T cannot half-close", conn)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("TLS=%v: no end 20s after the half-close; got %v", useTLS, got)
				}
			}
			break
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			got = append(got, "DataRow "+string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			got = append(got, "Error "+m.Code)
		default:
			got = append(got, fmt.Sprintf("%T", msg)[len("*pgproto3."):])
		}
	}
	want := "RowDescription,DataRow 42,CommandComplete,ReadyForQuery"
	if s := strings.Join(got, ","); !strings.HasPrefix(s, want) {
		t.Errorf("TLS=%v: after the half-close the client read %s; want %s first, then the end", useTLS, s, want)
	}
}

// portableLogin sends a startup message for the md5 user over conn and
// answers the server's md5 password request, up to ReadyForQuery.
func portableLogin(conn net.Conn) (*pgproto3.Frontend, error) {
	startup := protoStartupPacket(196608, [][2]string{{"user", harness.MD5User}, {"database", "postgres"}})
	if _, err := conn.Write(startup); err != nil {
		return nil, err
	}
	fe := pgproto3.NewFrontend(conn, conn)
	for {
		msg, err := fe.Receive()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationMD5Password:
			inner := md5.Sum([]byte(harness.MD5Password + harness.MD5User))
			outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), m.Salt[:]...))
			fe.Send(&pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(outer[:])})
			if err := fe.Flush(); err != nil {
				return nil, err
			}
		case *pgproto3.ErrorResponse:
			return nil, fmt.Errorf("server error: %s %s: %s", m.Severity, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return fe, nil
		}
	}
}
