package main

import "github.com/spf13/cobra"

// newCheckCmd is the `check` command (placeholder until it is written).
func newCheckCmd() *cobra.Command {
	return &cobra.Command{Use: "check", Short: "Dial, verify and report each route's upstream", Hidden: true}
}
