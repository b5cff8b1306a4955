//go:build linux

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// relayLog is a proxy logger whose text the test can read.
func relayLog() (*slog.Logger, *syncBuffer) {
	var b syncBuffer
	w := io.Writer(&b)
	if os.Getenv("PGVP_TEST_LOG") == "1" {
		w = io.MultiWriter(&b, os.Stderr)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), &b
}

// TestRelayLoginRealServer: the proxy's own login to PG15, in relay mode
// and in auto mode (the default). The clients that passthrough must refuse
// (a TLS leg + SCRAM + channel_binding=prefer) log in, and the proxy's
// login uses SCRAM-SHA-256-PLUS. With channel_binding require on the route
// the login succeeds only if the server verified the binding: that proves
// channel binding end to end against the real server. In auto mode a
// plaintext client and the md5 user log in themselves (no proxy login),
// except under channel_binding require, where auto refuses what it cannot
// bind, as relay does.
func TestRelayLoginRealServer(t *testing.T) {
	for _, mode := range []proxy.AuthMode{proxy.AuthRelay, proxy.AuthAuto} {
		for _, binding := range []string{"prefer", "require"} {
			t.Run(string(mode)+" channel_binding="+binding, func(t *testing.T) {
				logger, logs := relayLog()
				p := startProxy(t, proxyOpts{auth: mode, binding: binding, log: logger})
				relay := mode == proxy.AuthRelay
				tests := []struct {
					name, user, password, conninfo string
					wantAuth                       string // the proxy's upstream login; "" for none
					wantErr                        string
				}{
					{name: "psql require, default channel_binding", user: harness.ScramUser, password: harness.ScramPassword, conninfo: "sslmode=require", wantAuth: "SCRAM-SHA-256-PLUS"},
					{name: "psql disable", user: harness.ScramUser, password: harness.ScramPassword, conninfo: "sslmode=disable",
						wantAuth: map[bool]string{true: "SCRAM-SHA-256-PLUS"}[relay]},
					{name: "psql require, md5 user", user: harness.MD5User, password: harness.MD5Password, conninfo: "sslmode=require",
						wantAuth: map[bool]string{true: "md5"}[relay]},
				}
				if binding == "require" {
					// require means the same in auto as in relay: the
					// proxy's own bound login, or a refusal (issue 24).
					tests[2].wantAuth, tests[2].wantErr = "", "this route has channel_binding: require, and the server asked for an md5 password, which cannot be bound"
					if !relay {
						tests[1].wantAuth, tests[1].wantErr = "", "this route has channel_binding: require, and binding needs the client's password, which the proxy asks for only inside the client's TLS"
					}
				}
				for _, tc := range tests {
					t.Run(tc.name, func(t *testing.T) {
						before := strings.Count(logs.String(), `msg="proxy login"`)
						r := runPsql(t, p.port, "user="+tc.user+" application_name=relay-"+binding+" "+tc.conninfo, tc.password, "select current_user || '|' || ssl || '|' || current_setting('application_name') from pg_stat_ssl where pid = pg_backend_pid()")
						if tc.wantErr != "" {
							if r.code == 0 || !strings.Contains(r.err, tc.wantErr) {
								t.Fatalf("exit %d err %q; want %q", r.code, r.err, tc.wantErr)
							}
							return
						}
						if want := tc.user + "|true|relay-" + binding; r.code != 0 || r.out != want {
							t.Fatalf("exit %d out %q err %q; want %q\n%s", r.code, r.out, r.err, want, logs.String())
						}
						if tc.wantAuth == "" {
							if n := strings.Count(logs.String(), `msg="proxy login"`); n != before {
								t.Fatalf("the proxy logged in for a client that logs in itself:\n%s", logs.String())
							}
							return
						}
						want := fmt.Sprintf("user=%s database=postgres", tc.user)
						found := false
						for _, line := range strings.Split(logs.String(), "\n") {
							if strings.Contains(line, `msg="proxy login"`) && strings.Contains(line, want) && strings.Contains(line, "upstream_auth="+tc.wantAuth+" ") &&
								strings.Contains(line, "password_from=client") {
								found = true
							}
						}
						if !found {
							t.Fatalf("no proxy login of %s with upstream_auth=%s in the log:\n%s", tc.user, tc.wantAuth, logs.String())
						}
					})
				}
				if strings.Contains(logs.String(), harness.ScramPassword) || strings.Contains(logs.String(), harness.MD5Password) {
					t.Fatalf("a password reached the log:\n%s", logs.String())
				}
			})
		}
	}
	t.Run("pgx over TLS with channel_binding=prefer", func(t *testing.T) {
		p := startProxy(t, proxyOpts{auth: proxy.AuthRelay})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s password=%s sslmode=require", p.port, harness.ScramUser, harness.ScramPassword))
		if err != nil {
			t.Fatalf("pgx through relay mode: %v", err)
		}
		defer conn.Close(context.Background())
		var got string
		if err := conn.QueryRow(ctx, whoAmI).Scan(&got); err != nil || got != harness.ScramUser+"|true" {
			t.Fatalf("query: %v %q", err, got)
		}
	})
}

