//go:build windows

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"
)

// shellCommand runs command with cmd.exe as `cmd.exe /d /s /c "command"`,
// the command line given as written: Go's quoting of arguments is for
// programs that parse their command line as the C runtime does, and
// cmd.exe does not (a quoted program path or argument would arrive with
// backslashes in it). /s makes cmd.exe take off just the outer quotes; /d
// skips the AutoRun commands of the registry. When ctx ends, the command
// and the processes it started are ended (see descendants).
func shellCommand(ctx context.Context, command string) *exec.Cmd {
	shell := cmdExe()
	cmd := exec.CommandContext(ctx, shell)
	cmd.SysProcAttr = &syscall.SysProcAttr{CmdLine: syscall.EscapeArg(shell) + ` /d /s /c "` + command + `"`}
	cmd.Cancel = func() error {
		// Listed before cmd.exe ends, while their parent is still there.
		kids := descendants(uint32(cmd.Process.Pid))
		err := cmd.Process.Kill()
		for _, h := range kids {
			_ = windows.TerminateProcess(h, 1)
			_ = windows.CloseHandle(h)
		}
		return err
	}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// cmdExe is the command interpreter: %ComSpec%, else
// %SystemRoot%\System32\cmd.exe, else cmd.exe from PATH.
func cmdExe() string {
	if s := os.Getenv("ComSpec"); filepath.IsAbs(s) {
		return s
	}
	if root := os.Getenv("SystemRoot"); filepath.IsAbs(root) {
		return filepath.Join(root, "System32", "cmd.exe")
	}
	return "cmd.exe"
}

// descendants returns handles (with the right to end them) to the
// processes that pid started, those that they started, and so on, as one
// snapshot of the system's processes shows them. Windows records each
// process's parent by id only, and an id is reused once its process has
// ended: a process counts as a child only if it was created after its
// parent. A process whose parent ended before the snapshot is not found.
func descendants(pid uint32) []windows.Handle {
	snap, err := windows.CreateToolhelp32Snapshot(windows.TH32CS_SNAPPROCESS, 0)
	if err != nil {
		return nil
	}
	defer windows.CloseHandle(snap)
	children := map[uint32][]uint32{}
	var e windows.ProcessEntry32
	e.Size = uint32(unsafe.Sizeof(e))
	for err := windows.Process32First(snap, &e); err == nil; err = windows.Process32Next(snap, &e) {
		if e.ProcessID != e.ParentProcessID {
			children[e.ParentProcessID] = append(children[e.ParentProcessID], e.ProcessID)
		}
	}
	root, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, pid)
	if err != nil {
		return nil
	}
	rootCreated, ok := created(root)
	windows.CloseHandle(root)
	if !ok {
		return nil
	}
	type node struct {
		pid     uint32
		created int64
	}
	var out []windows.Handle
	seen := map[uint32]bool{pid: true}
	queue := []node{{pid, rootCreated}}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		for _, c := range children[n.pid] {
			if seen[c] {
				continue
			}
			seen[c] = true
			// The handle held from here on keeps the id from being reused.
			h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION|windows.PROCESS_TERMINATE, false, c)
			if err != nil {
				continue
			}
			t, ok := created(h)
			if !ok || t < n.created {
				windows.CloseHandle(h)
				continue
			}
			out = append(out, h)
			queue = append(queue, node{c, t})
		}
	}
	return out
}

// created returns when the process of h was created.
func created(h windows.Handle) (int64, bool) {
	var c, e, k, u windows.Filetime
	if err := windows.GetProcessTimes(h, &c, &e, &k, &u); err != nil {
		return 0, false
	}
	return c.Nanoseconds(), true
}
