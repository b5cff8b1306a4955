//go:build windows

package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/windows"
)

// TestWindowsShellQuoting: the command reaches cmd.exe as written, quotes
// included, so a program path with spaces and quoted arguments work.
func TestWindowsShellQuoting(t *testing.T) {
	dir := filepath.Join(tempDir(t), "with space")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bat := filepath.Join(dir, "print first.bat")
	if err := os.WriteFile(bat, []byte("@echo [%~1]\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		command, want string
		code          int
	}{
		{`echo "a b"`, `"a b"`, 0},
		{`"` + bat + `" "x y"`, `[x y]`, 0},
		{`echo one& echo two`, "one\r\ntwo", 0},
		{`exit /b 3`, "", 3},
	} {
		cmd := shellCommand(context.Background(), tc.command)
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", tc.command, err)
		}
		if got := strings.TrimSpace(out.String()); got != tc.want || code != tc.code {
			t.Errorf("%s: output %q, exit %d; want %q, exit %d", tc.command, got, code, tc.want, tc.code)
		}
	}
}

const sleeperEnv = "PGVP_TEST_SLEEPER_PIDFILE"

// TestWindowsShellHelperSleeper is not a test: started by
// TestWindowsShellTimeoutKillsTree through cmd.exe, it writes its process
// id and sleeps.
func TestWindowsShellHelperSleeper(t *testing.T) {
	file := os.Getenv(sleeperEnv)
	if file == "" {
		t.Skip("helper process for TestWindowsShellTimeoutKillsTree")
	}
	if err := os.WriteFile(file, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Minute)
}

// TestWindowsShellTimeoutKillsTree: a password_command that outlives its
// timeout is ended with the process it started (cmd.exe's child, a
// program that would otherwise go on running), and the login fails with
// the timeout's message.
func TestWindowsShellTimeoutKillsTree(t *testing.T) {
	pidFile := filepath.Join(tempDir(t), "sleeper.pid")
	t.Setenv(sleeperEnv, pidFile)
	pc := &passwordCommand{
		command: `"` + os.Args[0] + `" -test.run=^TestWindowsShellHelperSleeper$`,
		timeout: 15 * time.Second, // Wine takes seconds to start a program
		log:     discardLogger(),
	}
	start := time.Now()
	_, err := pc.run()
	if err == nil || !strings.Contains(err.Error(), "did not finish within") {
		t.Fatalf("password_command past its timeout: %v", err)
	}
	if d := time.Since(start); d > 25*time.Second {
		t.Errorf("the timed-out command took %v to be ended", d)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the helper never ran (or ran after the timeout): %v", err)
	}
	pid, err := strconv.Atoi(string(data))
	if err != nil {
		t.Fatal(err)
	}
	h, err := windows.OpenProcess(windows.SYNCHRONIZE|windows.PROCESS_TERMINATE, false, uint32(pid))
	if err != nil {
		return // gone already
	}
	defer windows.CloseHandle(h)
	if ev, err := windows.WaitForSingleObject(h, 10000); err != nil || ev != windows.WAIT_OBJECT_0 {
		_ = windows.TerminateProcess(h, 1)
		t.Fatalf("the program the command started (pid %d) still runs 10s after the timeout", pid)
	}
}
