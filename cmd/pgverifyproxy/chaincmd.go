package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

func newChainCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "chain",
		Short: "Fetch, complete, pin and show the upstream's certificate chain",
	}
	c.AddCommand(newChainFetchCmd(), newChainShowCmd())
	return c
}

func newChainFetchCmd() *cobra.Command {
	var configFile, out, route string
	var repin bool
	var wait, retryInterval time.Duration
	cmd := &cobra.Command{
		Use:   "fetch",
		Short: "Fetch the upstream's chain, complete it through AIA, decide trust and pin it",
		Long: `Does what the manual procedure does (openssl s_client -starttls postgres
-showcerts, completing the chain, saving root.crt), safely:

  1. a STARTTLS handshake that captures the presented certificates and sends nothing else;
  2. completion through the certificates' AIA caIssuers URLs (http only, bounded);
  3. trust: the completed chain must lead to a root of the system trust store and
     carry the host name (or, with --trust tofu, what the server presents is pinned
     as it is; with --ca-file, only those roots count);
  4. the root is pinned in --pin-dir (0600, atomic), and --out writes it as a libpq
     root.crt: psql "sslmode=verify-full sslrootcert=root.crt host=..." works with it.

With a pin already there, fetch checks the upstream against it; --repin replaces it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tc, err := loadTrustConfig(cmd.Flags(), configFile, route)
			if err != nil {
				return usageError{err}
			}
			return chainFetch(cmd.Context(), safeOut(cmd.OutOrStdout()), tc, out, repin, wait, retryInterval)
		},
	}
	addFlags(cmd.Flags(), trustOptions)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file (its upstream settings are used)")
	cmd.Flags().StringVar(&route, "route", "", "with --config: use the upstream settings of this route")
	cmd.Flags().StringVar(&out, "out", "", "also write the pinned anchor(s) as a PEM file for libpq's sslrootcert")
	cmd.Flags().BoolVar(&repin, "repin", false, "replace the existing pin (after a change you have confirmed with the provider)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "keep retrying this long until the chain can be trusted (e.g. a new service's self-signed certificate being replaced)")
	cmd.Flags().DurationVar(&retryInterval, "retry-interval", 10*time.Second, "time between attempts with --wait")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return cmd
}

func chainFetch(ctx context.Context, w io.Writer, tc trustConfig, out string, repin bool, wait, waitRetryInterval time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	rt, err := buildTrust(tc, nil, nil)
	if err != nil {
		return usageError{err}
	}
	if rt.Live != nil {
		return usageError{errors.New("trust: live pins nothing (every connection is verified against the system trust store), so there is nothing to fetch: `pgverifyproxy check` shows what a connection verifies; use --trust system or tofu to pin")}
	}
	// A --ca-file route is pinned too: in its pin directory, and the
	// system trust store names a public root a changed chain leads to.
	store, err := rt.PinStore()
	if err != nil {
		return usageError{err}
	}
	if rt.System == nil {
		if rt.System, err = chain.SystemRoots(); err != nil {
			return err
		}
	}
	d := rt.Dialer
	existing, err := store.Load(d.Host, d.Port, d.ServerName)
	if err != nil && !errors.Is(err, chain.ErrNoPin) {
		return err // a damaged pin is reported, never silently replaced
	}

	if existing != nil && !repin {
		fmt.Fprintf(w, "Checking %s (certificate name %s) against its pin...\n", d.Addr(), d.VerifyName())
		path := store.Path(d.Host, d.Port, d.ServerName)
		in, err := chain.Inspect(ctx, rt.ReadOnly(existing, path), chain.InspectOptions{Capture: true})
		if in == nil {
			return err
		}
		fmt.Fprintf(w, "Handshake: %s\n", in.Handshake)
		printCerts(w, "presented by the server", in.Handshake.Presented, existing.Fingerprints())
		var de *chain.DialError
		if in.Captured && errors.As(err, &de) {
			return fmt.Errorf("%s\nthe pin in %s was kept; if the provider confirms the change: %s", escapeControls(de.Err.Error()), path, rt.Repin)
		}
		// An alert after the handshake is about the client certificate:
		// the chain matched.
		fmt.Fprintf(w, "The upstream still matches its pin %s (anchor SPKI SHA-256 %s, first seen %s).\n", path, strings.Join(existing.Fingerprints(), ", "), existing.FirstSeen.UTC().Format(time.RFC3339))
		return writeOut(w, out, existing)
	}
	deadline := time.Now().Add(wait)
	for attempt := 1; ; attempt++ {
		fmt.Fprintf(w, "Fetching the chain of %s (certificate name %s)...\n", d.Addr(), d.VerifyName())
		// d.Roots: the --ca-file roots, the only acceptable anchors then.
		f, extra, dec, err := chain.FetchAndDecide(ctx, d, rt.AIA, rt.Policy, rt.System, d.Roots)
		if f != nil {
			fmt.Fprintf(w, "Handshake: %s\n", f)
			printCerts(w, "presented by the server", f.Presented, nil)
			if len(extra) > 0 {
				printCerts(w, "fetched through AIA", extra, nil)
			}
		}
		if err == nil {
			return savePin(w, store, existing, dec, d, out)
		}
		var te *chain.TrustError
		retry := wait > 0 && time.Now().Add(waitRetryInterval).Before(deadline)
		if !retry {
			if errors.As(err, &te) {
				_, hint := chain.Explain(te, rt.HintContext())
				return fmt.Errorf("not pinned: %s\nwhat to do: %s", escapeControls(err.Error()), hint)
			}
			return fmt.Errorf("not pinned: %w", escapedError{err})
		}
		fmt.Fprintf(w, "Attempt %d: not trusted yet: %s\nRetrying in %s (waiting until %s)...\n", attempt, escapeControls(err.Error()), waitRetryInterval, deadline.Format("15:04:05"))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(waitRetryInterval):
		}
	}
}

func savePin(w io.Writer, store *chain.PinStore, existing *chain.Pin, dec *chain.Decision, d *chain.Dialer, out string) error {
	now := time.Now()
	p := chain.PinFromDecision(d, dec, now)
	if existing != nil && existing.Fingerprints()[0] == p.Fingerprints()[0] {
		p.FirstSeen = existing.FirstSeen
	}
	save := store.Save
	if existing == nil {
		// A first pin never replaces one another process wrote meanwhile.
		save = store.SaveNew
	}
	path, err := save(p)
	if errors.Is(err, chain.ErrPinExists) {
		return fmt.Errorf("%w: another process pinned %s meanwhile; run this command again to check the upstream against that pin", err, d.Addr())
	}
	if err != nil {
		return err
	}
	verb := "Pinned"
	if existing != nil {
		verb = fmt.Sprintf("Re-pinned (was SPKI SHA-256 %s)", strings.Join(existing.Fingerprints(), ", "))
	}
	fmt.Fprintf(w, "Trust: %s (policy %s).\n", describeDecision(dec), dec.Policy)
	fmt.Fprintf(w, "%s: %s\n  anchor SPKI SHA-256: %s\n  pin file: %s\n", verb, chain.Quote(dec.Anchor.Subject.String()), chain.SPKIHash(dec.Anchor), path)
	for _, a := range dec.Anchors[1:] {
		fmt.Fprintf(w, "Also pinned: %s\n  anchor SPKI SHA-256: %s\n  (the chain reaches it too, through a cross-signed CA: a switch between the anchors is not a change of identity)\n", chain.Quote(a.Subject.String()), chain.SPKIHash(a))
	}
	if dec.Policy == chain.PolicyTOFU {
		fmt.Fprintf(w, "Trust on first use: check this fingerprint with the provider: %s\n", chain.SPKIHash(dec.Anchor))
	}
	return writeOut(w, out, p)
}

func describeDecision(dec *chain.Decision) string {
	switch dec.Policy {
	case chain.PolicySystem:
		return fmt.Sprintf("the chain leads to %s in the system trust store and carries the host name", chain.Quote(dec.Anchor.Subject.String()))
	case chain.PolicyCAFile:
		return fmt.Sprintf("the chain leads to %s from --ca-file and carries the host name", chain.Quote(dec.Anchor.Subject.String()))
	}
	return fmt.Sprintf("trusted on first use: %s, host name checked", chain.Quote(dec.Anchor.Subject.String()))
}

// writeOut writes the pin's anchors and intermediates as the PEM bundle
// libpq takes as sslrootcert (what the manual procedure saves as root.crt:
// libpq does not fetch missing intermediates itself).
func writeOut(w io.Writer, out string, p *chain.Pin) error {
	if out == "" {
		return nil
	}
	var b bytes.Buffer
	for _, a := range append(append([]*x509.Certificate{}, p.Anchors...), p.Intermediates...) {
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: a.Raw}); err != nil {
			return err
		}
	}
	if err := chain.WriteFileAtomic(out, b.Bytes()); err != nil {
		return err
	}
	fmt.Fprintf(w, "Wrote %s: use it as sslrootcert with sslmode=verify-full.\n", out)
	return nil
}

func newChainShowCmd() *cobra.Command {
	var configFile, route string
	cmd := &cobra.Command{
		Use:   "show [--upstream X | FILE]",
		Short: "Print each certificate of the upstream's chain, or of a PEM/pin file, and which one is pinned",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := safeOut(cmd.OutOrStdout())
			if len(args) == 1 {
				return showFile(w, args[0])
			}
			tc, err := loadTrustConfig(cmd.Flags(), configFile, route)
			if err != nil {
				return usageError{err}
			}
			return showUpstream(cmd.Context(), w, tc)
		},
	}
	addFlags(cmd.Flags(), trustOptions)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file (its upstream settings are used)")
	cmd.Flags().StringVar(&route, "route", "", "with --config: use the upstream settings of this route")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return cmd
}

func showFile(w io.Writer, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if bytes.Contains(data, []byte("# pgverifyproxy-meta: ")) {
		p, err := chain.ParsePin(data)
		if err != nil {
			return fmt.Errorf("pin file %s is damaged: %w", path, err)
		}
		fmt.Fprintf(w, "Pin for %s:%d (certificate name %s), policy %s, first seen %s\n", chain.Printable(p.Host), p.Port, chain.Printable(p.VerifyName()), chain.Printable(p.Policy), p.FirstSeen.UTC().Format(time.RFC3339))
		printCerts(w, "pinned anchor(s)", p.Anchors, p.Fingerprints())
		if len(p.Intermediates) > 0 {
			printCerts(w, "intermediates kept as path hints (not trusted by themselves)", p.Intermediates, nil)
		}
		return nil
	}
	certs, err := chain.ParseCertificates(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	printCerts(w, path, certs, nil)
	return nil
}

func showUpstream(ctx context.Context, w io.Writer, tc trustConfig) error {
	if ctx == nil {
		ctx = context.Background()
	}
	rt, err := buildTrust(tc, nil, nil)
	if err != nil {
		return usageError{err}
	}
	d := rt.Dialer
	var pinned []string
	var pin *chain.Pin
	path := ""
	if rt.Store != nil {
		path = rt.Store.Path(d.Host, d.Port, d.ServerName)
		if p, err := rt.Store.Load(d.Host, d.Port, d.ServerName); err == nil {
			pin = p
			pinned = p.Fingerprints()
			fmt.Fprintf(w, "Pin: %s (policy %s, first seen %s)\n", path, chain.Printable(p.Policy), p.FirstSeen.UTC().Format(time.RFC3339))
		} else if errors.Is(err, chain.ErrNoPin) {
			fmt.Fprintf(w, "Pin: none yet in %s\n", rt.Store.Dir)
		} else {
			fmt.Fprintf(w, "Pin: %s\n", escapeControls(err.Error()))
		}
	}
	// The path verify-full builds, up to the anchor it ends at; the
	// presented chain is shown even when it fails.
	in, err := chain.Inspect(ctx, rt.ReadOnly(pin, path), chain.InspectOptions{Capture: true})
	if in == nil {
		return err
	}
	roots := rt.System
	if rt.CAFile != "" {
		roots = d.Roots
	}
	presented := in.Handshake.Presented
	extra, _ := rt.AIA.Complete(ctx, presented, roots)
	fmt.Fprintf(w, "Handshake with %s: %s\n", d.Addr(), in.Handshake)
	printCerts(w, "presented by the server", presented, pinned)
	if len(extra) > 0 {
		printCerts(w, "fetched through AIA", extra, pinned)
	}
	against := "the system trust store"
	switch {
	case pin != nil:
		against = "the pin"
	case rt.CAFile != "":
		against = "--ca-file"
	}
	var de *chain.DialError
	if in.Captured && errors.As(err, &de) {
		fmt.Fprintf(w, "verify-full against %s: FAILS: %s\n", against, escapeControls(de.Err.Error()))
		return nil
	}
	printCerts(w, "of the verified path against "+against+" (leaf to anchor; verify-full passes)", in.Path, pinned)
	return nil
}

// printCerts lists certificates the way a person checks them.
func printCerts(w io.Writer, title string, certs []*x509.Certificate, pinned []string) {
	fmt.Fprintf(w, "Certificates %s:\n", title)
	now := time.Now()
	for i, c := range certs {
		days := int(c.NotAfter.Sub(now).Hours() / 24)
		left := fmt.Sprintf("%d days left", days)
		if now.After(c.NotAfter) {
			left = "EXPIRED"
		} else if now.Before(c.NotBefore) {
			left = "NOT YET VALID"
		}
		mark := ""
		for _, p := range pinned {
			if p == chain.SPKIHash(c) {
				mark = "   <== pinned anchor"
			}
		}
		fmt.Fprintf(w, "  [%d] %s%s\n", i+1, chain.Quote(c.Subject.String()), mark)
		fmt.Fprintf(w, "      issuer:  %s\n", chain.Quote(c.Issuer.String()))
		fmt.Fprintf(w, "      valid:   %s to %s (%s)\n", c.NotBefore.UTC().Format("2006-01-02"), c.NotAfter.UTC().Format("2006-01-02"), left)
		if names := chain.QuotedNames(c); names != "" && !c.IsCA {
			fmt.Fprintf(w, "      names:   %s\n", names)
		}
		fmt.Fprintf(w, "      SPKI SHA-256: %s\n", chain.SPKIHash(c))
	}
}
