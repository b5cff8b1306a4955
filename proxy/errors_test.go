package proxy

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// TestEveryReasonHasASQLSTATE: the client of every refusal, and of every
// other end the proxy reports, gets a SQLSTATE.
func TestEveryReasonHasASQLSTATE(t *testing.T) {
	for _, r := range chain.Reasons() {
		if code := sqlstate(r); len(code) != 5 {
			t.Errorf("reason %v has no SQLSTATE (%q)", r, code)
		}
	}
	if code := (&clientError{}).Code(); code != "" {
		t.Errorf("a ClientError without a reason has SQLSTATE %q", code)
	}
}

// docRow is one row of a table of reasons in docs/operating.md.
type docRow struct{ reason, code string }

// refusedCausesDoc reads the two tables between the refused-causes markers
// of docs/operating.md: the causes a refusal is counted under, and the
// reasons that are no refusal.
func refusedCausesDoc(t *testing.T) (refusals, others []docRow) {
	t.Helper()
	const begin, end = "<!-- refused-causes:begin -->", "<!-- refused-causes:end -->"
	doc, err := os.ReadFile("../docs/operating.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), begin)
	block, _, ok2 := strings.Cut(rest, end)
	if !ok || !ok2 {
		t.Fatalf("docs/operating.md lacks the markers %s and %s", begin, end)
	}
	var table *[]docRow
	for _, line := range strings.Split(block, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			table = nil
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.Trim(strings.TrimSpace(cells[i]), "`")
		}
		switch {
		case len(cells) != 3:
			t.Fatalf("docs/operating.md: a row without its three cells (cause, SQLSTATE, when): %q", line)
		case cells[0] == "cause":
			table = &refusals
		case cells[0] == "not a refusal":
			table = &others
		case strings.Trim(cells[0], "-") == "":
			// the header's rule
		case table == nil:
			t.Fatalf("docs/operating.md: a row outside the two tables (headed cause | SQLSTATE | when and not a refusal | SQLSTATE | when): %q", line)
		default:
			*table = append(*table, docRow{cells[0], cells[1]})
		}
	}
	return refusals, others
}

// TestRefusedCausesDoc: the table of refusal causes in docs/operating.md
// lists exactly the reasons a refusal is counted under, each with the
// SQLSTATE the proxy sends, and keeps the reasons that are no refusal in a
// table of their own.
func TestRefusedCausesDoc(t *testing.T) {
	refusals, others := refusedCausesDoc(t)
	var wantRefusals, wantOthers []docRow
	for _, r := range chain.Reasons() {
		row := docRow{r.String(), sqlstate(r)}
		if r.Refusal() {
			wantRefusals = append(wantRefusals, row)
		} else {
			wantOthers = append(wantOthers, row)
		}
	}
	check := func(what string, got, want []docRow) {
		var diff []string
		for _, w := range want {
			i := slices.IndexFunc(got, func(g docRow) bool { return g.reason == w.reason })
			switch {
			case i < 0:
				diff = append(diff, fmt.Sprintf("+ | `%s` | `%s` | (when) |   missing", w.reason, w.code))
			case got[i].code != w.code:
				diff = append(diff, fmt.Sprintf("~ | `%s` | `%s` |   the proxy sends %s", w.reason, got[i].code, w.code))
			}
		}
		for _, g := range got {
			if !slices.ContainsFunc(want, func(w docRow) bool { return w.reason == g.reason }) {
				diff = append(diff, fmt.Sprintf("- | `%s` | `%s` |   %s", g.reason, g.code, notListed(g.reason, what)))
			}
		}
		if len(diff) > 0 {
			t.Errorf("docs/operating.md, %s (between the refused-causes markers) differs from the proxy (+ add, - remove, ~ fix):\n%s",
				what, strings.Join(diff, "\n"))
		}
		if len(got) != len(slices.CompactFunc(slices.Clone(got), func(a, b docRow) bool { return a.reason == b.reason })) {
			t.Errorf("docs/operating.md, %s: a reason listed twice: %v", what, got)
		}
	}
	check("the table of refusal causes", refusals, wantRefusals)
	check("the table of reasons that are no refusal", others, wantOthers)
}

// notListed says why a documented reason does not belong in a table.
func notListed(reason, table string) string {
	for _, r := range chain.Reasons() {
		if r.String() == reason {
			if r.Refusal() {
				return "a refusal: it belongs in the table of refusal causes, not in " + table
			}
			return "no refusal: it belongs in the table of reasons that are no refusal, not in " + table
		}
	}
	return "no such reason"
}

// TestClientErrorTextIsOneField: a NUL or invalid UTF-8 in an error's text
// (an upstream's bytes quoted in it) cannot end the field early or reach
// the client undecodable. Found by FuzzAuthPhase.
func TestClientErrorTextIsOneField(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "pgverifyproxy: refused", "pgverifyproxy: refused"},
		{"NUL", "unknown message type: \x00", `unknown message type: \x00`},
		{"NUL then field-like bytes", "x\x00Dinjected\x00", `x\x00Dinjected\x00`},
		{"invalid UTF-8", "bad \xff\xfe byte", "bad \uFFFD byte"},
		{"valid UTF-8 kept", "café ✓", "café ✓"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ce := &clientError{Reason: chain.ReasonVerification, Message: "pgverifyproxy: " + tc.in, Detail: tc.in, Hint: tc.in}
			b, err := ce.response()
			if err != nil {
				t.Fatal(err)
			}
			var er pgproto3.ErrorResponse
			if err := er.Decode(b[5:]); err != nil {
				t.Fatal(err)
			}
			if er.Message != "pgverifyproxy: "+tc.want || er.Detail != tc.want || er.Hint != tc.want {
				t.Errorf("decoded message %q detail %q hint %q, want %q", er.Message, er.Detail, er.Hint, tc.want)
			}
			if er.Code != "08006" || er.Severity != "FATAL" {
				t.Errorf("decoded code %q severity %q", er.Code, er.Severity)
			}
		})
	}
}
