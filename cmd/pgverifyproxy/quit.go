package main

import (
	"os"

	"github.com/pgverifyproxy/pgverifyproxy/admin"
)

// quitRequest is a POST /quitquitquit (admin_quit) handed to run's signal
// loop as one more shutdown signal, so that it drains exactly as on
// SIGTERM. It names the client in the drain's log line.
type quitRequest struct{ from string }

// String names the request and its client, for the drain's log line.
func (q quitRequest) String() string { return "POST " + admin.QuitPath + " from " + q.from }

// Signal marks quitRequest as an os.Signal.
func (quitRequest) Signal() {}

// quitRequests is admin.Options.Quit for admin_quit: nil when it is off,
// else a function that hands each request to ch without blocking. One
// request waiting is enough: the loop drains on the first, and requests
// during the drain change nothing (unlike a second SIGTERM, a retried POST
// does not cut the drain short).
func quitRequests(enabled bool, ch chan<- os.Signal) func(remoteAddr string) {
	if !enabled {
		return nil
	}
	return func(remoteAddr string) {
		select {
		case ch <- quitRequest{from: remoteAddr}:
		default:
		}
	}
}