// TestRelayPreSCRAMClient is a driver that only knows cleartext passwords
// (pre-SCRAM libpq, old JDBC) logging in as the SCRAM user: the proxy asks
// for the password in clear and does the SCRAM exchange upstream.
func TestRelayPreSCRAMClient(t *testing.T) {
	p := startProxy(t, proxyOpts{auth: proxy.AuthRelay})
	c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": harness.ScramUser, "database": "postgres", "application_name": "legacy-driver"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var seen []string
	var key *pgproto3.BackendKeyData
	for done := false; !done; {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %v: %v", seen, err)
		}
		seen = append(seen, fmt.Sprintf("%T", msg))
		switch m := msg.(type) {
		case *pgproto3.AuthenticationCleartextPassword:
			fe.Send(&pgproto3.PasswordMessage{Password: harness.ScramPassword})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
		case *pgproto3.AuthenticationSASL, *pgproto3.AuthenticationMD5Password:
			t.Fatalf("the legacy client was asked for %T", m)
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %+v", m)
		case *pgproto3.BackendKeyData:
			key = m
		case *pgproto3.ReadyForQuery:
			done = true
		}
	}
	if seen[0] != "*pgproto3.AuthenticationCleartextPassword" || seen[1] != "*pgproto3.AuthenticationOk" || key == nil {
		t.Fatalf("message sequence %v", seen)
	}
	fe.Send(&pgproto3.Query{String: "select current_user || '|' || ssl || '|' || current_setting('application_name') || '|' || pid from pg_stat_ssl where pid = pg_backend_pid()"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var row string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if dr, ok := msg.(*pgproto3.DataRow); ok {
			row = string(dr.Values[0])
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if want := fmt.Sprintf("%s|true|legacy-driver|%d", harness.ScramUser, key.ProcessID); row != want {
		t.Fatalf("row %q, want %q (the client must hold the server's real BackendKeyData)", row, want)
	}
}

// TestRelayWrongPassword: where the proxy logs in itself (relay, and auto
// for a TLS client offered SCRAM-SHA-256-PLUS), the client sees the
// server's own 28P01, and the proxy makes exactly one login attempt.
func TestRelayWrongPassword(t *testing.T) {
	for _, tc := range []struct {
		auth    proxy.AuthMode
		sslmode string
	}{{proxy.AuthRelay, "disable"}, {proxy.AuthAuto, "require"}} {
		t.Run(string(tc.auth)+" sslmode="+tc.sslmode, func(t *testing.T) {
			p := startProxy(t, proxyOpts{auth: tc.auth})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			before := p.dials.Load()
			_, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s password=wrong sslmode=%s", p.port, harness.ScramUser, tc.sslmode))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Severity != "FATAL" ||
				pgErr.Message != `password authentication failed for user "`+harness.ScramUser+`"` {
				t.Fatalf("got %v (%+v); want the server's 28P01", err, pgErr)
			}
			if n := p.dials.Load() - before; n != 1 {
				t.Fatalf("%d upstream connections for one failed login; want 1", n)
			}
		})
	}
}

// TestRelayCancel: the client holds the server's real BackendKeyData in
// every auth mode, whoever logged in, so a CancelRequest works.
func TestRelayCancel(t *testing.T) {
	for _, tc := range []struct {
		auth    proxy.AuthMode
		sslmode string
	}{{proxy.AuthRelay, "disable"}, {proxy.AuthRelay, "require"}, {proxy.AuthAuto, "require"}, {proxy.AuthAuto, "disable"}, {proxy.AuthPassthrough, "disable"}} {
		t.Run(string(tc.auth)+" sslmode="+tc.sslmode, func(t *testing.T) {
			p := startProxy(t, proxyOpts{auth: tc.auth})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s password=%s sslmode=%s", p.port, harness.ScramUser, harness.ScramPassword, tc.sslmode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			marker := fmt.Sprintf("select pg_sleep(30) /* cancel %s %s */", tc.auth, tc.sslmode)
			done := make(chan error, 1)
			go func() { _, err := conn.Exec(ctx, marker).ReadAll(); done <- err }()
			deadline := time.Now().Add(15 * time.Second)
			for {
				var n int
				if err := adminQueryRow(ctx, "select count(*) from pg_stat_activity where query = '"+marker+"' and state = 'active'", &n); err != nil {
					t.Fatal(err)
				}
				if n == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the query never started")
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := conn.CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			var pgErr *pgconn.PgError
			if err := <-done; !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Fatalf("query ended with %v; want 57014", err)
			}
		})
	}
}

// adminQueryRow runs one query as the superuser over the cluster's socket.
func adminQueryRow(ctx context.Context, sql string, dest ...any) error {
	c, err := pgx.Connect(ctx, cluster.AdminConnString())
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return c.QueryRow(ctx, sql).Scan(dest...)
}

// TestRelayStoredPassword: an app with no password configured logs in with
// the route's password file; a readable file or a non-loopback listener
// stops the start with the fix.
func TestRelayStoredPassword(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "scram.password")
	if err := os.WriteFile(pwFile, []byte(harness.ScramPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	p := startCLI(t, nil, "--upstream", upstream, "--ca-file", rootFile, "--auth", "relay", "--password-file", pwFile)
	r := runPsql(t, p.port, "user="+harness.ScramUser+" sslmode=disable", "", whoAmI)
	if r.code != 0 || r.out != harness.ScramUser+"|true" {
		t.Fatalf("exit %d out %q err %q\n%s", r.code, r.out, r.err, p.log())
	}
	waitForLog(t, p, "password_from=stored")
	if strings.Contains(p.log(), harness.ScramPassword) {
		t.Fatalf("the password reached the log:\n%s", p.log())
	}
	p2 := startCLI(t, []string{"PGVP_TEST_STORED=" + harness.ScramPassword}, "--upstream", upstream, "--ca-file", rootFile, "--auth", "relay", "--password-env", "PGVP_TEST_STORED")
	if r := runPsql(t, p2.port, "user="+harness.ScramUser+" sslmode=disable", "", whoAmI); r.code != 0 || r.out != harness.ScramUser+"|true" {
		t.Fatalf("password_env: exit %d out %q err %q\n%s", r.code, r.out, r.err, p2.log())
	}

	if err := os.Chmod(pwFile, 0o644); err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"readable password file", []string{"--password-file", pwFile, "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, "chmod 0600 " + pwFile},
		{"plaintext relay on a non-loopback listener", []string{"--listen", fmt.Sprintf("0.0.0.0:%d", port)},
			"auth relay asks clients for their password in clear on the local hop, and 0.0.0.0:" + fmt.Sprint(port) + " is not loopback: set client_tls: require (with client_tls_cert and client_tls_key) for this route"},
		{"stored password on a non-loopback listener", []string{"--password-env", "HOME", "--client-tls", "require", "--listen", fmt.Sprintf("0.0.0.0:%d", port)},
			"a stored password lets anyone who reaches the listener in"},
		{"stored password in passthrough mode", []string{"--auth", "passthrough", "--password-env", "HOME", "--listen", fmt.Sprintf("127.0.0.1:%d", port)},
			"needs --auth auto or relay"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			args := append([]string{"--upstream", upstream, "--ca-file", rootFile, "--auth", "relay"}, tc.args...)
			cmd := exec.CommandContext(ctx, binPath, args...)
			cmd.Env = cleanEnv()
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
				t.Fatalf("err %v output %q; want exit 2 with %q", err, out, tc.want)
			}
		})
	}
	t.Run("relay on a non-loopback listener needs a certificate clients verify", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, binPath, "--upstream", upstream, "--ca-file", rootFile, "--auth", "relay", "--client-tls", "require",
			"--listen", fmt.Sprintf("0.0.0.0:%d", port))
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "with the generated client TLS certificate: clients cannot verify it") {
			t.Fatalf("err %v output %q; want exit 2 asking for client_tls_cert", err, out)
		}
		certFile, keyFile := filepath.Join(dir, "proxy.crt"), filepath.Join(dir, "proxy.key")
		if err := os.WriteFile(certFile, pki.Leaf.ChainPEM(pki.Intermediate), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, pki.Leaf.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		p := startCLIArgs(t, nil, "--upstream", upstream, "--ca-file", rootFile, "--auth", "relay", "--client-tls", "require",
			"--client-tls-cert", certFile, "--client-tls-key", keyFile, "--listen", fmt.Sprintf("0.0.0.0:%d", port))
		r := psqlDSN(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s sslmode=verify-full sslrootcert=%s", port, harness.ScramUser, rootFile), harness.ScramPassword, whoAmI)
		if r.code != 0 || r.out != harness.ScramUser+"|true" {
			t.Fatalf("exit %d out %q err %q\n%s", r.code, r.out, r.err, p.log())
		}
	})
}

