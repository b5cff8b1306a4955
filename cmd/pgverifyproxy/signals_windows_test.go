//go:build windows

package main

import (
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/windows"
)

// TestWindowsSignalSet: Ctrl-C and Ctrl-Break (os.Interrupt) and the
// console's close, logoff and shutdown events (syscall.SIGTERM) drain;
// nothing reloads.
func TestWindowsSignalSet(t *testing.T) {
	want := map[os.Signal]bool{os.Interrupt: true, syscall.SIGTERM: true}
	if len(platformSignals) != len(want) {
		t.Fatalf("platformSignals = %v", platformSignals)
	}
	for _, s := range platformSignals {
		if !want[s] || isReload(s) {
			t.Errorf("%v: listed %v, reload %v", s, want[s], isReload(s))
		}
	}
}

// TestWindowsConfigFileReload runs the proxy as a console program does
// (runControlled, not a service here): a changed config file is reloaded
// through the SIGHUP path (the new route listens) by the poller, and
// nothing else is needed.
func TestWindowsConfigFileReload(t *testing.T) {
	old := configPollInterval
	configPollInterval = 50 * time.Millisecond
	t.Cleanup(func() { configPollInterval = old })

	configFile, caFile, a := serveTestConfig(t, "")
	ctls := make(chan *control, 1)
	done := make(chan error, 1)
	cmd := runCmdFor(t, configFile)
	go func() {
		done <- runControlled(func(ctl *control) error {
			ctls <- ctl
			return serveProxy(cmd, configFile, ctl)
		})
	}()
	var ctl *control
	select {
	case ctl = <-ctls:
	case err := <-done:
		t.Fatalf("runControlled ended at once: %v", err)
	}
	t.Cleanup(func() { ctl.request(request{name: "test end"}) })
	waitListening(t, a.port, true, 20*time.Second)

	b := testRoute{"b", freePort(t)}
	writeServeConfig(t, configFile, caFile, "", a, b)
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(configFile, later, later); err != nil {
		t.Fatal(err)
	}
	waitListening(t, b.port, true, 20*time.Second)

	// A broken file is rejected; the running routes stay.
	if err := os.WriteFile(configFile, []byte("routes: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	waitListening(t, a.port, true, 0)
	waitListening(t, b.port, true, 0)

	ctl.request(request{name: "service stop"})
	if err := waitServeEnd(t, done); err != nil {
		t.Fatalf("after a stop request: %v", err)
	}
}

// TestWindowsCtrlBreak sends the console a real Ctrl-Break while the
// proxy runs as a console program: it drains and ends (exit status 0)
// instead of dying. Skipped where the event does not arrive (a process
// without a console, as under some CI runners).
func TestWindowsCtrlBreak(t *testing.T) {
	configFile, _, a := serveTestConfig(t, "")
	ctl := newControl()
	done := startServe(t, configFile, ctl)
	waitListening(t, a.port, true, 20*time.Second)
	if err := windows.GenerateConsoleCtrlEvent(windows.CTRL_BREAK_EVENT, 0); err != nil {
		t.Skipf("no console to send Ctrl-Break to: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after Ctrl-Break: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Skip("the Ctrl-Break event did not arrive within 10s")
	}
	waitListening(t, a.port, false, 5*time.Second)
}
