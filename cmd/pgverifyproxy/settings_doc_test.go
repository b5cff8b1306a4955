package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// settingsBegin and settingsEnd delimit the generated table in
// docs/settings.md.
const (
	settingsBegin = "<!-- settings:begin -->"
	settingsEnd   = "<!-- settings:end -->"
)

// renderSettings renders the settings table from runOptions: one row per
// option, in their order, with its YAML key, flag, environment variable,
// default and help, and whether a route may set it.
func renderSettings() string {
	var b strings.Builder
	b.WriteString("| YAML key | flag | environment | default | per route | meaning |\n|---|---|---|---|---|---|\n")
	for _, o := range runOptions {
		route := ""
		if slices.Contains(routeKeys, o.key) {
			route = "yes"
		}
		fmt.Fprintf(&b, "| `%s` | `--%s` | `%s_%s` | %s | %s | %s |\n", o.key, o.flag, envPrefix, strings.ToUpper(o.key),
			renderDefault(o.def), route, strings.ReplaceAll(o.usage, "|", `\|`))
	}
	return b.String()
}

// renderDefault shows an option's default as a reader would write it.
func renderDefault(def any) string {
	switch d := def.(type) {
	case string:
		if d == "" {
			return "—"
		}
		return "`" + d + "`"
	case []string:
		if len(d) == 0 {
			return "—"
		}
		return "`" + strings.Join(d, ", ") + "`"
	case time.Duration:
		return "`" + d.String() + "`"
	case bool, int:
		return fmt.Sprintf("`%v`", d)
	}
	return fmt.Sprintf("`%v`", def)
}

// TestSettingsDoc: docs/settings.md's table is generated from the option
// definitions (PGVP_UPDATE_DOCS=1 rewrites it), so every setting is
// documented with its real flag, variable and default; and every setting is
// in config.example.yaml too.
func TestSettingsDoc(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "settings.md")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i, j := strings.Index(doc, settingsBegin), strings.Index(doc, settingsEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no %s … %s block", path, settingsBegin, settingsEnd)
	}
	want := renderSettings()
	got := doc[i+len(settingsBegin)+1 : j]
	if got != want {
		if os.Getenv("PGVP_UPDATE_DOCS") == "1" {
			if err := os.WriteFile(path, []byte(doc[:i+len(settingsBegin)+1]+want+doc[j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s does not match the option definitions; regenerate it with PGVP_UPDATE_DOCS=1 go test ./cmd/pgverifyproxy -run TestSettingsDoc\n--- got\n%s\n--- want\n%s", path, got, want)
	}
	example, err := os.ReadFile(filepath.Join("..", "..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range runOptions {
		if !strings.Contains(string(example), "\n"+o.key+":") {
			t.Errorf("config.example.yaml does not show the setting %s", o.key)
		}
	}
}
