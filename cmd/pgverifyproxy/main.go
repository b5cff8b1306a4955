// Command pgverifyproxy is a local PostgreSQL proxy that connects upstream
// with TLS verified like libpq's sslmode=verify-full, for apps that can only
// do sslmode=require (or no TLS at all).
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// usageError marks errors in the command line or configuration (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		// An error can carry certificate text: nothing in it may drive
		// the terminal.
		fmt.Fprintln(safeOut(os.Stderr), "pgverifyproxy: error:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	var configFile string
	run := &cobra.Command{
		Use:   "run",
		Short: "Serve local clients and relay them to the verified upstream (the default command)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runProxy(cmd, configFile)
		},
	}
	addRunFlags(run.Flags())
	run.Flags().StringVar(&configFile, "config", "", "YAML config file (see config.example.yaml)")

	root := &cobra.Command{
		Use:   "pgverifyproxy",
		Short: "A local PostgreSQL proxy that verifies the upstream like sslmode=verify-full",
		Long: `pgverifyproxy accepts PostgreSQL clients locally (plaintext or sslmode=require),
connects to the upstream server with TLS verified exactly as libpq's
sslmode=verify-full does, and relays the protocol both ways.

  pgverifyproxy --upstream db.example.com:5432 --ca-file root.crt

Settings come from flags, PGVERIFYPROXY_* environment variables and a YAML
file (--config), in that order of precedence.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          run.RunE,
	}
	addRunFlags(root.Flags())
	root.Flags().StringVar(&configFile, "config", "", "YAML config file (see config.example.yaml)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	run.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(run, newChainCmd(), newCheckCmd(), newReadyCmd(), newWaitCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionString())
		},
	})
	return root
}

// versionNumber is the version alone: set at build time, else the module
// version go install recorded, else "dev".
func versionNumber() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return v
}

func versionString() string {
	return fmt.Sprintf("pgverifyproxy %s (%s %s/%s)", versionNumber(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
