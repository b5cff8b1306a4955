//go:build !unix

package harness

import "os/exec"

// runAs does nothing: only unix has a root to step down from (there
// os.Geteuid is -1, so no cluster has an owner to run as).
func runAs(*exec.Cmd, int, int) {}