// TestRelayProtocolNegotiation: in relay mode the client still learns what
// the server made of its protocol version and _pq_ options, as it would
// directly: PG15 answers NegotiateProtocolVersion (newest 3.0, the unknown
// options listed).
func TestRelayProtocolNegotiation(t *testing.T) {
	p := startProxy(t, proxyOpts{auth: proxy.AuthRelay})
	tests := []struct {
		name     string
		version  uint32
		params   map[string]string
		wantOpts []string
	}{
		{"3.0 with an unknown _pq_ option", pgproto3.ProtocolVersion30, map[string]string{"_pq_.some_ext": "on"}, []string{"_pq_.some_ext"}},
		{"3.2", pgproto3.ProtocolVersion32, nil, nil},
		{"3.3", 3<<16 | 3, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			params := map[string]string{"user": harness.MD5User, "database": "postgres"}
			for k, v := range tc.params {
				params[k] = v
			}
			// pgproto3 encodes only the versions it knows; write the rest by hand.
			raw, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
			binary.BigEndian.PutUint32(raw[4:8], tc.version)
			if _, err := c.Write(raw); err != nil {
				t.Fatal(err)
			}
			fe := pgproto3.NewFrontend(c, c)
			var npv *pgproto3.NegotiateProtocolVersion
			for done := false; !done; {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				switch m := msg.(type) {
				case *pgproto3.AuthenticationCleartextPassword:
					fe.Send(&pgproto3.PasswordMessage{Password: harness.MD5Password})
					if err := fe.Flush(); err != nil {
						t.Fatal(err)
					}
				case *pgproto3.NegotiateProtocolVersion:
					npv = m
				case *pgproto3.ErrorResponse:
					t.Fatalf("error: %+v", m)
				case *pgproto3.ReadyForQuery:
					done = true
				}
			}
			if npv == nil || npv.NewestMinorProtocol != 3<<16 || fmt.Sprint(npv.UnrecognizedOptions) != fmt.Sprint(tc.wantOpts) {
				t.Fatalf("NegotiateProtocolVersion %+v; want newest 3.0 with options %v", npv, tc.wantOpts)
			}
		})
	}
}

