package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// TestRepinCommandIsChainFetch: the repin command chain names in messages
// and hints is one `chain fetch` takes: its flags are chain fetch's, with
// the route's values.
func TestRepinCommandIsChainFetch(t *testing.T) {
	tc := trustConfig{Upstream: "postgres://app@db.example.com:6543/x", ServerName: "name.example.com", PinDir: "/var/lib/pins", Negotiation: "direct"}
	spec, err := parseUpstream(tc.Upstream)
	if err != nil {
		t.Fatal(err)
	}
	repin := repinCommand(spec, tc, chain.NegotiateDirect)
	args, ok := strings.CutPrefix(repin, "pgverifyproxy chain fetch ")
	if !ok {
		t.Fatalf("repin command %q is not chain fetch", repin)
	}
	cmd := newChainFetchCmd()
	if err := cmd.ParseFlags(strings.Fields(args)); err != nil {
		t.Fatalf("chain fetch does not take %q: %v", repin, err)
	}
	for flag, want := range map[string]string{"upstream": "db.example.com:6543", "server-name": tc.ServerName,
		"pin-dir": tc.PinDir, "negotiation": "direct", "repin": "true"} {
		if got := cmd.Flags().Lookup(flag).Value.String(); got != want {
			t.Errorf("--%s is %q in %q, want %q", flag, got, repin, want)
		}
	}
}

// TestCommandsAreAShellAroundChain: the commands reach and inspect
// upstreams only through chain (Inspect, FetchAndDecide, RouteTrust):
// no TLS dial and no verifier of their own.
func TestCommandsAreAShellAroundChain(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, banned := range []string{"tls.Client(", "tls.Dial(", ".Dial(ctx", "chain.Fetch(", "chain.Verifier{", "&chain.Verifier", "chain.Dialer{", "ClientCertHint", "VerifyHint("} {
			if strings.Contains(string(src), banned) {
				t.Errorf("%s has %q: reaching, verifying and advising about an upstream belong to chain", f, banned)
			}
		}
	}
}
