//go:build unix

package main

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// TestUnixSignals: on unix the proxy reloads on SIGHUP and on nothing
// else (a changed config file alone is not applied), and drains and ends
// on SIGTERM, as before the split per platform.
func TestUnixSignals(t *testing.T) {
	old := configPollInterval
	configPollInterval = 10 * time.Millisecond // were the file polled, it would show
	t.Cleanup(func() { configPollInterval = old })

	configFile, caFile, a := serveTestConfig(t, "")
	ctl := newControl()
	done := startServe(t, configFile, ctl)
	waitListening(t, a.port, true, 5*time.Second)

	b := testRoute{"b", freePort(t)}
	writeServeConfig(t, configFile, caFile, "", a, b)
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(configFile, later, later); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	waitListening(t, b.port, false, 0)

	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitListening(t, b.port, true, 10*time.Second)

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitServeEnd(t, done); err != nil {
		t.Fatalf("serveProxy after SIGTERM: %v", err)
	}
	waitListening(t, a.port, false, 5*time.Second)
}

// TestUnixSignalSet: SIGINT and SIGTERM stop, SIGHUP reloads.
func TestUnixSignalSet(t *testing.T) {
	want := map[os.Signal]bool{syscall.SIGINT: false, syscall.SIGTERM: false, syscall.SIGHUP: true}
	if len(platformSignals) != len(want) {
		t.Fatalf("platformSignals = %v", platformSignals)
	}
	for _, s := range platformSignals {
		reload, ok := want[s]
		if !ok || isReload(s) != reload {
			t.Errorf("%v: listed %v, reload %v", s, ok, isReload(s))
		}
	}
}
