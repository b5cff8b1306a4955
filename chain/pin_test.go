package chain

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

func TestPinRoundTripAndPermissions(t *testing.T) {
	store := &PinStore{Dir: filepath.Join(t.TempDir(), "pins")}
	a, i := selfSignedCA(t, "anchor"), selfSignedCA(t, "hint")
	path, err := store.Save(testPin(t, a, i))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("pin file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if dst, _ := os.Stat(store.Dir); dst.Mode().Perm() != 0o700 {
		t.Errorf("pin dir mode %v, want 0700", dst.Mode().Perm())
	}
	p, err := store.Load("db.example.com", 5432, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Anchors) != 1 || !p.Anchors[0].Equal(a) || len(p.Intermediates) != 1 || !p.Intermediates[0].Equal(i) {
		t.Fatalf("round trip changed the certificates: %+v", p)
	}
	if _, err := store.Load("db.example.com", 5433, ""); err != ErrNoPin {
		t.Fatalf("another port: got %v, want ErrNoPin", err)
	}
	if store.Path("h", 1, "") == store.Path("h", 1, "other") {
		t.Error("server name is not part of the pin's identity")
	}
}

func TestDamagedPinFilesAreErrors(t *testing.T) {
	a, i := selfSignedCA(t, "anchor"), selfSignedCA(t, "hint")
	good, err := testPin(t, a, i).Encode()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := testPin(t, selfSignedCA(t, "other")).Encode()
	otherPEM := other[strings.Index(string(other), "-----BEGIN"):]
	goodPEM := strings.Index(string(good), "-----BEGIN")
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "no metadata line"},
		{"plain PEM bundle", good[goodPEM:], "no metadata line"},
		{"truncated", good[:len(good)-40], "certificate"},
		{"anchor swapped", append(append([]byte{}, good[:goodPEM]...), append(otherPEM, good[goodPEM:]...)...), "metadata"},
		{"metadata garbled", []byte(strings.Replace(string(good), `"version":1`, `"version":1,,`, 1)), "metadata line"},
		{"future format", []byte(strings.Replace(string(good), `"version":1`, `"version":9`, 1)), "version 9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePin(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	// Through the store, the error names the file and says it was kept.
	store := &PinStore{Dir: t.TempDir()}
	path := store.Path("db.example.com", 5432, "")
	os.WriteFile(path, good[:len(good)-40], 0o600)
	if _, err := store.Load("db.example.com", 5432, ""); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "left as it is") {
		t.Fatalf("got %v", err)
	}
}

// TestPinWriteCrashKeepsOldPin kills a writer half-way (in a child process
// that exits without cleanup, as a crash would) and checks the old pin.
func TestPinWriteCrashKeepsOldPin(t *testing.T) {
	if dir := os.Getenv("PGVP_CRASH_PIN_DIR"); dir != "" {
		store := &PinStore{Dir: dir, crashAfter: 300}
		store.Save(testPin(t, selfSignedCA(t, "new anchor")))
		t.Fatal("the simulated crash did not happen")
	}
	dir := t.TempDir()
	store := &PinStore{Dir: dir}
	old := selfSignedCA(t, "old anchor")
	path, err := store.Save(testPin(t, old))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPinWriteCrashKeepsOldPin$")
	cmd.Env = append(os.Environ(), "PGVP_CRASH_PIN_DIR="+dir)
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("child: %v, want the simulated crash (exit 3)", err)
	}
	after, _ := os.ReadFile(path)
	if string(after) != string(before) {
		t.Fatal("the pin file changed although the write crashed")
	}
	p, err := store.Load("db.example.com", 5432, "")
	if err != nil || !p.Anchors[0].Equal(old) {
		t.Fatalf("old pin not intact: %v", err)
	}
	// The crash left its partial temporary file beside the pin, never in it.
	matches, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	if len(matches) != 1 {
		t.Fatalf("want the crashed temporary file left aside, found %v", matches)
	}
}

// TestPinFileHasNoControlCharacters: a pin file's comment and metadata
// lines stay one line each, with no character that could drive a terminal
// (cat, less), whatever the anchor's subject holds; the metadata still
// parses back to the same pin.
func TestPinFileHasNoControlCharacters(t *testing.T) {
	hostile := "root\n# anchor 2: FAKE; SPKI SHA-256 AAAA\x1b[8m\r\u202e\x7f\u2028"
	a := selfSignedCA(t, hostile)
	p := testPin(t, a, selfSignedCA(t, "hint\x1b]0;x\a"))
	data, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for i, r := range text {
		if r != '\n' && !unicode.IsPrint(r) {
			t.Fatalf("the pin file holds %U at byte %d:\n%s", r, i, text)
		}
	}
	if n := strings.Count(text, "\n# anchor "); n != 1 {
		t.Fatalf("%d anchor comment lines, want 1:\n%s", n, text)
	}
	back, err := ParsePin(data)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Anchors[0].Equal(a) || back.Anchors[0].Subject.CommonName != hostile {
		t.Fatal("the pin does not round-trip")
	}
}
