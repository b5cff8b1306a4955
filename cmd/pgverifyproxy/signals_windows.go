//go:build windows

package main

import (
	"context"
	"log/slog"
	"os"
	"syscall"
)

// platformSignals are the console's events the proxy acts on, all of them
// a drain and stop: Ctrl-C and Ctrl-Break (os.Interrupt), and the closing
// of the console window, a logoff or a system shutdown (syscall.SIGTERM,
// after which Windows ends the process within seconds, drained or not).
// Windows has no SIGHUP: see watchReloads.
var platformSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

// isReloadSignal is false: no signal reloads on Windows.
func isReloadSignal(os.Signal) bool { return false }

// watchReloads reloads the configuration when the config file changes,
// since there is no SIGHUP to ask for it.
func watchReloads(ctx context.Context, log *slog.Logger, configFile string, deliver func(request)) {
	startConfigWatch(ctx, log, configFile, configPollInterval, deliver)
}
