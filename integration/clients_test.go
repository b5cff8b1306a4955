//go:build linux

package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// whoAmI shows the user and whether the server's own link is TLS: through
// the proxy it must always be, whatever the client's leg is.
const whoAmI = "select current_user || '|' || ssl from pg_stat_ssl where pid = pg_backend_pid()"

// channelBindingHint is what the proxy tells a client that insists on SCRAM
// channel binding over an exchange it relays.
const channelBindingHint = "channel binding cannot pass through this proxy"

// clientLeftHint is the proxy's log line for a client that hung up when the
// proxy asked for its password, with the fix (libpq and pgx with
// channel_binding=require do this).
const clientLeftHint = "channel_binding=prefer (libpq's default) on that client"

// TestPsqlThroughProxy runs psql through a proxy with the default settings
// (auth auto) and through one in passthrough. With the defaults every
// sslmode logs in, each with exactly one upstream connection and no WARN
// line: sslmode=prefer's first try is the one that logs in.
func TestPsqlThroughProxy(t *testing.T) {
	defLog, defLogs := relayLog()
	proxies := map[proxy.AuthMode]*runningProxy{
		"":                    startProxy(t, proxyOpts{log: defLog}),
		proxy.AuthPassthrough: startProxy(t, proxyOpts{auth: proxy.AuthPassthrough}),
	}
	tests := []struct {
		auth           proxy.AuthMode
		user, password string
		conninfo       string
		wantErr        string // "" means success
	}{
		{"", harness.ScramUser, harness.ScramPassword, "sslmode=disable", ""},
		{"", harness.ScramUser, harness.ScramPassword, "sslmode=prefer", ""},
		{"", harness.ScramUser, harness.ScramPassword, "sslmode=require", ""},
		{"", harness.ScramUser, harness.ScramPassword, "sslmode=require channel_binding=disable", ""},
		{"", harness.MD5User, harness.MD5Password, "sslmode=disable", ""},
		{"", harness.MD5User, harness.MD5Password, "sslmode=prefer", ""},
		{"", harness.MD5User, harness.MD5Password, "sslmode=require", ""},
		{"", harness.ScramUser, "wrong-password", "sslmode=disable", "password authentication failed"},
		{"", harness.ScramUser, "wrong-password", "sslmode=require", "password authentication failed"},
		// libpq gives up at the cleartext request itself.
		{"", harness.ScramUser, harness.ScramPassword, "sslmode=require channel_binding=require", "channel binding required"},
		{proxy.AuthPassthrough, harness.ScramUser, harness.ScramPassword, "sslmode=prefer", ""},
		{proxy.AuthPassthrough, harness.ScramUser, harness.ScramPassword, "sslmode=require", channelBindingHint},
		{proxy.AuthPassthrough, harness.ScramUser, harness.ScramPassword, "sslmode=require channel_binding=disable", ""},
		{proxy.AuthPassthrough, harness.MD5User, harness.MD5Password, "sslmode=require", ""},
	}
	for _, tc := range tests {
		name := tc.user + " " + tc.conninfo + " " + tc.password
		if tc.auth != "" {
			name = "auth=" + string(tc.auth) + " " + name
		}
		t.Run(name, func(t *testing.T) {
			p := proxies[tc.auth]
			dials := p.dials.Load()
			r := runPsql(t, p.port, "user="+tc.user+" "+tc.conninfo, tc.password, whoAmI)
			if tc.wantErr != "" {
				if r.code == 0 || !strings.Contains(r.err, tc.wantErr) {
					t.Fatalf("psql exit %d, stderr %q; want failure with %q", r.code, r.err, tc.wantErr)
				}
				if tc.wantErr == channelBindingHint && (!strings.Contains(r.err, "channel_binding=disable") || !strings.Contains(r.err, "auth: auto")) {
					t.Errorf("psql stderr %q lacks the fixes", r.err)
				}
				return
			}
			if r.code != 0 || r.out != tc.user+"|true" {
				t.Fatalf("psql exit %d, out %q, stderr %q; want %q", r.code, r.out, r.err, tc.user+"|true")
			}
			want := int32(1)
			if tc.auth == proxy.AuthPassthrough && tc.user == harness.ScramUser && strings.Contains(tc.conninfo, "prefer") {
				// libpq's first try, over TLS, is refused for channel
				// binding; its plaintext retry logs in.
				want = 2
			}
			if n := p.dials.Load() - dials; n != want {
				t.Errorf("%d upstream connections for one login, want %d", n, want)
			}
		})
	}
	// psql hangs up at the cleartext request when it requires channel
	// binding; the proxy's log says why and what to change (after the
	// client's EOF, which may come late).
	waitFor(t, "the proxy's hint for channel_binding=require in its log", func() bool { return strings.Contains(defLogs.String(), clientLeftHint) })
	if logs := defLogs.String(); strings.Contains(logs, "level=WARN") {
		t.Errorf("the default proxy logged a warning:\n%s", logs)
	}
}

