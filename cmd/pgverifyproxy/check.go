package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
)

// checkOptions are the settings of `check`: those of `chain show` and the
// expiry warning threshold.
var checkOptions = func() []option {
	opts := append([]option{}, trustOptions...)
	for _, o := range pickOptions("expiry_warning") {
		o.usage = "warn in the report when a certificate of the verified path expires within this time"
		opts = append(opts, o)
	}
	return opts
}()

// newCheckCmd is the `check` command: it dials every route's upstream the
// way the proxy does, verifies it and reports in plain words.
func newCheckCmd() *cobra.Command {
	var configFile, route string
	cmd := &cobra.Command{
		Use:   "check [--upstream X | --config F [--route NAME]]",
		Short: "Dial, verify and report each route's upstream (the first thing to run when something is wrong)",
		Long: `Connects to each upstream exactly as the proxy does (SSLRequest or direct TLS,
then verify-full against --ca-file or the pin) and reports, route by route:
the TLS version and cipher, the certificates presented, the trust anchor the
verified path ends at and where it comes from, the host-name match, the days
left before the certificates expire, and whether the server accepts the
client certificate. Every failure comes with what to do about it.

check sends no startup message, user name or password: only the SSLRequest
and the TLS handshake. It never writes a pin: for a route without one it says
what run would pin on first start, or why it would refuse.

With --config and no --route, every route of the file is checked. The exit
status is 0 when every route passes, 1 when one fails, 2 for a usage error.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.NoArgs(cmd, args); err != nil {
				return usageError{err}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			targets, warn, err := loadCheckTargets(cmd.Flags(), configFile, route)
			if err != nil {
				return usageError{err}
			}
			return runCheck(cmd.Context(), safeOut(cmd.OutOrStdout()), targets, warn)
		},
	}
	addFlags(cmd.Flags(), checkOptions)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML config file: check each of its routes (or its one upstream)")
	cmd.Flags().StringVar(&route, "route", "", "with --config: check only this route")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return cmd
}

// checkTarget is one upstream to check.
type checkTarget struct {
	// name is the route's name; named is false for the single upstream
	// given by flags, environment or a file without routes.
	name  string
	named bool
	tc    trustConfig
}

// loadCheckTargets reads the routes to check from flags, environment and
// the config file, as run reads them, and the expiry warning threshold.
func loadCheckTargets(fs *pflag.FlagSet, configFile, route string) ([]checkTarget, time.Duration, error) {
	rc, routes, err := loadRouteTrusts(fs, configFile, route)
	if err != nil {
		return nil, 0, err
	}
	var out []checkTarget
	for _, r := range routes {
		out = append(out, checkTarget{name: r.name, named: len(rc.Routes) > 0, tc: r.tc})
	}
	return out, rc.ExpiryWarning, nil
}

// runCheck checks each target in turn and writes one block per target. It
// returns an error when a target failed (exit 1), or a usageError when a
// route's own settings could not be used (exit 2).
func runCheck(ctx context.Context, w io.Writer, targets []checkTarget, warn time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var failed []string
	badSettings := false
	for i, t := range targets {
		rt, err := buildTrust(t.tc, nil, nil)
		if err != nil && !t.named {
			// The single upstream of the command line: a plain usage error.
			return usageError{err}
		}
		if i > 0 {
			fmt.Fprintln(w)
		}
		label := "route " + t.name
		if !t.named {
			label = "upstream " + rt.Addr()
		}
		fmt.Fprintf(w, "== %s ==\n", label)
		var fail *checkFailure
		warnings, firstPin := 0, false
		if err != nil {
			badSettings = true
			// The route's settings, not its upstream: this is the config
			// file's to fix, which chain knows nothing of.
			fail = &checkFailure{what: "the route's settings: " + err.Error(),
				hint: "fix this route's settings in the config file (run refuses to start with them too)"}
		} else {
			rep := &routeReport{w: w, rt: rt, tc: t.tc, warn: warn}
			fail = rep.check(ctx)
			warnings, firstPin = rep.warnings, rep.firstPin
		}
		if fail != nil {
			failed = append(failed, label)
			fmt.Fprintf(w, "FAILED: %s: %s\nwhat to do: %s\n", label, escapeControls(fail.what), fail.hint)
			continue
		}
		verdict := fmt.Sprintf("OK: %s: verify-full passes", label)
		if firstPin {
			verdict += " against the anchor run would pin on first start"
		}
		switch warnings {
		case 0:
		case 1:
			verdict += " (1 warning above)"
		default:
			verdict += fmt.Sprintf(" (%d warnings above)", warnings)
		}
		fmt.Fprintln(w, verdict)
	}
	if len(targets) > 1 {
		fmt.Fprintf(w, "\nChecked %d routes: %d passed, %d failed.\n", len(targets), len(targets)-len(failed), len(failed))
	}
	if len(failed) == 0 {
		return nil
	}
	err := fmt.Errorf("check: %s failed (see the report above)", strings.Join(failed, ", "))
	if badSettings {
		return usageError{err}
	}
	return err
}

// checkFailure is what failed for a route, in words, and what to do.
type checkFailure struct {
	what string
	hint string
}

// routeReport checks one upstream and writes what it finds: it renders
// what chain finds (the route's trust, chain.Inspect, chain.Explain).
type routeReport struct {
	w    io.Writer
	rt   *chain.RouteTrust
	tc   trustConfig
	warn time.Duration
	// warnings counts the WARNING lines written.
	warnings int
	// hints is what the advice names; source says where the anchor of a
	// verified path comes from.
	hints  chain.HintContext
	source string
	// pin is the pin in use (on disk, or the one run would write), kept
	// in pinFile.
	pin     *chain.Pin
	pinFile string
	// printed is set once the presented chain has been shown.
	printed bool
	// firstPin is set when there is no pin yet and the check used the one
	// run would write.
	firstPin bool
}

// line writes one "label: value" line.
func (r *routeReport) line(label, format string, a ...any) {
	if label != "" {
		label += ":"
	}
	fmt.Fprintf(r.w, "%-18s%s\n", label, fmt.Sprintf(format, a...))
}

// warnf writes a WARNING line.
func (r *routeReport) warnf(format string, a ...any) {
	r.warnings++
	fmt.Fprintf(r.w, "WARNING: %s\n", fmt.Sprintf(format, a...))
}

// failure is what failed, in words, and what chain says to do about err.
func (r *routeReport) failure(what string, err error) *checkFailure {
	_, hint := chain.Explain(err, r.hints)
	return &checkFailure{what: what, hint: hint}
}

// check runs the whole check of one upstream; nil means it passes.
func (r *routeReport) check(ctx context.Context) *checkFailure {
	rt := r.rt
	d := rt.Dialer
	r.header(d)
	r.hints = rt.HintContext()
	switch {
	case rt.CAFile != "":
		var subjects []string
		for _, a := range rt.CAAnchors {
			subjects = append(subjects, chain.Quote(a.Subject.String()))
		}
		r.line("Trust", "the roots in --ca-file %s (%d certificate(s)): %s", rt.CAFile, len(rt.CAAnchors), strings.Join(subjects, ", "))
		r.source = "from --ca-file " + rt.CAFile
	case rt.Live != nil:
		r.line("Trust", "live: the system trust store at every connection, like libpq's sslrootcert=system (no pin: a change of CA is logged and counted, never refused)")
		r.source = "from the system trust store (trust: live)"
	default:
		if fail := r.pinTrust(ctx); fail != nil {
			return fail
		}
	}

	in, err := chain.Inspect(ctx, rt.ReadOnly(r.pin, r.pinFile), chain.InspectOptions{Capture: !r.printed})
	if in == nil || in.Captured {
		if in != nil {
			// Show what the server presented, so the failure can be
			// checked by eye.
			r.line("Connect + TLS", "%s (capture only, to show the chain)", fetchedWords(in.Handshake))
			printCerts(r.w, "presented by the server", in.Handshake.Presented, r.pinned())
			r.hostname(in.Handshake.Presented[0], d.VerifyName())
		}
		return r.failure(describeCheckError(err), err)
	}
	h := in.Handshake
	tlsLine := fmt.Sprintf("%s, cipher %s", tls.VersionName(h.TLSVersion), tls.CipherSuiteName(h.CipherSuite))
	if in.ALPN != "" {
		tlsLine += ", ALPN " + in.ALPN
	}
	r.line("Connect + TLS", "%s, %s (TCP connect, %s and verification)", tlsLine, h.RTT.Round(time.Millisecond), handshakeWords(d.Negotiation))
	if !r.printed {
		printCerts(r.w, "presented by the server", h.Presented, r.pinned())
	}
	if len(in.ThroughAIA) > 0 {
		printCerts(r.w, "fetched through AIA (used to build the path, never trusted by themselves)", in.ThroughAIA, r.pinned())
	}
	path := in.Path
	if len(path) > 0 {
		anchor := path[len(path)-1]
		var subjects []string
		for _, c := range path {
			subjects = append(subjects, chain.Quote(c.Subject.String()))
		}
		r.line("Verified path", "%s", strings.Join(subjects, "  ->  "))
		r.line("Anchor", "%s (SPKI SHA-256 %s), %s", chain.Quote(anchor.Subject.String()), chain.SPKIHash(anchor), r.source)
	}
	leaf := h.Presented[0]
	if !r.printed {
		r.hostname(leaf, d.VerifyName())
	}
	r.expiry(leaf, path)
	if err != nil {
		// The server ended the session right after the handshake: a
		// refused client certificate shows only then.
		r.clientCert(d, false)
		return r.failure(describeCheckError(err), err)
	}
	r.clientCert(d, true)
	return nil
}

// header writes what is checked: address, certificate name, negotiation.
func (r *routeReport) header(d *chain.Dialer) {
	r.line("Upstream", "%s", d.Addr())
	how := "server_name"
	if d.ServerName == "" {
		how = "the upstream host"
	}
	r.line("Certificate name", "%s (%s)", d.VerifyName(), how)
	if d.Negotiation == chain.NegotiateDirect {
		r.line("Negotiation", "direct: TLS at once, the server must select ALPN %q (PostgreSQL 17+)", chain.ALPNProtocol)
	} else {
		r.line("Negotiation", "postgres: SSLRequest first, then TLS (any PostgreSQL version)")
	}
}

// fetchedWords summarises a capture-only handshake.
func fetchedWords(f *chain.Fetched) string {
	return fmt.Sprintf("%s, cipher %s, %d certificate(s) presented, %s", tls.VersionName(f.TLSVersion), tls.CipherSuiteName(f.CipherSuite),
		len(f.Presented), f.RTT.Round(time.Millisecond))
}

// handshakeWords names the steps before verification.
func handshakeWords(n chain.Negotiation) string {
	if n == chain.NegotiateDirect {
		return "direct TLS handshake"
	}
	return "SSLRequest, TLS handshake"
}

// pinTrust reports the pin of a route without --ca-file, to be checked
// against. Without a pin it decides, as run would on first start, what
// would be pinned, and writes nothing.
func (r *routeReport) pinTrust(ctx context.Context) *checkFailure {
	rt := r.rt
	d := rt.Dialer
	p, path, err := rt.LoadPin()
	switch {
	case err == nil:
		r.line("Trust", "the pin file %s", path)
		r.line("", "policy %s, first seen %s, anchor SPKI SHA-256 %s", chain.Printable(p.Policy), p.FirstSeen.UTC().Format(time.RFC3339), strings.Join(p.Fingerprints(), ", "))
		if len(p.Anchors) > 1 {
			var subjects []string
			for _, a := range p.Anchors {
				subjects = append(subjects, chain.Quote(a.Subject.String()))
			}
			r.line("", "%d anchors (cross-signed CAs; a switch between them is not a change of identity): %s", len(p.Anchors), strings.Join(subjects, ", "))
		}
		if p.Policy != string(rt.Policy) {
			r.line("", "(made under trust policy %s; this route's %s applies only to a first pin)", chain.Printable(p.Policy), rt.Policy)
		}
		r.source = fmt.Sprintf("pinned in %s (policy %s, first seen %s)", path, chain.Printable(p.Policy), p.FirstSeen.UTC().Format("2006-01-02"))
	case errors.Is(err, chain.ErrNoPin):
		r.line("Trust", "no pin yet: run would fetch the chain and pin it in %s on first start, under trust policy %s (check writes nothing)", path, rt.Policy)
		f, extra, dec, err := chain.FetchAndDecide(ctx, d, rt.AIA, rt.Policy, rt.System, nil)
		if f != nil {
			r.line("Fetched chain", "%s (capture only: nothing sent but the handshake)", fetchedWords(f))
			printCerts(r.w, "presented by the server", f.Presented, nil)
			if len(extra) > 0 {
				printCerts(r.w, "fetched through AIA", extra, nil)
			}
			r.hostname(f.Presented[0], d.VerifyName())
			r.printed = true
		}
		if err != nil {
			what := describeCheckError(err)
			var te *chain.TrustError
			if errors.As(err, &te) {
				what = "no pin yet, and run would refuse to pin on first start: " + err.Error()
			}
			r.hints.Trust = "the system trust store"
			return r.failure(what, err)
		}
		r.line("First start", "run would pin %s (SPKI SHA-256 %s, policy %s): %s", chain.Quote(dec.Anchor.Subject.String()), chain.SPKIHash(dec.Anchor), dec.Policy, describeDecision(dec))
		for _, a := range dec.Anchors[1:] {
			r.line("", "and %s (SPKI SHA-256 %s), which the chain also reaches (a cross-signed CA): a switch between them is not a change of identity", chain.Quote(a.Subject.String()), chain.SPKIHash(a))
		}
		if dec.Policy == chain.PolicyTOFU {
			r.warnf("trust on first use: check this fingerprint with the provider before the proxy pins it: %s", chain.SPKIHash(dec.Anchor))
		}
		p = chain.PinFromDecision(d, dec, time.Now())
		r.firstPin = true
		r.hints.Trust = "the anchor run would pin"
		r.source = fmt.Sprintf("the anchor run would pin on first start (policy %s)", dec.Policy)
	default:
		return r.failure("reading the pin: "+errors.Unwrap(err).Error(), err)
	}
	r.pin, r.pinFile = p, path
	return nil
}

// pinned lists the pinned anchors' fingerprints, to mark them in lists.
func (r *routeReport) pinned() []string {
	if r.pin == nil {
		return nil
	}
	return r.pin.Fingerprints()
}

// hostname reports how the leaf matches the name checked.
func (r *routeReport) hostname(leaf *x509.Certificate, name string) {
	match, err := chain.VerifyHostname(leaf, name)
	switch {
	case err != nil:
		r.line("Host name", "MISMATCH: %s", escapeControls(err.Error()))
	case match == chain.MatchCommonName:
		r.line("Host name", "the certificate carries %q only as its common name (CN)", name)
		r.warnf("the certificate has no subjectAltName of the host's type and matched by its CN only; libpq accepts this too, but ask the server's operator for a certificate with a SAN")
	default:
		r.line("Host name", "the certificate carries %q (its names: %s)", name, chain.QuotedNames(leaf))
	}
}

// expiry reports the days left of the leaf and of the anchor, and warns
// about any certificate of the path below the expiry warning threshold.
func (r *routeReport) expiry(leaf *x509.Certificate, path []*x509.Certificate) {
	now := time.Now()
	r.line("Expiry", "server certificate: %s", daysLeft(leaf, now))
	if len(path) > 1 {
		r.line("", "anchor: %s", daysLeft(path[len(path)-1], now))
	}
	certs := path
	if len(certs) == 0 {
		certs = []*x509.Certificate{leaf}
	}
	for i, c := range certs {
		if c.NotAfter.Sub(now) >= r.warn {
			continue
		}
		what := "a CA certificate of the path"
		switch {
		case i == 0:
			what = "the server certificate"
		case i == len(certs)-1:
			what = "the anchor"
		}
		r.warnf("%s %s expires within the expiry warning (%s): %s", what, chain.Quote(c.Subject.String()), durationWords(r.warn), daysLeft(c, now))
	}
}

// clientCert reports the client certificate presented, if any.
func (r *routeReport) clientCert(d *chain.Dialer, accepted bool) {
	if d.ClientCert == nil || d.ClientCert.Leaf == nil {
		r.line("Client cert", "none configured (upstream_cert)")
		return
	}
	c := d.ClientCert.Leaf
	verdict := "the server did not reject it"
	if !accepted {
		verdict = "the server REJECTED the session"
	}
	r.line("Client cert", "presented %s (issuer %s, %s); %s", chain.Quote(c.Subject.String()), chain.Quote(c.Issuer.String()), daysLeft(c, time.Now()), verdict)
	if time.Until(c.NotAfter) < r.warn {
		r.warnf("the client certificate %s expires within the expiry warning (%s)", r.tc.UpstreamCert, durationWords(r.warn))
	}
}

// daysLeft says how long a certificate stays valid.
func daysLeft(c *x509.Certificate, now time.Time) string {
	until := c.NotAfter.UTC().Format("2006-01-02 15:04 UTC")
	switch {
	case now.After(c.NotAfter):
		return "EXPIRED on " + until
	case now.Before(c.NotBefore):
		return "NOT YET VALID (from " + c.NotBefore.UTC().Format("2006-01-02 15:04 UTC") + ")"
	}
	return fmt.Sprintf("%d days left (until %s)", int(c.NotAfter.Sub(now).Hours()/24), until)
}

// durationWords writes whole days as days.
func durationWords(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}

// describeCheckError names the step that failed and why.
func describeCheckError(err error) string {
	var de *chain.DialError
	if errors.As(err, &de) {
		return strings.TrimPrefix(err.Error(), "upstream "+de.Addr+": ")
	}
	var te *chain.TrustError
	if errors.As(err, &te) {
		return "deciding what to pin: " + err.Error()
	}
	var ve *chain.VerifyError
	if errors.As(err, &ve) {
		return string(chain.StepVerify) + ": " + err.Error()
	}
	return err.Error()
}
