//go:build unix

package relay

import "syscall"

// rusage returns the process's context switches and CPU time (user and
// system, in ns) from getrusage, or zeros.
func rusage() (cs, cpu int64) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		return int64(ru.Nvcsw + ru.Nivcsw), ru.Utime.Nano() + ru.Stime.Nano()
	}
	return 0, 0
}
