package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestLogFile: with log_file the log is appended to that file (created
// private), with certificate text escaped as on standard error.
func TestLogFile(t *testing.T) {
	path := filepath.Join(tempDir(t), "proxy.log")
	if err := os.WriteFile(path, []byte("earlier line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, format := range []string{"text", "json"} {
		log, err := newLogger(runConfig{LogLevel: "info", LogFormat: format, LogFile: path}, new(slog.LevelVar))
		if err != nil {
			t.Fatal(err)
		}
		log.Info("listening", "subject", "CN=x\x1b[8m\u202e", "n", i)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if !strings.HasPrefix(text, "earlier line\n") || strings.Count(text, "listening") != 2 {
		t.Fatalf("log file:\n%s", text)
	}
	if strings.ContainsAny(text, "\x1b\u202e") {
		t.Fatalf("raw control characters in the log file: %q", text)
	}
	if runtime.GOOS != "windows" {
		fresh := filepath.Join(filepath.Dir(path), "new.log")
		if _, err := newLogger(runConfig{LogLevel: "info", LogFormat: "text", LogFile: fresh}, new(slog.LevelVar)); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(fresh); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("new log file mode %v, %v; want 0600", st.Mode().Perm(), err)
		}
	}
	if _, err := newLogger(runConfig{LogLevel: "info", LogFile: filepath.Join(path, "sub", "x.log")}, new(slog.LevelVar)); err == nil || !strings.Contains(err.Error(), "log file") {
		t.Fatalf("an unwritable log file: %v", err)
	}
}
