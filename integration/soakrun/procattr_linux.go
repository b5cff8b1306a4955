package soakrun

import (
	"os/exec"
	"syscall"
)

// ownGroupKilledWithUs puts cmd in its own process group: a terminal's
// Ctrl-C reaches only the soak, which stops the proxy itself; killed if the
// soak dies.
func ownGroupKilledWithUs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
