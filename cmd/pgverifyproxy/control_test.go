package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// TestFileWatch follows a config file through the changes an editor or a
// deployment makes, checking it as the poller does at each tick.
func TestFileWatch(t *testing.T) {
	path := filepath.Join(tempDir(t), "config.yaml")
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	write := func(content string, mod time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	write("a: 1\n", base)
	w := newFileWatch(path)
	steps := []struct {
		name string
		do   func()
		want bool
	}{
		{"unchanged", func() {}, false},
		{"unchanged again", func() {}, false},
		{"written: seen once", func() { write("a: 22\n", base.Add(time.Second)) }, false},
		{"written: the same at the next tick, reported", func() {}, true},
		{"reported once only", func() {}, false},
		{"same size, new time: seen", func() { write("a: 33\n", base.Add(2*time.Second)) }, false},
		{"same size, new time: reported", func() {}, true},
		{"new size, same time: seen", func() { write("a: 444\n", base.Add(2*time.Second)) }, false},
		{"new size, same time: reported", func() {}, true},
		{"written in steps: first step", func() { write("a:", base.Add(3*time.Second)) }, false},
		{"written in steps: second step, not yet", func() { write("a: 5555\n", base.Add(4*time.Second)) }, false},
		{"written in steps: settled, reported", func() {}, true},
		{"removed (a save by rename)", func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"still missing", func() {}, false},
		{"back, changed: seen", func() { write("a: 6\n", base.Add(5*time.Second)) }, false},
		{"back, changed: reported", func() {}, true},
		{"removed and put back as it was", func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"back as it was: no change", func() { write("a: 6\n", base.Add(5*time.Second)) }, false},
		{"back as it was: still no change", func() {}, false},
	}
	for _, s := range steps {
		s.do()
		if got := w.check(); got != s.want {
			t.Fatalf("%s: check() = %v, want %v", s.name, got, s.want)
		}
	}
}

// TestStartConfigWatch runs the poller of systems without SIGHUP on this
// one: it logs once how to reload, and a changed file becomes one reload
// request, the same request the run loop handles as SIGHUP.
func TestStartConfigWatch(t *testing.T) {
	path := filepath.Join(tempDir(t), "config.yaml")
	if err := os.WriteFile(path, []byte("a: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logBuf, nil))
	messages := func() string {
		var out []string
		for _, line := range strings.Split(strings.TrimSpace(logBuf.String()), "\n") {
			var rec struct{ Msg string }
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			out = append(out, rec.Msg)
		}
		return strings.Join(out, "\n")
	}
	got := make(chan request, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startConfigWatch(ctx, log, path, 10*time.Millisecond, func(q request) { got <- q })
	want := "no SIGHUP on this platform: the configuration is reloaded when " + path + " changes, or restart the service"
	if got := messages(); got != want {
		t.Errorf("log %q, want %q", got, want)
	}
	time.Sleep(50 * time.Millisecond)
	select {
	case q := <-got:
		t.Fatalf("request %v before any change", q)
	default:
	}
	later := time.Now().Add(time.Hour)
	if err := os.WriteFile(path, []byte("a: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	select {
	case q := <-got:
		if !isReload(q) || reloadCause(q) != "config file changed" {
			t.Fatalf("request %+v, want a reload for a changed config file", q)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reload request 5s after the config file changed")
	}
	cancel()

	logBuf.Reset()
	startConfigWatch(context.Background(), log, "", 10*time.Millisecond, func(q request) { t.Errorf("request %v with no config file", q) })
	if got := messages(); !strings.HasPrefix(got, "no SIGHUP on this platform: restart to reload certificates") {
		t.Errorf("log without a config file: %q", got)
	}
}

// TestRequests: a request asks for what it says, whatever the platform.
func TestRequests(t *testing.T) {
	for _, tc := range []struct {
		q      request
		reload bool
	}{
		{request{name: "config file changed", reload: true}, true},
		{request{name: "service stop"}, false},
		{request{name: "service shutdown"}, false},
	} {
		if isReload(tc.q) != tc.reload || tc.q.String() != tc.q.name {
			t.Errorf("%+v: isReload %v, String %q", tc.q, isReload(tc.q), tc.q.String())
		}
	}
	if isReload(os.Interrupt) {
		t.Error("os.Interrupt reloads")
	}
}

// testRoute is a route for serveProxy in tests: an upstream nobody
// listens on, trusted through a CA file, a listener on a free port.
type testRoute struct {
	name string
	port int
}

// writeServeConfig writes a config file with routes, all trusting caFile,
// and the top-level settings in extra (YAML lines).
func writeServeConfig(t *testing.T, path, caFile, extra string, routes ...testRoute) {
	t.Helper()
	var b strings.Builder
	b.WriteString("log_level: error\nconnect_timeout: 1s\nclient_tls: disable\n" + extra + "routes:\n")
	for _, r := range routes {
		fmt.Fprintf(&b, "  - name: %s\n    upstream: 127.0.0.1:1\n    ca_file: %q\n    listen: [\"127.0.0.1:%d\"]\n", r.name, caFile, r.port)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// serveTestConfig prepares a CA file and a config file with one route
// (port a) and the top-level settings in extra, with the PGVERIFYPROXY_
// environment cleared.
func serveTestConfig(t *testing.T, extra string) (configFile, caFile string, a testRoute) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix+"_") {
			t.Setenv(k, "")
		}
	}
	dir := tempDir(t)
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: selfSignedCA(t).Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	configFile = filepath.Join(dir, "config.yaml")
	a = testRoute{"a", freePort(t)}
	writeServeConfig(t, configFile, caFile, extra, a)
	return configFile, caFile, a
}

// runCmdFor returns the run command, its flags parsed from
// `run --config configFile`.
func runCmdFor(t *testing.T, configFile string) *cobra.Command {
	t.Helper()
	cmd, _, err := newRootCmd().Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags([]string{"--config", configFile}); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// startServe runs serveProxy as `pgverifyproxy run --config configFile`
// with ctl, and waits until it serves.
func startServe(t *testing.T, configFile string, ctl *control) <-chan error {
	t.Helper()
	cmd := runCmdFor(t, configFile)
	serving := make(chan struct{})
	prev := ctl.serving
	ctl.serving = func() {
		if prev != nil {
			prev()
		}
		close(serving)
	}
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- serveProxy(cmd, configFile, ctl)
	}()
	t.Cleanup(func() {
		// A test that failed half-way leaves no proxy behind.
		ctl.request(request{name: "test end"})
		select {
		case <-finished:
		case <-time.After(20 * time.Second):
			t.Error("serveProxy still running at the end of the test")
		}
	})
	select {
	case <-serving:
	case err := <-done:
		t.Fatalf("serveProxy ended before serving: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("serveProxy not serving after 20s")
	}
	return done
}

// waitServeEnd waits for serveProxy's result.
func waitServeEnd(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("serveProxy still running 20s after the stop request")
		return nil
	}
}

// TestServeReloadAndStopByRequest drives a real serveProxy with the
// requests of systems without SIGHUP, on this one: a changed config file
// seen by the poller reloads it through the SIGHUP path (a new route
// listens), and a service's stop request drains and ends it.
func TestServeReloadAndStopByRequest(t *testing.T) {
	configFile, caFile, a := serveTestConfig(t, "")
	ctl := newControl()
	done := startServe(t, configFile, ctl)
	waitListening(t, a.port, true, 5*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startConfigWatch(ctx, discardLogger(), configFile, 20*time.Millisecond, ctl.request)
	b := testRoute{"b", freePort(t)}
	writeServeConfig(t, configFile, caFile, "", a, b)
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(configFile, later, later); err != nil {
		t.Fatal(err)
	}
	waitListening(t, b.port, true, 10*time.Second)

	ctl.request(request{name: "service stop"})
	if err := waitServeEnd(t, done); err != nil {
		t.Fatalf("serveProxy after a stop request: %v", err)
	}
	waitListening(t, a.port, false, 5*time.Second)
	waitListening(t, b.port, false, 5*time.Second)
}

// TestServeSecondStopCutsTheDrain: a stop request drains (a client still
// connected keeps the proxy waiting), and a second one closes what is
// left at once, as a second SIGTERM does.
func TestServeSecondStopCutsTheDrain(t *testing.T) {
	configFile, _, a := serveTestConfig(t, "drain_timeout: 1m\nstartup_timeout: 1m\n")
	ctl := newControl()
	done := startServe(t, configFile, ctl)
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitActive(t, c)

	ctl.request(request{name: "service stop"})
	waitListening(t, a.port, false, 5*time.Second)
	select {
	case err := <-done:
		t.Fatalf("serveProxy ended (%v) while a client was connected, before the drain timeout", err)
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	ctl.request(request{name: "service shutdown"})
	if err := waitServeEnd(t, done); err != nil {
		t.Fatalf("serveProxy after a second stop request: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the second stop request took %v to end the drain", d)
	}
}

// waitActive makes sure the proxy took the connection c as a session: it
// sends half of a startup packet, which keeps the session waiting.
func waitActive(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte{0, 0, 0, 40}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
}
