package chain

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// TestReasonWords: each reason has its own word, as in metrics and logs,
// refusals first.
func TestReasonWords(t *testing.T) {
	want := []struct {
		r       Reason
		word    string
		refusal bool
	}{
		{ReasonUpstreamUnreachable, "upstream_unreachable", true},
		{ReasonUpstreamRefusedTLS, "upstream_refused_tls", true},
		{ReasonUpstreamInjection, "upstream_injection", true},
		{ReasonUpstreamTLS, "upstream_tls", true},
		{ReasonClientCertificate, "client_certificate", true},
		{ReasonUntrusted, "untrusted", true},
		{ReasonVerification, "verification", true},
		{ReasonUpstreamTLSAlert, "upstream_tls_alert", true},
		{ReasonUpstreamClosed, "upstream_closed", true},
		{ReasonUpstreamProtocol, "upstream_protocol", true},
		{ReasonUnsupportedAuth, "unsupported_auth", true},
		{ReasonLogin, "relay_login", true},
		{ReasonStoredPassword, "stored_password", true},
		{ReasonChannelBinding, "channel_binding", true},
		{ReasonClientProtocol, "client_protocol", true},
		{ReasonUnsupportedProtocol, "unsupported_protocol", true},
		{ReasonClientTLSRequired, "client_tls_required", true},
		{ReasonLimit, "limit", true},
		{ReasonStartupTimeout, "startup_timeout", true},
		{ReasonUpstreamRole, "upstream_role", true},
		{ReasonIdentityChanged, "identity_changed", true},
		{ReasonShutdown, "shutdown", false},
	}
	all := Reasons()
	if len(all) != len(want) {
		t.Fatalf("Reasons() has %d reasons, the test knows %d: %v", len(all), len(want), all)
	}
	word := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	seen := map[string]bool{}
	for i, w := range want {
		if all[i] != w.r {
			t.Errorf("Reasons()[%d] = %v, want %v", i, all[i], w.r)
		}
		if got := w.r.String(); got != w.word || !word.MatchString(got) || seen[got] {
			t.Errorf("Reason %d is %q, want %q (and a word of its own)", uint8(w.r), got, w.word)
		}
		seen[w.word] = true
		if w.r.Refusal() != w.refusal {
			t.Errorf("%v.Refusal() = %v, want %v", w.r, w.r.Refusal(), w.refusal)
		}
	}
	if ReasonNone.String() != "none" || ReasonNone.Refusal() {
		t.Errorf("ReasonNone is %q, refusal %v", ReasonNone, ReasonNone.Refusal())
	}
	if got := Reason(200).String(); got != "Reason(200)" || Reason(200).Refusal() {
		t.Errorf("Reason(200) is %q, refusal %v", got, Reason(200).Refusal())
	}
	// A reason logged as it is reads as its word (slog's JSON handler).
	b, err := json.Marshal(map[string]any{"reason": ReasonLimit})
	if err != nil || string(b) != `{"reason":"limit"}` {
		t.Errorf("JSON of a reason: %s %v", b, err)
	}
}

