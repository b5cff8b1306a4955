package main

import (
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// Certificate text printed by the commands is quoted where it is printed
// (chain.Quote). safeWriter is the second line of defence: whatever reaches
// the terminal through it, a place that forgot to quote included, cannot
// drive the terminal (move the cursor, hide text, set the title, rewrite a
// line with a carriage return) or reorder a line.

// safeWriter writes to w with every byte or rune that could drive a
// terminal shown as a visible escape (\x1b, \u202e): C0 controls other
// than '\n' and '\t' (ESC, '\r', BEL...), DEL, C1 controls, bytes that are
// not UTF-8, and the Unicode bidirectional and line-separator controls.
// Each Write is taken as complete text: fmt and log/slog write a whole line
// at a time, so a rune is never split across two writes.
type safeWriter struct{ w io.Writer }

// safeOut returns w wrapped in a safeWriter (w itself when it is one).
func safeOut(w io.Writer) io.Writer {
	if _, ok := w.(*safeWriter); ok {
		return w
	}
	return &safeWriter{w: w}
}

// Write implements io.Writer. It returns len(p) when the escaped text was
// written in full.
func (s *safeWriter) Write(p []byte) (int, error) {
	if !needsTerminalEscape(p) {
		return s.w.Write(p)
	}
	if _, err := s.w.Write(escapeTerminal(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// terminalUnsafe reports whether the rune r, decoded with the given size,
// must not reach a terminal as it is (newlines and tabs may).
func terminalUnsafe(r rune, size int) bool {
	switch {
	case r == utf8.RuneError && size <= 1:
		return true // not UTF-8: a raw 0x80-0xff byte is a C1 control on some terminals
	case r == '\n' || r == '\t':
		return false
	case r < 0x20 || r == 0x7f:
		return true // C0 controls (ESC, CR, BEL, backspace...) and DEL
	case r >= 0x80 && r <= 0x9f:
		return true // C1 controls (CSI, OSC...)
	}
	return bidiOrSeparator(r)
}

// bidiOrSeparator reports the Unicode bidirectional formatting controls,
// which reorder what follows them on the line (a fingerprint shown
// reversed), and the line and paragraph separators.
func bidiOrSeparator(r rune) bool {
	switch {
	case r == 0x061c, r == 0x200e, r == 0x200f: // ALM, LRM, RLM
		return true
	case r >= 0x202a && r <= 0x202e: // LRE, RLE, PDF, LRO, RLO
		return true
	case r >= 0x2066 && r <= 0x2069: // LRI, RLI, FSI, PDI
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

// needsTerminalEscape reports whether p holds anything terminalUnsafe.
func needsTerminalEscape(p []byte) bool {
	for i := 0; i < len(p); {
		if b := p[i]; b < utf8.RuneSelf {
			if terminalUnsafe(rune(b), 1) {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(p[i:])
		if terminalUnsafe(r, size) {
			return true
		}
		i += size
	}
	return false
}

// escapeTerminal returns p with each terminalUnsafe C0 control or
// non-UTF-8 byte written as \xNN and each other such rune (DEL included) as
// \uNNNN. A JSON log line stays valid JSON: its encoder escapes C0 controls
// and replaces bad UTF-8 itself, and \uNNNN is a JSON escape.
func escapeTerminal(p []byte) []byte {
	out := make([]byte, 0, len(p)+16)
	for i := 0; i < len(p); {
		r, size := utf8.DecodeRune(p[i:])
		switch {
		case !terminalUnsafe(r, size):
			out = append(out, p[i:i+size]...)
		case size == 1 && r != 0x7f:
			out = fmt.Appendf(out, `\x%02x`, p[i])
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
	}
	return out
}

// escapeControls is chain.EscapeControls: the text of an error that may
// carry certificate text, as one line, with text already quoted unchanged.
func escapeControls(s string) string { return chain.EscapeControls(s) }

// escapedError is an error whose text is escaped with escapeControls; it
// unwraps to the error itself.
type escapedError struct{ err error }

func (e escapedError) Error() string { return escapeControls(e.err.Error()) }
func (e escapedError) Unwrap() error { return e.err }
