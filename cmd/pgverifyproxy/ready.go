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
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, err := adminAddr(cmd, configFile)
			if err != nil {
				return err
			}
			if timeout <= 0 {
				return usageError{fmt.Errorf("--timeout must be positive, not %s", timeout)}
			}
			return runReady(commandContext(cmd), cmd.OutOrStdout(), addr, timeout)
		},
	}
	addFlags(cmd.Flags(), readyOptions)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file to read the admin address from")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up on the admin endpoint after this time")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return cmd
}

// noArgs refuses positional arguments as a usage error (exit 2).
func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return usageError{err}
	}
	return nil
}

// commandContext is the command's context, or a background one.
func commandContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// adminAddr reads the admin address of ready and wait (readyOptions): the
// --admin flag, else PGVERIFYPROXY_ADMIN, else admin in configFile, and
// returns the HOST:PORT to ask (readyAddr). Its errors are usage errors.
func adminAddr(cmd *cobra.Command, configFile string) (string, error) {
	var rc struct {
		Admin string `mapstructure:"admin"`
	}
	if _, err := loadConfig(cmd.Flags(), configFile, readyOptions, &rc); err != nil {
		return "", usageError{err}
	}
	addr, err := readyAddr(rc.Admin)
	if err != nil {
		return "", usageError{err}
	}
	return addr, nil
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

// runReady asks http://addr/readyz once, prints the answer to out and
// returns nil on 200.
func runReady(ctx context.Context, out io.Writer, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ans, err := getReadyz(ctx, readyzClient(), addr)
	if err != nil {
		return fmt.Errorf("ready: %w", unreachable(addr, err, timeout))
	}
	if err := ans.print(out); err != nil {
		return err
	}
	if ans.code != http.StatusOK {
		return fmt.Errorf("ready: not ready: %s answered %s", readyzURL(addr), ans.status)
	}
	return nil
}

// readyzClient is the HTTP client of ready and wait: the request goes
// straight to the admin address (no HTTP proxy from the environment), a
// redirect is not followed (it is an answer other than 200), and no
// connection is kept between requests.
func readyzClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// readyzURL is the /readyz address of the admin endpoint at addr.
func readyzURL(addr string) string { return "http://" + addr + "/readyz" }

// readyzAnswer is one answer of /readyz.
type readyzAnswer struct {
	code   int
	status string // as in the status line: "503 Service Unavailable"
	body   string // at most readyBodyLimit bytes; ends in a newline unless empty
}

// print writes the body to out with anything that could drive a terminal
// escaped: it may quote a server's or a certificate's text.
func (a readyzAnswer) print(out io.Writer) error {
	_, err := io.WriteString(safeOut(out), a.body)
	return err
}

// getReadyz asks http://addr/readyz once with client. An error means no
// whole answer came: an answerError when one came but could not be read,
// else the reason alone (without url.Error's `Get "http://...":`), which
// matches context.DeadlineExceeded when ctx ended first.
func getReadyz(ctx context.Context, client *http.Client, addr string) (readyzAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, readyzURL(addr), nil)
	if err != nil {
		return readyzAnswer{}, usageError{err}
	}
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			return readyzAnswer{}, uerr.Err
		}
		return readyzAnswer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, readyBodyLimit))
	if err != nil {
		return readyzAnswer{}, answerError{fmt.Errorf("reading the answer of %s: %w", readyzURL(addr), err)}
	}
	text := string(body)
	if text != "" && !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	return readyzAnswer{code: resp.StatusCode, status: resp.Status, body: text}, nil
}

// answerError is getReadyz's error when an answer came but could not be
// read whole.
type answerError struct{ err error }

// Error is the reading error's text.
func (e answerError) Error() string { return e.err.Error() }

// Unwrap returns the reading error.
func (e answerError) Unwrap() error { return e.err }

// unreachable explains getReadyz's error for the admin endpoint at addr;
// timeout is what the caller allowed. A usage error or an answer that could
// not be read is returned as it is.
func unreachable(addr string, err error, timeout time.Duration) error {
	var ue usageError
	var ae answerError
	if errors.As(err, &ue) || errors.As(err, &ae) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("no answer within %s", timeout)
	}
	return fmt.Errorf("cannot reach the admin endpoint at %s: %v (is the proxy running with --admin %s?)", addr, err, addr)
}
