package main

import "github.com/spf13/cobra"

// newReadyCmd is the `ready` command (placeholder until it is written).
func newReadyCmd() *cobra.Command {
	return &cobra.Command{Use: "ready", Short: "Ask a running proxy's admin endpoint whether it is ready", Hidden: true}
}
