package chain

import (
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestPinDirPerOS checks the default pin directory's choice for each
// system, whatever system runs the test: the environment and home
// directory are given, not read.
func TestPinDirPerOS(t *testing.T) {
	const winLocal = `C:\Users\me\AppData\Local`
	tests := []struct {
		name    string
		goos    string
		env     map[string]string
		home    string // "" means no home directory
		want    []string
		wantErr string
	}{
		{name: "linux: XDG_STATE_HOME", goos: "linux", env: map[string]string{"XDG_STATE_HOME": "/state"}, home: "/home/me",
			want: []string{"/state", "pgverifyproxy"}},
		{name: "linux: home", goos: "linux", home: "/home/me",
			want: []string{"/home/me", ".local", "state", "pgverifyproxy"}},
		{name: "linux: relative XDG_STATE_HOME is ignored", goos: "linux", env: map[string]string{"XDG_STATE_HOME": "state"}, home: "/home/me",
			want: []string{"/home/me", ".local", "state", "pgverifyproxy"}},
		{name: "linux: XDG_STATE_HOME without a home", goos: "linux", env: map[string]string{"XDG_STATE_HOME": "/state"},
			want: []string{"/state", "pgverifyproxy"}},
		{name: "linux: neither", goos: "linux", wantErr: "set --pin-dir"},
		{name: "freebsd: as linux", goos: "freebsd", home: "/home/me",
			want: []string{"/home/me", ".local", "state", "pgverifyproxy"}},
		{name: "darwin: home", goos: "darwin", home: "/Users/me",
			want: []string{"/Users/me", "Library", "Application Support", "pgverifyproxy"}},
		{name: "darwin: XDG_STATE_HOME wins", goos: "darwin", env: map[string]string{"XDG_STATE_HOME": "/Users/me/.local/state"}, home: "/Users/me",
			want: []string{"/Users/me/.local/state", "pgverifyproxy"}},
		{name: "darwin: relative XDG_STATE_HOME is ignored", goos: "darwin", env: map[string]string{"XDG_STATE_HOME": "state"}, home: "/Users/me",
			want: []string{"/Users/me", "Library", "Application Support", "pgverifyproxy"}},
		{name: "darwin: neither", goos: "darwin", wantErr: "set --pin-dir"},
		{name: "ios: as darwin", goos: "ios", home: "/var/mobile",
			want: []string{"/var/mobile", "Library", "Application Support", "pgverifyproxy"}},
		{name: "windows: LocalAppData", goos: "windows", env: map[string]string{"LocalAppData": winLocal}, home: `C:\Users\me`,
			want: []string{winLocal, "pgverifyproxy"}},
		{name: "windows: XDG_STATE_HOME is not consulted", goos: "windows",
			env: map[string]string{"LocalAppData": winLocal, "XDG_STATE_HOME": `C:\state`}, home: `C:\Users\me`,
			want: []string{winLocal, "pgverifyproxy"}},
		{name: "windows: UNC LocalAppData", goos: "windows", env: map[string]string{"LocalAppData": `\\srv\profiles\me`},
			want: []string{`\\srv\profiles\me`, "pgverifyproxy"}},
		{name: "windows: no LocalAppData, even with a home", goos: "windows", home: `C:\Users\me`, wantErr: "set --pin-dir (LocalAppData"},
		{name: "windows: relative LocalAppData", goos: "windows", env: map[string]string{"LocalAppData": `AppData\Local`}, home: `C:\Users\me`,
			wantErr: "set --pin-dir (LocalAppData"},
		{name: "windows: drive-relative LocalAppData", goos: "windows", env: map[string]string{"LocalAppData": `C:AppData`}, wantErr: "set --pin-dir"},
		{name: "windows: root-relative LocalAppData", goos: "windows", env: map[string]string{"LocalAppData": `\AppData`}, wantErr: "set --pin-dir"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			home := func() (string, error) {
				if tc.home == "" {
					return "", errors.New("no home")
				}
				return tc.home, nil
			}
			got, err := pinDirFor(tc.goos, getenv, home)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("pinDirFor = %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Joined with the host's separator, as DefaultPinDir does.
			if want := filepath.Join(tc.want...); got != want {
				t.Errorf("pinDirFor = %q, want %q", got, want)
			}
		})
	}
}

// TestDefaultPinDirReadsThisSystem checks that DefaultPinDir applies the
// rule of the system it runs on to its real environment.
func TestDefaultPinDirReadsThisSystem(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/xdg-state")
	t.Setenv("LocalAppData", `C:\Local`)
	got, err := DefaultPinDir()
	if err != nil {
		t.Fatal(err)
	}
	var want string
	switch runtime.GOOS {
	case "windows":
		want = `C:\Local\pgverifyproxy`
	default:
		want = "/xdg-state/pgverifyproxy"
	}
	if got != want {
		t.Errorf("DefaultPinDir on %s = %q, want %q", runtime.GOOS, got, want)
	}
}
