//go:build windows

package main

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/windows/svc"
)

// fakeSCM drives a serviceHandler as the service control manager does,
// through the channels svc.Run would give Execute.
type fakeSCM struct {
	reqs   chan svc.ChangeRequest
	status chan svc.Status
	done   chan [2]uint32 // svcSpecific (0 or 1), exit code
}

func startService(t *testing.T, h *serviceHandler) *fakeSCM {
	t.Helper()
	f := &fakeSCM{reqs: make(chan svc.ChangeRequest), status: make(chan svc.Status, 1000), done: make(chan [2]uint32, 1)}
	go func() {
		specific, code := h.Execute([]string{serviceName}, f.reqs, f.status)
		r := [2]uint32{0, code}
		if specific {
			r[0] = 1
		}
		f.done <- r
	}()
	return f
}

// next returns the next status the handler reported.
func (f *fakeSCM) next(t *testing.T) svc.Status {
	t.Helper()
	select {
	case s := <-f.status:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no service status reported for 30s")
		return svc.Status{}
	}
}

func (f *fakeSCM) send(t *testing.T, cmd svc.Cmd) {
	t.Helper()
	select {
	case f.reqs <- svc.ChangeRequest{Cmd: cmd}:
	case <-time.After(30 * time.Second):
		t.Fatalf("the handler did not take control %d for 30s", cmd)
	}
}

// end waits for Execute to return, and returns the statuses reported
// meanwhile and its result.
func (f *fakeSCM) end(t *testing.T) ([]svc.Status, [2]uint32) {
	t.Helper()
	var seen []svc.Status
	timeout := time.After(30 * time.Second)
	for {
		select {
		case s := <-f.status:
			seen = append(seen, s)
		case r := <-f.done:
			for {
				select {
				case s := <-f.status:
					seen = append(seen, s)
				default:
					return seen, r
				}
			}
		case <-timeout:
			t.Fatal("Execute did not return within 30s")
		}
	}
}

// TestWindowsServiceStopDrains runs the real proxy under the service
// handler: StartPending, Running (accepting Stop and Shutdown) once it
// listens, an Interrogate answered with the current status; then Stop or
// Shutdown drains it as Ctrl-C does, StopPending reported with an
// advancing checkpoint while a client holds the drain, and Execute
// returns exit code 0 (svc.Run then reports Stopped).
func TestWindowsServiceStopDrains(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop svc.Cmd
	}{{"Stop", svc.Stop}, {"Shutdown", svc.Shutdown}} {
		stop := tc.stop
		t.Run(tc.name, func(t *testing.T) {
			configFile, _, a := serveTestConfig(t, "drain_timeout: 1s\nstartup_timeout: 1m\n")
			cmd := runCmdFor(t, configFile)
			h := &serviceHandler{serve: func(ctl *control) error { return serveProxy(cmd, configFile, ctl) }, checkpoint: 50 * time.Millisecond}
			f := startService(t, h)
			if s := f.next(t); s.State != svc.StartPending {
				t.Fatalf("first status %+v, want StartPending", s)
			}
			s := f.next(t)
			if s.State != svc.Running || s.Accepts != svc.AcceptStop|svc.AcceptShutdown {
				t.Fatalf("second status %+v, want Running accepting Stop and Shutdown", s)
			}
			waitListening(t, a.port, true, 10*time.Second)
			f.send(t, svc.Interrogate)
			if s := f.next(t); s.State != svc.Running {
				t.Fatalf("Interrogate answered %+v, want Running", s)
			}
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			waitActive(t, c)

			f.send(t, stop)
			seen, r := f.end(t)
			if r != [2]uint32{0, 0} {
				t.Errorf("Execute returned %v, want no error", r)
			}
			if len(seen) < 2 || seen[0].State != svc.StopPending || seen[0].CheckPoint != 1 {
				t.Fatalf("statuses after %s: %+v, want StopPending with checkpoints", tc.name, seen)
			}
			for i, s := range seen {
				if s.State != svc.StopPending || s.CheckPoint != uint32(i+1) || s.WaitHint == 0 {
					t.Fatalf("status %d after %s: %+v, want StopPending, checkpoint %d, a wait hint", i, tc.name, s, i+1)
				}
			}
			waitListening(t, a.port, false, 5*time.Second)
		})
	}
}