func TestPgxThroughProxy(t *testing.T) {
	defLog, defLogs := relayLog()
	proxies := map[proxy.AuthMode]*runningProxy{
		"":                    startProxy(t, proxyOpts{log: defLog}),
		proxy.AuthPassthrough: startProxy(t, proxyOpts{auth: proxy.AuthPassthrough}),
	}
	tests := []struct {
		name     string
		auth     proxy.AuthMode
		user     string
		password string
		opts     string
		wantErr  string
	}{
		{"plaintext scram", "", harness.ScramUser, harness.ScramPassword, "sslmode=disable", ""},
		{"plaintext md5", "", harness.MD5User, harness.MD5Password, "sslmode=disable", ""},
		{"TLS md5", "", harness.MD5User, harness.MD5Password, "sslmode=require", ""},
		{"TLS scram without channel binding", "", harness.ScramUser, harness.ScramPassword, "sslmode=require channel_binding=disable", ""},
		{"TLS scram with pgx's default channel binding", "", harness.ScramUser, harness.ScramPassword, "sslmode=require", ""},
		{"TLS scram requiring channel binding", "", harness.ScramUser, harness.ScramPassword, "sslmode=require channel_binding=require", "channel binding"},
		{"passthrough: TLS scram insisting on channel binding", proxy.AuthPassthrough, harness.ScramUser, harness.ScramPassword, "sslmode=require", channelBindingHint},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p := proxies[tc.auth]
			dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres %s", p.port, tc.user, tc.password, tc.opts)
			conn, err := pgx.Connect(ctx, dsn)
			if tc.wantErr == channelBindingHint {
				var pe *pgconn.PgError
				if err == nil || !errors.As(err, &pe) || pe.Severity != "FATAL" || !strings.Contains(pe.Message, tc.wantErr) {
					t.Fatalf("got %v; want FATAL with %q", err, tc.wantErr)
				}
				return
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v; want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var got string
			if err := conn.QueryRow(ctx, whoAmI).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.user+"|true" {
				t.Fatalf("got %q", got)
			}
			wantTLS := strings.Contains(tc.opts, "require")
			if _, isTLS := conn.PgConn().Conn().(*tls.Conn); isTLS != wantTLS {
				t.Errorf("client leg TLS %v, want %v", isTLS, wantTLS)
			}
		})
	}
	// pgx hangs up at the cleartext request; the proxy's log says why and
	// what to change (after the client's EOF, which may come late).
	waitFor(t, "the proxy's hint for channel_binding=require in its log", func() bool { return strings.Contains(defLogs.String(), clientLeftHint) })
}

func TestCancelRequestThroughProxy(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	for _, mode := range []string{"disable", "require"} {
		t.Run("sslmode="+mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=%s", p.port, harness.MD5User, harness.MD5Password, mode)
			conn, err := pgconn.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			res := make(chan error, 1)
			go func() {
				_, err := conn.Exec(ctx, "select pg_sleep(50) /* cancel-me-"+mode+" */").ReadAll()
				res <- err
			}()
			waitForQuery(t, ctx, "cancel-me-"+mode)
			dialsBefore := p.dials.Load()
			if err := conn.CancelRequest(ctx); err != nil {
				t.Fatalf("cancel request: %v", err)
			}
			err = <-res
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "57014" {
				t.Fatalf("query ended with %v; want SQLSTATE 57014 (canceled)", err)
			}
			if p.dials.Load() != dialsBefore+1 {
				t.Errorf("cancel used %d upstream dials, want 1 verified dial", p.dials.Load()-dialsBefore)
			}
		})
	}
}

// waitForQuery polls pg_stat_activity (as superuser over the unix socket)
// until a query containing marker is running.
func waitForQuery(t *testing.T, ctx context.Context, marker string) {
	t.Helper()
	admin, err := pgx.Connect(ctx, cluster.AdminConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for {
		var n int
		err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where state = 'active' and query like '%'||$1||'%' and pid <> pg_backend_pid()", marker).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("query never started")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
