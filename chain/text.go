package chain

import (
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text from a certificate (subject, issuer, SAN, CN) or from a server is
// chosen by whoever made it, and until the chain is verified that may be a
// man in the middle: a CN can hold a newline that starts a fake "OK:" line,
// or an escape sequence that hides the real fingerprint on a terminal. Such
// text reaches a terminal, a log, a client's error or a file only through
// Quote or Printable.

// Quote returns s in double quotes with Go's escapes (strconv.Quote): every
// control character, invalid UTF-8 byte and non-printing rune (bidi
// overrides, zero-width characters) is shown as an escape, never sent as is.
func Quote(s string) string { return strconv.Quote(s) }

// Printable returns s unchanged when every rune of it is printable and not
// a backslash, else s with those runes escaped as Quote escapes them but
// without the surrounding quotes. It is for places where quotes would be
// noise (a line of a pin file's comment), and it never returns a control
// character.
func Printable(s string) string {
	clean := true
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				clean = false
				break
			}
		}
		if r == '\\' || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// EscapeControls returns s with every character that is not printable
// (newlines, tabs and other controls, bidi overrides, line separators) and
// every byte that is not UTF-8 escaped as strconv.Quote escapes them, while
// backslashes and quotes stay as they are: text that Quote made already
// passes unchanged. It is for one-line texts, such as an error's, that may
// carry certificate or server text.
func EscapeControls(s string) string {
	clean := true
	for i, r := range s {
		if !printableAt(s, i, r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	out := make([]byte, 0, len(s)+16)
	for i, r := range s {
		switch {
		case printableAt(s, i, r):
			out = utf8.AppendRune(out, r)
		case r == utf8.RuneError:
			out = fmt.Appendf(out, `\x%02x`, s[i])
		default:
			q := strconv.QuoteRune(r) // 'x' with the escape inside
			out = append(out, q[1:len(q)-1]...)
		}
	}
	return string(out)
}

// printableAt reports whether r, at byte i of s, is printable (a RuneError
// standing for an invalid byte is not).
func printableAt(s string, i int, r rune) bool {
	if r == utf8.RuneError {
		if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
			return false
		}
	}
	return unicode.IsPrint(r)
}

// QuotedNames lists the names a certificate carries for a message: dNSName
// SANs quoted, IP SANs as addresses, then the CN as CN="...".
func QuotedNames(cert *x509.Certificate) string {
	var names []string
	for _, n := range cert.DNSNames {
		names = append(names, Quote(n))
	}
	for _, ip := range cert.IPAddresses {
		names = append(names, ip.String())
	}
	if cn, ok := firstCommonName(cert); ok && cn != "" {
		names = append(names, "CN="+Quote(cn))
	}
	return strings.Join(names, ", ")
}

// QuoteAll quotes each of names and joins them with ", ".
func QuoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = Quote(n)
	}
	return strings.Join(q, ", ")
}