// TestWindowsServiceShutdownCutsTheDrain: a Shutdown during a Stop's
// drain closes the remaining sessions at once, as a second Ctrl-C does.
func TestWindowsServiceShutdownCutsTheDrain(t *testing.T) {
	configFile, _, a := serveTestConfig(t, "drain_timeout: 5m\nstartup_timeout: 5m\n")
	cmd := runCmdFor(t, configFile)
	h := &serviceHandler{serve: func(ctl *control) error { return serveProxy(cmd, configFile, ctl) }}
	f := startService(t, h)
	f.next(t) // StartPending
	f.next(t) // Running
	waitListening(t, a.port, true, 10*time.Second)
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitActive(t, c)
	f.send(t, svc.Stop)
	if s := f.next(t); s.State != svc.StopPending || s.Accepts != svc.AcceptShutdown {
		t.Fatalf("after Stop: %+v, want StopPending accepting Shutdown", s)
	}
	select {
	case r := <-f.done:
		t.Fatalf("Execute returned %v while a client held the 5m drain", r)
	case <-time.After(500 * time.Millisecond):
	}
	f.send(t, svc.Shutdown)
	if _, r := f.end(t); r != [2]uint32{0, 0} {
		t.Errorf("Execute returned %v, want no error", r)
	}
}

// TestWindowsServiceExitCodes: a proxy that cannot start ends the service
// with a service-specific exit code, 2 for a configuration error, 1 for
// any other, without ever reporting Running.
func TestWindowsServiceExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want [2]uint32
	}{
		{usageError{errors.New("bad config")}, [2]uint32{1, 2}},
		{errors.New("listen: address in use"), [2]uint32{1, 1}},
		{nil, [2]uint32{0, 0}},
	} {
		h := &serviceHandler{serve: func(*control) error { return tc.err }}
		f := startService(t, h)
		if s := f.next(t); s.State != svc.StartPending {
			t.Fatalf("first status %+v, want StartPending", s)
		}
		seen, r := f.end(t)
		if len(seen) != 0 || r != tc.want {
			t.Errorf("serve returning %v: statuses %+v, result %v; want none and %v", tc.err, seen, r, tc.want)
		}
		if !errors.Is(h.err, tc.err) {
			t.Errorf("handler error %v, want %v", h.err, tc.err)
		}
	}
}

// TestWindowsServiceRequests: Stop and Shutdown reach the run loop as
// stop requests named for the log, never as reloads.
func TestWindowsServiceRequests(t *testing.T) {
	for _, tc := range []struct {
		cmd  svc.Cmd
		name string
	}{{svc.Stop, "service stop"}, {svc.Shutdown, "service shutdown"}} {
		got := make(chan string, 1)
		h := &serviceHandler{serve: func(ctl *control) error {
			sigs := ctl.start(discardLogger(), "")
			defer ctl.stop()
			sig := <-sigs
			if isReload(sig) {
				got <- "reload " + sig.String()
			} else {
				got <- sig.String()
			}
			return nil
		}}
		f := startService(t, h)
		f.next(t) // StartPending
		f.next(t) // Running
		f.send(t, tc.cmd)
		if s := f.next(t); s.State != svc.StopPending {
			t.Fatalf("after %d: %+v, want StopPending", tc.cmd, s)
		}
		if g := <-got; g != tc.name {
			t.Errorf("control %d reached the run loop as %q, want %q", tc.cmd, g, tc.name)
		}
		f.end(t)
	}
}
