package chain

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestVerifyHint(t *testing.T) {
	const repin = "pgverifyproxy chain fetch --upstream db:5432 --repin"
	const caFile = "the roots in --ca-file /etc/root.crt"
	pinned := HintContext{Trust: "the pinned anchor in /pins/db", Repin: repin}
	ca := HintContext{Trust: caFile}
	wrapped := func(k Kind) error {
		return fmt.Errorf("upstream: verifying: %w", &VerifyError{Kind: k, Err: errors.New("x")})
	}
	for _, tc := range []struct {
		name    string
		err     error
		hc      HintContext
		want    []string
		notWant string
	}{
		{"identity changed names the re-pin command", wrapped(KindIdentityChanged), pinned, []string{"re-pin with: " + repin, "until then every connection is refused"}, ""},
		{"identity changed without a command still says how", wrapped(KindIdentityChanged), HintContext{}, []string{"chain fetch --upstream HOST:PORT --repin"}, "with:  "},
		{"host name", wrapped(KindHostname), ca, []string{"connect with a name the certificate carries", "--server-name"}, ""},
		{"expired", wrapped(KindExpired), ca, []string{"has expired", "clock"}, ""},
		{"not yet valid", wrapped(KindNotYetValid), ca, []string{"not valid yet", "clock"}, ""},
		{"self-signed", wrapped(KindSelfSigned), ca, []string{"self-signed certificate that is not among " + caFile, "out of band"}, ""},
		{"unknown authority, CA file: update the file", wrapped(KindUnknownAuthority), ca, []string{"does not lead to " + caFile, "put the new CA", "intercepting"}, "re-pin"},
		{"unknown authority, pinned: re-pin", wrapped(KindUnknownAuthority), pinned, []string{"re-pin with: " + repin, "intercepting"}, "--ca-file"},
		{"not a verification error", errors.New("boom"), HintContext{}, []string{"could not be verified against the configured trust anchors"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := VerifyHint(tc.err, tc.hc)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("hint lacks %q: %s", w, got)
				}
			}
			if tc.notWant != "" && strings.Contains(got, tc.notWant) {
				t.Errorf("hint has %q: %s", tc.notWant, got)
			}
		})
	}
}

// TestVerifyHintLiveTrust: a live-trust route has no pin and no CA file to
// update: its advice names what it can do instead.
func TestVerifyHintLiveTrust(t *testing.T) {
	err := &VerifyError{Kind: KindUnknownAuthority, Source: SourceSystem, Err: errors.New("x509: certificate signed by unknown authority")}
	hint := VerifyHint(err, HintContext{Trust: "the system trust store (trust: live)"})
	for _, want := range []string{"system trust store", "ca_file", "trust: tofu", "intercepting"} {
		if !strings.Contains(hint, want) {
			t.Errorf("hint %q lacks %q", hint, want)
		}
	}
	if strings.Contains(hint, "in that file") {
		t.Errorf("hint %q tells to update a file the route does not have", hint)
	}
}
