//go:build !unix && !windows

package main

import (
	"context"
	"log/slog"
	"os"
)

// platformSignals: os.Interrupt drains and stops the proxy.
var platformSignals = []os.Signal{os.Interrupt}

// isReloadSignal is false: no signal reloads here.
func isReloadSignal(os.Signal) bool { return false }

// watchReloads reloads the configuration when the config file changes,
// since there is no SIGHUP to ask for it.
func watchReloads(ctx context.Context, log *slog.Logger, configFile string, deliver func(request)) {
	startConfigWatch(ctx, log, configFile, configPollInterval, deliver)
}

// runControlled runs serve with the signals of this system.
func runControlled(serve func(*control) error) error {
	return serve(newControl())
}
