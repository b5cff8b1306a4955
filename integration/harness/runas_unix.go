//go:build unix

package harness

import (
	"os/exec"
	"syscall"
)

// runAs makes cmd run as uid:gid (the server user, when the tests run as
// root).
func runAs(cmd *exec.Cmd, uid, gid int) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
		Uid: uint32(uid), Gid: uint32(gid),
	}}
}
