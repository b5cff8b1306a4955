package proxy

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestStartupBound: with max_startup_connections 2, two connections that
// send nothing hold both slots; a third client is not served (it waits in
// the listen queue), the wait is counted and logged once with the
// setting's name; when one of the silent connections goes, the third is
// served. An admitted session holds no slot.
func TestStartupBound(t *testing.T) {
	var logs lockedBuffer
	srv, err := New(Config{
		Routes: []Route{{Name: "r", Listen: []string{"127.0.0.1:0"}, UpstreamAddr: "upstream.test:5432",
			Dial: echoUpstream(t), ClientTLS: ClientTLSDisable, StartupTimeout: 30 * time.Second}},
		Logger:                slog.New(slog.NewTextHandler(&logs, nil)),
		MaxStartupConnections: 2,
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
	stats := func() RouteStats { return srv.RouteStats()[0] }

	// An admitted session does not count.
	admitted := login(t, addr)
	echo(t, admitted, "admitted")
	silent1, silent2 := dialProxy(t, addr), dialProxy(t, addr)
	eventually(t, "both silent connections are in startup", func() bool { return stats().Starting == 2 })

	third := dialProxy(t, addr) // the kernel completes the handshake; nobody accepts it
	if _, err := third.Write(startupBytes(t, map[string]string{"user": "alice"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the wait is counted", func() bool { return stats().StartupWaits >= 1 })
	_ = third.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := third.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("the third client was answered (%d bytes, %v) while both startup slots were taken", n, err)
	}
	if n := strings.Count(logs.String(), "max_startup_connections=2"); n != 1 {
		t.Errorf("the bound was logged %d times, want once:\n%s", n, logs.String())
	}

	silent1.Close()
	_ = third.SetReadDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(third, third)
	for range 2 { // AuthenticationOk, ReadyForQuery
		if _, err := fe.Receive(); err != nil {
			t.Fatalf("the third client after a slot freed: %v", err)
		}
	}
	echo(t, third, "served after the wait")
	silent2.Close()
	eventually(t, "no connection left in startup", func() bool { return stats().Starting == 0 })
}

// TestDefaultMaxStartupConnections: a quarter of the open-files limit,
// within [64, 4096].
func TestDefaultMaxStartupConnections(t *testing.T) {
	n := DefaultMaxStartupConnections()
	if want := min(max(openFilesLimit()/4, 64), 4096); n != want || n < 64 || n > 4096 {
		t.Errorf("DefaultMaxStartupConnections() = %d, want %d (open files %d)", n, want, openFilesLimit())
	}
	if _, err := New(Config{Routes: []Route{{Name: "r", Listen: []string{"127.0.0.1:0"}, Dial: neverDial(t), ClientTLS: ClientTLSDisable}},
		MaxStartupConnections: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err == nil {
		t.Error("New took max_startup_connections -1")
	}
}
