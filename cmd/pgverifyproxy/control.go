package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"time"
)

// request is a request to the running proxy that is not a signal: a
// Windows service control, or a change of the config file where there is
// no SIGHUP. It travels on the signal channel, so the run loop treats it
// exactly as the signal that means the same (SIGTERM or SIGHUP).
type request struct {
	name   string // for the log: "service stop", "config file changed"
	reload bool   // reload, like SIGHUP; otherwise drain and stop, like SIGTERM
}

// String names the request, as the log shows it.
func (q request) String() string { return q.name }

// Signal marks request as an os.Signal.
func (request) Signal() {}

// isReload reports whether sig asks for a reload rather than a stop.
func isReload(sig os.Signal) bool {
	if q, ok := sig.(request); ok {
		return q.reload
	}
	return isReloadSignal(sig)
}

// reloadCause names what asked for a reload, for the log.
func reloadCause(sig os.Signal) string {
	if q, ok := sig.(request); ok {
		return q.name
	}
	return "SIGHUP"
}

// control brings the platform's requests to a running proxy on one
// channel: the signals of the system (platformSignals), a Windows
// service's Stop and Shutdown, and, where there is no SIGHUP, a change of
// the config file.
type control struct {
	sigs chan os.Signal
	// serving, when set, is called once the proxy serves (a Windows
	// service then reports Running).
	serving   func()
	stopWatch context.CancelFunc
}

func newControl() *control {
	return &control{sigs: make(chan os.Signal, 4), stopWatch: func() {}}
}

// start begins the delivery of requests, once the proxy listens, and
// returns their channel.
func (c *control) start(log *slog.Logger, configFile string) <-chan os.Signal {
	signal.Notify(c.sigs, platformSignals...)
	ctx, cancel := context.WithCancel(context.Background())
	c.stopWatch = cancel
	watchReloads(ctx, log, configFile, c.request)
	if c.serving != nil {
		c.serving()
	}
	return c.sigs
}

// stop ends the delivery.
func (c *control) stop() {
	signal.Stop(c.sigs)
	c.stopWatch()
}

// request hands q to the run loop without blocking: when requests are
// already waiting, the loop has enough to act on.
func (c *control) request(q request) {
	select {
	case c.sigs <- q:
	default:
	}
}

// configPollInterval is how often the config file is looked at where
// there is no SIGHUP.
var configPollInterval = 2 * time.Second

// startConfigWatch is the reload trigger of systems without SIGHUP: it
// says so in the log, and, when there is a config file, asks for a reload
// (the SIGHUP path) each time the file changes, looking every interval
// until ctx ends.
func startConfigWatch(ctx context.Context, log *slog.Logger, configFile string, interval time.Duration, deliver func(request)) {
	if configFile == "" {
		log.Info("no SIGHUP on this platform: restart to reload certificates")
		return
	}
	log.Info("no SIGHUP on this platform: the configuration is reloaded when " + configFile + " changes, or restart the service")
	// The state now, just after the load: a change made while the
	// goroutine starts is not missed.
	w := newFileWatch(configFile)
	t := time.NewTicker(interval)
	go func() {
		defer t.Stop()
		w.watch(ctx, t.C, func() {
			deliver(request{name: "config file changed", reload: true})
		})
	}()
}

// fileState is what a fileWatch compares: a save changes the modification
// time or the size.
type fileState struct {
	ok   bool // the file could be looked at
	mod  time.Time
	size int64
}

func statFile(path string) fileState {
	fi, err := os.Stat(path)
	if err != nil {
		return fileState{}
	}
	return fileState{ok: true, mod: fi.ModTime(), size: fi.Size()}
}

func (s fileState) same(o fileState) bool {
	return s.ok == o.ok && s.mod.Equal(o.mod) && s.size == o.size
}

// fileWatch tells when a file changed: see check.
type fileWatch struct {
	path    string
	last    fileState // the state last reported, or seen at the start
	pending fileState // a new state seen once; !ok when none
}

func newFileWatch(path string) *fileWatch {
	return &fileWatch{path: path, last: statFile(path)}
}

// check looks at the file and reports whether it changed: it has another
// modification time or size than at the last change reported (or at the
// start), and had that same state at the check before, since an editor
// may write a file in steps. A file that is missing (being replaced) is
// waited for, not reported. A change that leaves both the time and the
// size as they were is not seen.
func (w *fileWatch) check() bool {
	cur := statFile(w.path)
	switch {
	case !cur.ok || cur.same(w.last):
		w.pending = fileState{}
	case w.pending.ok && cur.same(w.pending):
		w.last, w.pending = cur, fileState{}
		return true
	default:
		w.pending = cur
	}
	return false
}

// watch calls changed each time a check at a tick reports a change,
// until ctx ends.
func (w *fileWatch) watch(ctx context.Context, ticks <-chan time.Time, changed func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
			if w.check() {
				changed()
			}
		}
	}
}
