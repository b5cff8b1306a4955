//go:build windows

package main

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/windows/svc"
)

// serviceName is the name given to the service control manager. A
// service that has its process to itself may be installed under any name.
const serviceName = "pgverifyproxy"

// runControlled runs serve as a Windows service when the service control
// manager started the process, else as a console program (Ctrl-C drains).
func runControlled(serve func(*control) error) error {
	inService, err := svc.IsWindowsService()
	if err != nil || !inService {
		return serve(newControl())
	}
	h := &serviceHandler{serve: serve}
	if err := svc.Run(serviceName, h); err != nil {
		return fmt.Errorf("running as a windows service: %w", err)
	}
	return h.err
}

// Service status timing: the wait hint of StartPending and StopPending,
// and how often StopPending's checkpoint advances while the drain goes
// on, so that the service manager sees progress.
const (
	serviceWaitHint   = 10 * time.Second
	serviceCheckpoint = 2 * time.Second
)

// serviceHandler is the svc.Handler of the proxy. It reports StartPending
// until the proxy serves, then Running, accepting Stop and Shutdown.
// Either one drains the proxy exactly as Ctrl-C or SIGTERM does: it
// reports StopPending, its checkpoint advancing until the drain ends, and
// Execute returns, after which svc.Run reports Stopped with the exit code.
// A Shutdown during the drain closes the remaining sessions at once, like
// a second signal.
type serviceHandler struct {
	serve func(*control) error
	// checkpoint overrides serviceCheckpoint (tests).
	checkpoint time.Duration
	// err is what serve returned.
	err error
}

// Execute implements svc.Handler.
func (h *serviceHandler) Execute(_ []string, reqs <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	hint := uint32(serviceWaitHint.Milliseconds())
	cur := svc.Status{State: svc.StartPending, WaitHint: hint}
	status <- cur
	set := func(s svc.Status) {
		cur = s
		status <- s
	}

	ctl := newControl()
	serving := make(chan struct{})
	var once sync.Once
	ctl.serving = func() { once.Do(func() { close(serving) }) }
	done := make(chan error, 1)
	go func() { done <- h.serve(ctl) }()

	every := h.checkpoint
	if every <= 0 {
		every = serviceCheckpoint
	}
	var progress *time.Ticker
	var checkpoints <-chan time.Time
	defer func() {
		if progress != nil {
			progress.Stop()
		}
	}()
	for {
		select {
		case <-serving:
			serving = nil
			if cur.State == svc.StartPending {
				set(svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown})
			}
		case c := <-reqs:
			switch c.Cmd {
			case svc.Interrogate:
				status <- cur
			case svc.Stop, svc.Shutdown:
				name := "service stop"
				if c.Cmd == svc.Shutdown {
					name = "service shutdown"
				}
				if cur.State != svc.StopPending {
					set(svc.Status{State: svc.StopPending, Accepts: svc.AcceptShutdown, CheckPoint: 1, WaitHint: hint})
					progress = time.NewTicker(every)
					checkpoints = progress.C
				}
				ctl.request(request{name: name})
			}
		case <-checkpoints:
			cur.CheckPoint++
			status <- cur
		case err := <-done:
			h.err = err
			return serviceExitCode(err)
		}
	}
}

// serviceExitCode is the service-specific exit code of the proxy's
// result, as its process exit status would be: 0, 2 for a usage or
// configuration error, 1 for any other.
func serviceExitCode(err error) (svcSpecific bool, code uint32) {
	if err == nil {
		return false, 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		return true, 2
	}
	return true, 1
}
