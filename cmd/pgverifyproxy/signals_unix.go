//go:build unix

package main

import (
	"context"
	"log/slog"
	"os"
	"syscall"
)

// platformSignals are the signals the proxy acts on: SIGINT and SIGTERM
// drain and stop it, SIGHUP reloads the configuration.
var platformSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

// isReloadSignal reports whether sig is SIGHUP.
func isReloadSignal(sig os.Signal) bool { return sig == syscall.SIGHUP }

// watchReloads does nothing on unix: SIGHUP is the way to reload, and the
// config file is not watched.
func watchReloads(context.Context, *slog.Logger, string, func(request)) {}

// runControlled runs serve with the signals of a unix process.
func runControlled(serve func(*control) error) error {
	return serve(newControl())
}
