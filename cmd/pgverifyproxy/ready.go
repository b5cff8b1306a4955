package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgverifyproxy/pgverifyproxy/admin"
)

// readyOptions are the settings of `ready`: run's admin address, read the
// same way (flag, PGVERIFYPROXY_ADMIN, config file).
var readyOptions = func() []option {
	opts := pickOptions("admin")
	for i := range opts {
		opts[i].usage = "the proxy's admin endpoint: PORT or :PORT (127.0.0.1:PORT) or HOST:PORT (default: PGVERIFYPROXY_ADMIN, else admin in --config)"
	}
	return opts
}()

// readyBodyLimit bounds what ready reads and prints of the /readyz answer.
const readyBodyLimit = 64 << 10

// newReadyCmd is the `ready` command: a healthcheck for images without curl
// or wget (scratch, distroless). It asks the running proxy's /readyz.
func newReadyCmd() *cobra.Command {
	var configFile string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "ready [--admin ADDR] [--timeout 5s]",
		Short: "Ask a running proxy's admin endpoint whether it is ready (a healthcheck without curl)",
		Long: `Asks the admin endpoint of a running proxy (run --admin ADDR) for /readyz,
prints its answer (one line per route) and exits 0 when the proxy is ready:
every route's upstream was reached and verified recently. It exits 1 when the
proxy is not ready or cannot be reached, and 2 for a usage error.

It is meant as a container healthcheck where there is no curl or wget:

  HEALTHCHECK CMD ["/pgverifyproxy", "ready"]

The address is read like run's: --admin, else PGVERIFYPROXY_ADMIN, else admin
in --config. PORT and :PORT mean 127.0.0.1:PORT; an address that listens on
every interface (0.0.0.0:PORT, [::]:PORT) is asked on loopback.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.NoArgs(cmd, args); err != nil {
				return usageError{err}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rc struct {
				Admin string `mapstructure:"admin"`
			}
			if _, err := loadConfig(cmd.Flags(), configFile, readyOptions, &rc); err != nil {
				return usageError{err}
			}
			if timeout <= 0 {
				return usageError{fmt.Errorf("--timeout must be positive, not %s", timeout)}
			}
			addr, err := readyAddr(rc.Admin)
			if err != nil {
				return usageError{err}
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return runReady(ctx, cmd.OutOrStdout(), addr, timeout)
		},
	}
	addFlags(cmd.Flags(), readyOptions)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file to read the admin address from")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up on the admin endpoint after this time")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return cmd
}

// readyAddr turns the admin setting into the HOST:PORT to ask: PORT and
// :PORT are 127.0.0.1:PORT (as run listens), and an unspecified host
// (0.0.0.0, ::) is asked on the loopback address of its family.
func readyAddr(adminAddr string) (string, error) {
	adminAddr = strings.TrimSpace(adminAddr)
	if adminAddr == "" {
		return "", errors.New("no admin address: pass --admin ADDR or set PGVERIFYPROXY_ADMIN, as given to the proxy's run --admin")
	}
	a, err := admin.ResolveAddr(adminAddr)
	if err != nil {
		return "", err
	}
	host, port, _ := net.SplitHostPort(a)
	if port == "0" {
		return "", fmt.Errorf("admin address %q must be PORT, :PORT or HOST:PORT with a port other than 0", adminAddr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port), nil
}

// runReady asks http://addr/readyz, prints the answer to out and returns
// nil on 200. The request goes straight to addr: no HTTP proxy from the
// environment, no redirects.
func runReady(ctx context.Context, out io.Writer, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	endpoint := "http://" + addr + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return usageError{fmt.Errorf("ready: %w", err)}
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		var reason error = err
		var uerr *url.Error
		if errors.As(err, &uerr) {
			reason = uerr.Err // without url.Error's `Get "http://...":`
		}
		if errors.Is(err, context.DeadlineExceeded) {
			reason = fmt.Errorf("no answer within %s", timeout)
		}
		return fmt.Errorf("ready: cannot reach the admin endpoint at %s: %v (is the proxy running with --admin %s?)", addr, reason, addr)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, readyBodyLimit))
	if err != nil {
		return fmt.Errorf("ready: reading the answer of %s: %w", endpoint, err)
	}
	text := string(body)
	if text != "" && !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	// The body may quote a server's or a certificate's text.
	if _, err := io.WriteString(safeOut(out), text); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ready: not ready: %s answered %s", endpoint, resp.Status)
	}
	return nil
}
