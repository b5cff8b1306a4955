package proxy

import (
	"crypto/tls"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSessionsRelayOnLoop: whatever the client leg (plaintext, TLS after an
// SSLRequest, PostgreSQL 17's direct TLS), a session of the Server is
// handed to the event loop after its login, still relays both ways, and
// its log line names the loop.
func TestSessionsRelayOnLoop(t *testing.T) {
	tcfg, err := SelfSignedTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	srv, err := New(Config{
		Routes: []Route{{Name: "test", Listen: []string{"127.0.0.1:0"}, UpstreamAddr: "upstream.test:5432",
			Dial: echoUpstream(t), TLSConfig: tcfg, StartupTimeout: 5 * time.Second}},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(t.Context())
	t.Cleanup(func() { srv.Close() })
	addr := srv.Addrs()[0].String()
	for i, leg := range []string{"plaintext", "sslrequest", "direct"} {
		t.Run(leg, func(t *testing.T) {
			c := dialProxy(t, addr)
			switch leg {
			case "sslrequest":
				if _, err := c.Write(sslRequest()); err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil || b[0] != 'S' {
					t.Fatalf("SSLRequest answer %q, %v", b, err)
				}
				c = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			case "direct":
				c = tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnPostgres}})
			}
			if _, err := c.Write(startupBytes(t, map[string]string{"user": "alice"})); err != nil {
				t.Fatal(err)
			}
			fe := pgproto3.NewFrontend(c, c)
			for range 2 { // AuthenticationOk, ReadyForQuery
				if _, err := fe.Receive(); err != nil {
					t.Fatal(err)
				}
			}
			echo(t, c, "after the login")
			c.Close()
			eventually(t, "the session's end is logged", func() bool {
				return strings.Count(logs.String(), "msg=\"session ended\"") == i+1
			})
			if n := strings.Count(logs.String(), " relay=loop"); n != i+1 {
				t.Errorf("%d of %d sessions logged relay=loop:\n%s", n, i+1, logs.String())
			}
			if strings.Contains(logs.String(), "relay_fallback") {
				t.Errorf("a session fell back:\n%s", logs.String())
			}
		})
	}
}
