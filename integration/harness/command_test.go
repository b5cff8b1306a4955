package harness

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestProcessStop(t *testing.T) {
	for _, tc := range []struct {
		name       string
		script     string
		waitExit   bool // let it end on its own before Stop
		wantKilled bool
		wantErr    bool // Err after the stop
	}{
		{"ends on SIGTERM", "echo ready; exec sleep 60", false, false, true},
		// An ignored signal stays ignored across exec.
		{"ignores SIGTERM: killed after the grace", "trap '' TERM; echo ready; exec sleep 60", false, true, true},
		{"already exited with status 0: nothing sent", "echo ready; exit 0", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("sh", "-c", tc.script)
			// A pipe of our own: Wait closes a StdoutPipe, possibly before
			// the line is read.
			out, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			cmd.Stdout = w
			p, err := StartProcess(cmd)
			w.Close()
			if err != nil {
				t.Fatal(err)
			}
			// The shell has set its traps once it says so.
			if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
				t.Fatalf("the script said %q (%v)", line, err)
			}
			if tc.waitExit {
				_ = p.Err()
			}
			if p.Exited() != tc.waitExit {
				t.Fatalf("Exited() = %v before Stop", !tc.waitExit)
			}
			if killed := p.Stop(syscall.SIGTERM, 300*time.Millisecond); killed != tc.wantKilled {
				t.Errorf("Stop killed = %v, want %v", killed, tc.wantKilled)
			}
			if !p.Exited() {
				t.Error("running after Stop")
			}
			if err := p.Err(); (err != nil) != tc.wantErr {
				t.Errorf("Err() = %v, want an error: %v", err, tc.wantErr)
			}
			if p.Stop(syscall.SIGTERM, time.Millisecond) {
				t.Error("a second Stop killed again")
			}
		})
	}
}

func TestCleanupsRunLastFirstOnce(t *testing.T) {
	var c Cleanups
	var got []int
	for i := 1; i <= 3; i++ {
		c.Add(func() { got = append(got, i) })
	}
	c.Run()
	c.Run() // nothing left
	if len(got) != 3 || got[0] != 3 || got[1] != 2 || got[2] != 1 {
		t.Fatalf("ran %v, want [3 2 1]", got)
	}
}

func TestModuleRootIsThisModule(t *testing.T) {
	root, err := ModuleRoot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "pgverifyproxy")); err != nil {
		t.Errorf("module root %s has no cmd/pgverifyproxy: %v", root, err)
	}
}
