package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestREADMEDemoCommand runs the README's demo command exactly as a
// newcomer would, from the repository root, and checks what it shows.
func TestREADMEDemoCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the demo starts PostgreSQL and runs psql")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "./integration/demo")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./integration/demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"md5_user     | t   | TLSv1.3",               // the query went through, over verified TLS upstream
		"FATAL:  pgverifyproxy: upstream localhost:", // the man in the middle was refused...
		"certificate signed by unknown authority",    // ...for the right reason
		"the middlebox received no startup message",  // ...before any credential left
		"Done: stopping the proxy and PostgreSQL",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
