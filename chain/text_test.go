package chain

import (
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// hostileStrings are certificate texts a man in the middle could choose.
var hostileStrings = []string{
	"db\n  SPKI SHA-256: FAKE\nOK: verified\x1b[8m",
	"\x1b]0;title\x07",
	"a\rb",
	"rlo \u202e olr",
	"del \x7f",
	"c1 \u009b2J",
	"bad utf-8 \xff\xc0",
	"zero\u200bwidth",
	"ls\u2028ps\u2029",
	`back\slash "quote"`,
	"",
}

// assertNoControl fails when s holds a rune that is not printable (other
// than the ASCII space) or a byte that is not UTF-8.
func assertNoControl(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Errorf("%s: %q is not UTF-8", what, s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			t.Errorf("%s: %q holds %U", what, s, r)
		}
	}
}

func TestQuoteEscapesEverythingNonPrintable(t *testing.T) {
	for _, s := range hostileStrings {
		q := Quote(s)
		assertNoControl(t, "Quote", q)
		if back, err := strconv.Unquote(q); err != nil || back != s {
			t.Errorf("Quote(%q) = %q does not unquote to the text: %q, %v", s, q, back, err)
		}
		if strings.Contains(q, "\n") {
			t.Errorf("Quote(%q) spans lines", s)
		}
	}
	if got := Quote("CN=db,O=x"); got != `"CN=db,O=x"` {
		t.Errorf("Quote of clean text = %s", got)
	}
}

func TestPrintable(t *testing.T) {
	for _, s := range hostileStrings {
		p := Printable(s)
		assertNoControl(t, "Printable", p)
		if want := strconv.Quote(s); p != want[1:len(want)-1] && p != s {
			t.Errorf("Printable(%q) = %q, neither the text nor its quoted form", s, p)
		}
		// The escaped form reads back to the text, so nothing is lost.
		if back, err := strconv.Unquote(`"` + p + `"`); p != s && (err != nil || back != s) {
			t.Errorf("Printable(%q) = %q does not read back: %q, %v", s, p, back, err)
		}
	}
	for _, clean := range []string{"", "CN=db.example.com,O=Example", "héllo ✓ 日本", "tab-less, quote \" ok"} {
		if got := Printable(clean); got != clean {
			t.Errorf("Printable(%q) = %q, want it unchanged", clean, got)
		}
	}
	// A backslash is escaped, so an escape in the output is always one
	// Printable made.
	if got := Printable(`a\nb`); got != `a\\nb` {
		t.Errorf(`Printable("a\\nb") = %q, want a\\nb`, got)
	}
	if got := Printable("\u202e"); got != `\u202e` {
		t.Errorf("Printable(U+202E) = %q", got)
	}
	if got := Printable("\xff"); got != `\xff` {
		t.Errorf("Printable(0xff) = %q", got)
	}
}

func TestQuoteAll(t *testing.T) {
	if got := QuoteAll(nil); got != "" {
		t.Errorf("QuoteAll(nil) = %q", got)
	}
	got := QuoteAll([]string{"localhost", "x\nOK: verified", "a, b"})
	if want := `"localhost", "x\nOK: verified", "a, b"`; got != want {
		t.Errorf("QuoteAll = %s, want %s", got, want)
	}
	assertNoControl(t, "QuoteAll", QuoteAll(hostileStrings))
}
