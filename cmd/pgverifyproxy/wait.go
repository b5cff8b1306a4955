package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// waitPolicy is how `wait` asks /readyz.
type waitPolicy struct {
	// timeout is the whole wait: past it, wait gives up.
	timeout time.Duration
	// interval is the pause between two requests.
	interval time.Duration
	// attempt bounds one request, so that an endpoint that accepts and
	// never answers is asked again.
	attempt time.Duration
}

// Defaults of `wait`.
const (
	defaultWaitTimeout = 30 * time.Second
	waitInterval       = 500 * time.Millisecond
	waitAttempt        = 5 * time.Second
)

// newWaitCmd is the `wait` command: it blocks until a running proxy's
// /readyz passes, for whatever must start only once the upstream is
// verified (a Kubernetes Job, a container's postStart hook, a script).
func newWaitCmd() *cobra.Command {
	var configFile string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait [--timeout 30s] [--admin ADDR | --config FILE]",
		Short: "Wait until a running proxy is ready: every route's upstream verified (for a Job or a script)",
		Long: `Asks the admin endpoint of a running proxy (run --admin ADDR) for /readyz every
500ms until it answers 200: every route's upstream was reached and verified
recently. It then prints that answer (one line per route) and exits 0.

When --timeout passes first, it prints the last answer, which says which route
fails and why, and exits 1; also when nothing answered at the address in that
time (the proxy is not running, or has no --admin). It exits 2 for a usage
error.

  pgverifyproxy wait --admin 9543 --timeout 2m && psql "host=127.0.0.1 ..."

In Kubernetes, a postStart hook of the proxy's container running wait holds
back the containers listed after it until the proxy is ready (see
examples/kubernetes/job.yaml).

The address is read like ready's and run's: --admin, else PGVERIFYPROXY_ADMIN,
else admin in --config. PORT and :PORT mean 127.0.0.1:PORT; an address that
listens on every interface (0.0.0.0:PORT, [::]:PORT) is asked on loopback.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, err := adminAddr(cmd, configFile)
			if err != nil {
				return err
			}
			if timeout <= 0 {
				return usageError{fmt.Errorf("--timeout must be positive, not %s", timeout)}
			}
			return runWait(commandContext(cmd), cmd.OutOrStdout(), addr,
				waitPolicy{timeout: timeout, interval: waitInterval, attempt: waitAttempt})
		},
	}
	addFlags(cmd.Flags(), readyOptions)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file to read the admin address from")
	cmd.Flags().DurationVar(&timeout, "timeout", defaultWaitTimeout, "give up when the proxy is not ready after this time")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return cmd
}

// runWait asks http://addr/readyz until it answers 200, and then prints
// that answer to out and returns nil. When p.timeout passes first, it
// prints the last answer (if one came) and returns an error naming the
// most recent outcome: the status of that answer, or why the endpoint
// could not be reached. Requests are made like ready's (readyzClient).
func runWait(ctx context.Context, out io.Writer, addr string, p waitPolicy) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	client := readyzClient()
	var last readyzAnswer // the last answer, 200 excepted; code 0 when none came
	var lastErr error     // why the last request got no answer, when it came after last
	for {
		actx, acancel := context.WithTimeout(ctx, p.attempt)
		ans, err := getReadyz(actx, client, addr)
		acancel()
		var ue usageError
		switch {
		case err == nil && ans.code == http.StatusOK:
			return ans.print(out)
		case err == nil:
			last, lastErr = ans, nil
		case errors.As(err, &ue):
			return err
		case ctx.Err() != nil && (last.code != 0 || lastErr != nil):
			// Cut short by the end of the wait: what came before says more.
		case ctx.Err() != nil:
			lastErr = unreachable(addr, err, p.timeout)
		default:
			lastErr = unreachable(addr, err, p.attempt)
		}
		t := time.NewTimer(p.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return waitFailed(out, addr, p.timeout, last, lastErr)
		case <-t.C:
		}
	}
}

// waitFailed prints the last answer of a wait that timed out, if one came,
// and returns its error, which names the most recent outcome.
func waitFailed(out io.Writer, addr string, timeout time.Duration, last readyzAnswer, lastErr error) error {
	if last.code != 0 {
		if err := last.print(out); err != nil {
			return err
		}
	}
	switch {
	case lastErr != nil && last.code != 0:
		return fmt.Errorf("wait: not ready within %s: %w; before that, %s answered %s (printed above)", timeout, lastErr, readyzURL(addr), last.status)
	case lastErr != nil:
		return fmt.Errorf("wait: not ready within %s: %w", timeout, lastErr)
	}
	return fmt.Errorf("wait: not ready within %s: %s answered %s", timeout, readyzURL(addr), last.status)
}