// TestRelayChannelBindingScripted proves the bytes of channel binding on the
// proxy's login: against a scripted SCRAM server, the client-first-message
// uses GS2 header p=tls-server-end-point and the client-final-message binds
// the SHA-256 of the server certificate.
func TestRelayChannelBindingScripted(t *testing.T) {
	const password = "scripted-secret"
	s, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate), SCRAMPassword: password})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, binding := range []string{"require", "prefer"} {
		t.Run(binding, func(t *testing.T) {
			logger, logs := relayLog()
			p := startProxy(t, proxyOpts{port: s.Port, auth: proxy.AuthRelay, binding: binding, log: logger})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app password=%s sslmode=disable", p.port, password))
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			res, err := conn.Exec(ctx, "select 'bound'").ReadAll()
			conn.Close(context.Background())
			if err != nil || string(res[0].Rows[0][0]) != "select 'bound'" {
				t.Fatalf("query: %v", err)
			}
			ex := s.SCRAMExchanges()
			last := ex[len(ex)-1]
			sum := sha256.Sum256(pki.Leaf.Cert.Raw)
			wantData := append([]byte("p=tls-server-end-point,,"), sum[:]...)
			if last.Mechanism != "SCRAM-SHA-256-PLUS" || last.GS2Header != "p=tls-server-end-point,," ||
				string(last.BindingData) != string(wantData) || !last.BindingOK || !last.ProofOK {
				t.Fatalf("SCRAM exchange %+v; want -PLUS bound to the certificate's SHA-256", last)
			}
			// The log names the mechanism the proxy actually sent.
			if !strings.Contains(logs.String(), "upstream_auth=SCRAM-SHA-256-PLUS") {
				t.Fatalf("log does not show the -PLUS login:\n%s", logs.String())
			}
		})
	}
	// A server that does not prove it knows the password is refused, in
	// relay mode and where auto logs in: with its signature forged, or
	// with AuthenticationOk in place of AuthenticationSASLFinal.
	for _, tamper := range []struct{ how, want string }{
		{"forge", "did not prove that it knows the password (its SCRAM signature is wrong)"},
		{"omit", "sent AuthenticationOk before completing SCRAM"},
	} {
		bad, err := testpki.StartScriptedServer(testpki.ScriptedOptions{Cert: pki.Leaf.TLSCertificate(pki.Intermediate), SCRAMPassword: password, SCRAMSignature: tamper.how})
		if err != nil {
			t.Fatal(err)
		}
		defer bad.Close()
		for _, mode := range []struct {
			auth    proxy.AuthMode
			sslmode string
		}{{proxy.AuthRelay, "disable"}, {proxy.AuthAuto, "require"}} {
			t.Run(tamper.how+" signature "+string(mode.auth), func(t *testing.T) {
				p := startProxy(t, proxyOpts{port: bad.Port, auth: mode.auth})
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				_, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app password=%s sslmode=%s", p.port, password, mode.sslmode))
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, tamper.want) {
					t.Fatalf("got %v; want FATAL 28000 %q", err, tamper.want)
				}
				if ex := bad.SCRAMExchanges(); len(ex) == 0 || !ex[len(ex)-1].ProofOK || ex[len(ex)-1].Mechanism != "SCRAM-SHA-256-PLUS" {
					t.Fatalf("the scripted server saw %+v; want a valid -PLUS proof from the proxy", ex)
				}
			})
		}
	}
	t.Run("wrong password", func(t *testing.T) {
		p := startProxy(t, proxyOpts{port: s.Port, auth: proxy.AuthRelay, binding: "require"})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app password=nope sslmode=disable", p.port))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Fatalf("got %v; want the server's 28P01", err)
		}
	})
}

