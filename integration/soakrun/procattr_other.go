//go:build !linux

package soakrun

import "os/exec"

// ownGroupKilledWithUs does nothing: the soak runs on Linux only (it reads
// /proc). This lets the package build elsewhere, so that the integration
// package, whose TestSoak runs it, compiles on every system.
func ownGroupKilledWithUs(*exec.Cmd) {}
