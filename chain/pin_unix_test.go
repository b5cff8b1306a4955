//go:build unix

package chain

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPinStoreRefusesFilesOthersCouldWrite: another local user who can
// write to the pin directory or the pin file could plant a pin for a
// server of their own. Like ssh's StrictModes, the store refuses such a
// directory or file, and a pin file that is a symbolic link, naming the fix.
func TestPinStoreRefusesFilesOthersCouldWrite(t *testing.T) {
	pin := testPin(t, selfSignedCA(t, "anchor"))
	good, err := pin.Encode()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir, path string)
		want  []string // "" in want: Load must pass
	}{
		{"control: a private directory and file", func(t *testing.T, dir, path string) {}, nil},
		{"control: a 0755 directory", func(t *testing.T, dir, path string) { must(t, os.Chmod(dir, 0o755)) }, nil},
		{"world-writable directory", func(t *testing.T, dir, path string) { must(t, os.Chmod(dir, 0o777)) },
			[]string{"writable by group or others", "chmod 700 " + "{dir}"}},
		{"group-writable directory", func(t *testing.T, dir, path string) { must(t, os.Chmod(dir, 0o770)) },
			[]string{"writable by group or others"}},
		{"world-writable pin file", func(t *testing.T, dir, path string) { must(t, os.Chmod(path, 0o666)) },
			[]string{"writable by group or others", "chmod go-w {path}"}},
		{"pin file of another user", func(t *testing.T, dir, path string) { chownOrSkip(t, path, 65534) },
			[]string{"owned by uid 65534", "chown"}},
		{"pin directory of another user", func(t *testing.T, dir, path string) { chownOrSkip(t, dir, 65534) },
			[]string{"owned by uid 65534", "--pin-dir of your own"}},
		{"pin file is a symbolic link", func(t *testing.T, dir, path string) {
			real := filepath.Join(t.TempDir(), "elsewhere.pem")
			must(t, os.Rename(path, real))
			must(t, os.Symlink(real, path))
		}, []string{"symbolic link"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pins")
			must(t, os.Mkdir(dir, 0o700))
			store := &PinStore{Dir: dir}
			path := store.Path(pin.Host, pin.Port, pin.ServerName)
			must(t, os.WriteFile(path, good, 0o600))
			tc.setup(t, dir, path)
			_, err := store.Load(pin.Host, pin.Port, pin.ServerName)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Load accepted it")
			}
			for _, w := range tc.want {
				w = strings.NewReplacer("{dir}", dir, "{path}", path).Replace(w)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			// Save refuses a directory others can write to as well.
			if strings.Contains(tc.name, "directory") {
				if _, err := store.Save(pin); err == nil {
					t.Error("Save wrote into it")
				}
			}
		})
	}
}

// TestSaveNewDoesNotReplaceAnotherProcesssPin: the first pin is created
// exclusively, so two processes pinning at once cannot both believe their
// own pin is the one on disk.
func TestSaveNewDoesNotReplaceAnotherProcesssPin(t *testing.T) {
	store := &PinStore{Dir: t.TempDir()}
	first, second := testPin(t, selfSignedCA(t, "first")), testPin(t, selfSignedCA(t, "second"))
	if _, err := store.SaveNew(first); err != nil {
		t.Fatal(err)
	}
	if _, err := store.SaveNew(second); !errors.Is(err, ErrPinExists) {
		t.Fatalf("second SaveNew: %v, want ErrPinExists", err)
	}
	p, err := store.Load(first.Host, first.Port, first.ServerName)
	if err != nil || !p.Anchors[0].Equal(first.Anchors[0]) {
		t.Fatalf("the pin on disk is not the first one: %v", err)
	}
	entries, _ := os.ReadDir(store.Dir)
	if len(entries) != 1 {
		t.Errorf("%d files in the pin directory, want 1 (no temporary file left)", len(entries))
	}
	// A re-pin (Save) replaces it.
	if _, err := store.Save(second); err != nil {
		t.Fatal(err)
	}
	if p, _ := store.Load(first.Host, first.Port, first.ServerName); p == nil || !p.Anchors[0].Equal(second.Anchors[0]) {
		t.Fatal("Save did not replace the pin")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// chownOrSkip gives path to uid; only root can, and CI runs as root.
func chownOrSkip(t *testing.T, path string, uid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: this case must run there")
		}
		t.Skip("needs root to give a file to another user")
	}
	must(t, os.Chown(path, uid, -1))
}