// TestRelayIgnoresPGEnvironment: PG* variables in the proxy's environment
// (read by pgconn's configuration parser) do not change its logins.
func TestRelayIgnoresPGEnvironment(t *testing.T) {
	env := map[string]string{"PGSSLCERTMODE": "require", "PGSSLROOTCERT": "/nonexistent/root.crt", "PGSSLMODE": "verify-full",
		"PGAPPNAME": "from-env", "PGOPTIONS": "-c work_mem=1MB", "PGTARGETSESSIONATTRS": "read-only", "PGCHANNELBINDING": "disable"}
	for k, v := range env {
		os.Setenv(k, v)
	}
	p := startProxy(t, proxyOpts{auth: proxy.AuthRelay})
	for k := range env {
		os.Unsetenv(k)
	}
	r := runPsql(t, p.port, "user="+harness.ScramUser+" sslmode=require application_name=mine", harness.ScramPassword,
		"select current_setting('application_name') || '|' || current_setting('work_mem')")
	if r.code != 0 || r.out != "mine|4MB" {
		t.Fatalf("exit %d out %q err %q; want the client's own settings", r.code, r.out, r.err)
	}
}

// TestPasswordCommand runs the binary with --password-command against
// PG15: a token that rotates at every login (the role's password is
// changed to the next token before each one, as an IAM token would be
// minted), a command that fails, and one that hangs. A failing or hanging
// command refuses the client with the reason and opens no upstream
// connection: the server sees no login attempt.
func TestPasswordCommand(t *testing.T) {
	const role = "pgvp_token_user"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS "+role+"; CREATE ROLE "+role+" LOGIN; SET password_encryption = 'scram-sha-256'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS "+role) })
	dir := t.TempDir()
	script := filepath.Join(dir, "mint-token")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
n=$(cat "$0.n" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$0.n"
echo "minting token $n" >&2
echo "token-$n-rotating"
`), 0o700); err != nil {
		t.Fatal(err)
	}
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	p := startCLI(t, nil, "--upstream", upstream, "--ca-file", rootFile, "--auth", "relay", "--password-command", script)
	for n := 1; n <= 3; n++ {
		if err := cluster.Exec(ctx, fmt.Sprintf("SET password_encryption = 'scram-sha-256'; ALTER ROLE %s PASSWORD 'token-%d-rotating'", role, n)); err != nil {
			t.Fatal(err)
		}
		r := runPsql(t, p.port, "user="+role+" sslmode=disable", "", whoAmI)
		if r.code != 0 || r.out != role+"|true" {
			t.Fatalf("login %d with the rotated token: exit %d out %q err %q\n%s", n, r.code, r.out, r.err, p.log())
		}
	}
	waitForLog(t, p, "password_from=stored")
	if strings.Contains(p.log(), "-rotating") {
		t.Fatalf("a token reached the log:\n%s", p.log())
	}
	if !strings.Contains(p.log(), "minting token 3") {
		t.Fatalf("the command's standard error is not in the log:\n%s", p.log())
	}

	for _, tc := range []struct{ name, command, want string }{
		{"failing", "echo 'ExpiredToken: the session has expired' >&2; exit 254", "password_command failed (exit status 254"},
		{"hanging", "sleep 60", "password_command did not finish within 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := startCLI(t, nil, "--upstream", upstream, "--ca-file", rootFile, "--auth", "relay",
				"--password-command", tc.command, "--password-command-timeout", "1s")
			waitForLog(t, bad, "upstream verified") // the start-up check has dialled
			mark := cluster.LogMark()
			r := runPsql(t, bad.port, "user="+role+" sslmode=disable", "", whoAmI)
			if r.code == 0 || !strings.Contains(r.err, "stored password cannot be read: "+tc.want) {
				t.Fatalf("exit %d err %q; want FATAL with %q", r.code, r.err, tc.want)
			}
			if log := cluster.LogSince(mark); strings.Contains(log, "connection received") {
				t.Fatalf("the refused login reached the server:\n%s", log)
			}
		})
	}
}