// TestExplain: each of the package's failures has one reason and one piece
// of advice, whoever asks (the proxy, check, chain fetch).
func TestExplain(t *testing.T) {
	const addr = "db.example.com:5432"
	repin := "pgverifyproxy chain fetch --upstream " + addr + " --pin-dir /pins --repin"
	pinned := HintContext{Trust: "the pinned anchor in /pins/db", Repin: repin}
	verifyErr := &VerifyError{Kind: KindHostname, Err: errors.New("certificate is not valid for host name")}
	changedErr := &VerifyError{Kind: KindIdentityChanged, Err: errors.New("THE UPSTREAM'S IDENTITY CHANGED")}
	trustErr := &TrustError{Kind: KindSelfSigned, Reason: "self-signed", Hint: "retry later, or keep trying with --wait 45m"}
	tests := []struct {
		name   string
		err    error
		hc     HintContext
		reason Reason
		hint   string // the hint starts with it
	}{
		{"no error", nil, pinned, ReasonNone, ""},
		{"connect", &DialError{Addr: addr, Step: StepConnect, Err: errors.New("connection refused")}, pinned,
			ReasonUpstreamUnreachable, "check the upstream host and port, and that the server is up"},
		{"server answered N", &DialError{Addr: addr, Step: StepSSLRequest, Refused: true, Err: errors.New("N")}, pinned,
			ReasonUpstreamRefusedTLS, "pgverifyproxy only talks to the upstream over verified TLS"},
		{"direct TLS refused, with its own hint", &DialError{Addr: addr, Step: StepHandshake, Refused: true, Hint: directHint, Err: errors.New("x")}, pinned,
			ReasonUpstreamRefusedTLS, directHint},
		{"plaintext after S", &DialError{Addr: addr, Step: StepHandshake, Injected: true, Err: errors.New("x")}, pinned,
			ReasonUpstreamInjection, "nothing was sent to the server; this is what a man-in-the-middle does"},
		{"old TLS", &DialError{Addr: addr, Step: StepHandshake, Err: errors.New("x")}, pinned,
			ReasonUpstreamTLS, "the server must offer TLS 1.2 or later"},
		{"client certificate refused in the handshake", &DialError{Addr: addr, Step: StepHandshake, Alert: "bad certificate", Err: errors.New("x")}, pinned,
			ReasonClientCertificate, ClientCertHint},
		{"client certificate refused after the handshake", AlertAfterHandshake(addr, errors.New("remote error: tls: certificate required")), pinned,
			ReasonClientCertificate, ClientCertHint},
		{"another alert after the handshake", AlertAfterHandshake(addr, errors.New("remote error: tls: internal error")), pinned,
			ReasonUpstreamTLSAlert, "see the server's log for why it ended the session"},
		{"no pin and may not pin", &DialError{Addr: addr, Step: StepTrust, Err: fmt.Errorf("deciding: %w", trustErr)}, pinned,
			ReasonUntrusted, trustErr.Hint},
		{"pin unreadable", &DialError{Addr: addr, Step: StepTrust, Err: errors.New("pin file is damaged")}, pinned,
			ReasonUntrusted, "the proxy relays nothing to an upstream it cannot trust; fix what the message says, or pin explicitly with: pgverifyproxy chain fetch --upstream " + addr + " --pin-dir /pins"},
		{"pin unreadable, no repin command", &DialError{Addr: addr, Step: StepTrust, Err: errors.New("pin file is damaged")}, HintContext{},
			ReasonUntrusted, "the proxy relays nothing to an upstream it cannot trust; fix what the message says, or pin explicitly with: pgverifyproxy chain fetch --upstream " + addr},
		{"verify-full", &DialError{Addr: addr, Step: StepVerify, Err: verifyErr}, pinned,
			ReasonVerification, VerifyHint(verifyErr, pinned)},
		{"a trust decision on its own (chain fetch, check)", trustErr, pinned, ReasonUntrusted, trustErr.Hint},
		{"a verification on its own", fmt.Errorf("checking: %w", verifyErr), pinned, ReasonVerification, VerifyHint(verifyErr, pinned)},
		{"identity changed", &DialError{Addr: addr, Step: StepVerify, Err: changedErr}, pinned,
			ReasonIdentityChanged, VerifyHint(changedErr, pinned)},
		{"anything else", errors.New("boom"), pinned, ReasonUpstreamUnreachable, "check the upstream address and that the server is up"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, hint := Explain(tc.err, tc.hc)
			if r != tc.reason || !strings.HasPrefix(hint, tc.hint) || (tc.err != nil && hint == "") {
				t.Fatalf("Explain = %v, %q; want %v, a hint starting %q", r, hint, tc.reason, tc.hint)
			}
			if tc.err != nil && !r.Refusal() {
				t.Fatalf("Explain gave %v, which is no refusal", r)
			}
		})
	}
}
