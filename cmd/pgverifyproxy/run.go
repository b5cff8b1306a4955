package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgverifyproxy/pgverifyproxy/admin"
	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/internal/rawsock"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

func newLogger(rc runConfig, level *slog.LevelVar) (*slog.Logger, error) {
	if err := setLevel(level, rc.LogLevel); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level}
	// Log values may hold certificate text (subjects, names) from servers
	// not verified yet: the text handler quotes them, the JSON handler
	// escapes only what JSON must, so both write through safeOut, which
	// escapes DEL, C1 and bidi controls as well.
	var w io.Writer = os.Stderr
	if rc.LogFile != "" {
		// A Windows service has no standard error; elsewhere too a file
		// may be wanted. Appended, never truncated, private to the user.
		f, err := os.OpenFile(rc.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("log file: %w", err)
		}
		w = f // open for the life of the process
	}
	out := safeOut(w)
	if rc.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	}
	return slog.New(slog.NewTextHandler(out, opts)), nil
}

func setLevel(level *slog.LevelVar, name string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(name)); err != nil {
		return fmt.Errorf("log level must be debug, info, warn or error, not %q", name)
	}
	level.Set(l)
	return nil
}

// keepAlive is the TCP keepalive of both legs: probes after d of silence,
// every d, three of them; d == 0 turns keepalive off.
func keepAlive(d time.Duration) *net.KeepAliveConfig {
	if d <= 0 {
		return &net.KeepAliveConfig{Enable: false}
	}
	return &net.KeepAliveConfig{Enable: true, Idle: d, Interval: d, Count: 3}
}

// builtRoute is a route ready for the proxy, with its upstream trust.
type builtRoute struct {
	route proxy.Route
	trust *chain.RouteTrust
	// hostTrusts are the trusts of a host list's hosts (trust is the
	// first's); nil for one host.
	hostTrusts []*chain.RouteTrust
	conf       routeConfig
}

// buildRoute turns one route's plain configuration into a proxy route and
// the upstream trust behind it. adm, when set, gets each verified upstream
// path (for the expiry gauges) and a live-trust route's changes of root.
func buildRoute(r routeConfig, rc runConfig, log *slog.Logger, adm *admin.Admin) (builtRoute, error) {
	log = log.With("route", r.Name)
	list, err := parseUpstreamList(r.Upstream)
	if err != nil {
		return builtRoute{}, err
	}
	adjust := func(c *chain.RouteConfig) {
		if ka := keepAlive(rc.TCPKeepalive); ka.Enable {
			c.Net = &net.Dialer{KeepAliveConfig: *ka}
		} else {
			c.Net = &net.Dialer{KeepAlive: -1} // off
		}
		if adm == nil {
			return
		}
		name := r.Name
		c.OnVerified = func(path []*x509.Certificate) {
			adm.SetExpiry(name, path[0].NotAfter, path[len(path)-1].NotAfter)
		}
		logged := c.OnRootChange
		c.OnRootChange = func(from, to *x509.Certificate) {
			if logged != nil {
				logged(from, to)
			}
			if from != nil {
				adm.RootChanged(name, describeRoot(from), describeRoot(to))
			}
		}
	}
	// A host list: each host is dialled and verified under its own name,
	// with the route's one trust configuration (and, with tofu, a pin
	// each); the first host's trust stands for the route in the start-up
	// check and the readiness probe.
	var hosts []proxy.UpstreamHost
	var hostTrusts []*chain.RouteTrust
	var rt *chain.RouteTrust
	if len(list.Hosts) > 1 {
		if r.ServerName != "" {
			return builtRoute{}, errors.New("server_name names one host, and the upstream lists several: each host is verified under its own name; remove server_name")
		}
		for _, h := range list.Hosts {
			hr := r
			hr.Upstream = h.addr()
			ht, err := buildTrust(rc.trustConfig(hr), log.With("host", hr.Upstream), adjust)
			if err != nil {
				return builtRoute{}, fmt.Errorf("host %s: %w", hr.Upstream, err)
			}
			hosts = append(hosts, proxy.UpstreamHost{Addr: hr.Upstream, Dial: ht.Dial})
			hostTrusts = append(hostTrusts, ht)
			if rt == nil {
				rt = ht
			}
		}
	} else if rt, err = buildTrust(rc.trustConfig(r), log, adjust); err != nil {
		return builtRoute{}, err
	}
	mode, _ := proxy.ParseClientTLSMode(r.ClientTLS)
	var serverTLS *tls.Config
	if mode != proxy.ClientTLSDisable {
		if r.ClientTLSCert != "" {
			serverTLS, err = proxy.LoadServerTLSConfig(r.ClientTLSCert, r.ClientTLSKey)
		} else {
			serverTLS, err = proxy.SelfSignedTLSConfig()
		}
		if err != nil {
			return builtRoute{}, err
		}
	}
	auth, _ := proxy.ParseAuthMode(r.Auth)
	stored, forget, err := storedPassword(passwordSource{File: r.PasswordFile, Env: r.PasswordEnv, Command: r.PasswordCommand,
		TTL: rc.PasswordCommandTTL, Timeout: rc.PasswordCommandTimeout}, log)
	if err != nil {
		return builtRoute{}, err
	}
	sockMode, err := unixSocketMode(r.UnixSocketPermissions)
	if err != nil {
		return builtRoute{}, err
	}
	upstreamAddr := rt.Addr()
	if len(hosts) > 1 {
		upstreamAddr = "" // proxy.Route names a host list itself
	}
	route := proxy.Route{
		Name:               r.Name,
		Listen:             r.Listen,
		UpstreamAddr:       upstreamAddr,
		Hosts:              hosts,
		TargetSessionAttrs: cmp.Or(list.TargetSessionAttrs, r.TargetSessionAttrs),
		LoadBalanceHosts:   cmp.Or(list.LoadBalanceHosts, r.LoadBalanceHosts),
		DNSRecheck:         rc.DNSRecheck,
		Trust:              rt.Describe,
		RepinCommand:       rt.HintContext().Repin,
		Dial:               rt.Dial,
		ClientTLS:          mode,
		TLSConfig:          serverTLS,
		ClientTLSGenerated: mode != proxy.ClientTLSDisable && r.ClientTLSCert == "",
		StartupTimeout:     rc.StartupTimeout,
		Auth:               auth,
		ChannelBinding:     r.ChannelBinding,
		StoredPassword:     stored,
		StoredRejected:     forget,
		AskPasswordFrom:    askPasswordFrom(r.AskPasswordFrom),
		UnixSocketMode:     sockMode,
		UnixSocketGroup:    r.UnixSocketGroup,
		MaxConnections:     r.MaxConnections,
		KeepAlive:          keepAlive(rc.TCPKeepalive),
		Prewarm:            r.Prewarm,
		PrewarmMaxAge:      rc.PrewarmMaxAge,
	}
	if rt.Pins != nil {
		// Pre-dialled connections verified under a pin since replaced or
		// removed are dropped (a --ca-file route's trust is fixed until a
		// reload builds new routes).
		route.TrustGeneration = rt.Pins.Generation
	}
	return builtRoute{route: route, trust: rt, hostTrusts: hostTrusts, conf: r}, nil
}

// loadRoutes reads and checks the whole configuration and builds every
// route (certificates, keys and pins are read here): what start-up and
// each SIGHUP do.
func loadRoutes(cmd *cobra.Command, configFile string, log *slog.Logger, adm *admin.Admin) (runConfig, []builtRoute, error) {
	rc, err := loadRunConfig(cmd.Flags(), configFile)
	if err != nil {
		return runConfig{}, nil, err
	}
	if err := rc.validate(); err != nil {
		return runConfig{}, nil, err
	}
	rcs, err := rc.routes()
	if err != nil {
		return runConfig{}, nil, err
	}
	var out []builtRoute
	for _, r := range rcs {
		b, err := buildRoute(r, rc, log, adm)
		if err != nil {
			if len(rcs) > 1 {
				err = fmt.Errorf("route %s: %w", r.Name, err)
			}
			return runConfig{}, nil, err
		}
		out = append(out, b)
	}
	return rc, out, nil
}

// runner is a running `pgverifyproxy run`.
type runner struct {
	cmd        *cobra.Command
	configFile string
	log        *slog.Logger
	level      *slog.LevelVar
	rc         runConfig
	srv        *proxy.Server
	adm        *admin.Admin
	// stopChecks ends the current routes' upstream checks (replaced on
	// reload).
	stopChecks context.CancelFunc
}

func runProxy(cmd *cobra.Command, configFile string) error {
	return runControlled(func(ctl *control) error { return serveProxy(cmd, configFile, ctl) })
}

// serveProxy runs the proxy until ctl asks it to stop (a signal, a
// Windows service's Stop) and it drained, reloading when ctl asks for it
// (SIGHUP, or a changed config file where there is no SIGHUP).
func serveProxy(cmd *cobra.Command, configFile string, ctl *control) error {
	rc, err := loadRunConfig(cmd.Flags(), configFile)
	if err != nil {
		return usageError{err}
	}
	if err := rc.validate(); err != nil {
		return usageError{err}
	}
	level := new(slog.LevelVar)
	log, err := newLogger(rc, level)
	if err != nil {
		return usageError{err}
	}
	r := &runner{cmd: cmd, configFile: configFile, log: log, level: level}
	var obs proxy.Observer
	// POST /quitquitquit (admin_quit) is handed to the signal loop below.
	quit := make(chan os.Signal, 1)
	if rc.Admin != "" {
		r.adm = admin.New(admin.Options{Version: versionNumber(), ReadyWindow: rc.ReadyWindow,
			// Read at scrape time; the admin endpoint starts after the server.
			Stats: func() []proxy.RouteStats { return r.srv.RouteStats() },
			Quit:  quitRequests(rc.AdminQuit, quit),
			Hosts: adminHosts(&rc)})
		obs = r.adm
	}
	rc, routes, err := loadRoutes(cmd, configFile, log, r.adm)
	if err != nil {
		return usageError{err}
	}
	r.rc = rc
	if proxy.RelayEngine(rc.Relay).OnThisSystem() == proxy.RelayPortable {
		// Nothing but net.Conn, as on every other system: the upstream's
		// TLS writes too. Before the first dial wraps a socket.
		rawsock.Disable()
	}
	srv, err := proxy.New(proxy.Config{Routes: proxyRoutes(routes), Logger: log, Observer: obs,
		Relay: proxy.RelayEngine(rc.Relay), RelayLoops: rc.RelayLoops, MaxStartupConnections: rc.MaxStartupConnections})
	if err != nil {
		return usageError{err}
	}
	r.srv = srv
	if err := srv.Listen(); err != nil {
		return err
	}
	if r.adm != nil {
		l, err := admin.Listen(rc.Admin)
		if err != nil {
			srv.Close()
			return err
		}
		if !admin.IsLoopback(l.Addr()) {
			log.Warn("admin endpoint on a non-loopback address: anyone who reaches it can read the metrics", "addr", l.Addr().String())
		}
		paths := "/metrics /healthz /readyz"
		if rc.AdminQuit {
			paths += " " + admin.QuitPath
			if !admin.IsLoopback(l.Addr()) {
				log.Warn("admin_quit on a non-loopback address: anyone who reaches it can stop the proxy", "addr", l.Addr().String())
			}
		}
		log.Info("admin endpoint", "addr", l.Addr().String(), "paths", paths)
		go func() {
			if err := r.adm.Serve(l); err != nil {
				log.Error("admin endpoint stopped", "error", err.Error())
			}
		}()
	}
	r.startChecks(routes)

	sigs := ctl.start(log, configFile)
	defer ctl.stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(context.Background()) }()
	for {
		select {
		case err := <-serveErr:
			r.stopChecks()
			return err
		case sig := <-sigs:
			if isReload(sig) {
				r.reload(sig)
				continue
			}
			return r.drain(sig, sigs, serveErr)
		case sig := <-quit: // POST /quitquitquit: the same drain
			return r.drain(sig, sigs, serveErr)
		}
	}
}

func proxyRoutes(bs []builtRoute) []proxy.Route {
	out := make([]proxy.Route, len(bs))
	for i, b := range bs {
		out[i] = b.route
	}
	return out
}

// startChecks runs each route's upstream check: its pin at start-up, one
// logged verification, a repeat every 12 hours so expiry warnings stay in
// long-running logs, and, with the admin endpoint, a probe every third of
// the ready window that keeps /readyz current.
func (r *runner) startChecks(routes []builtRoute) {
	ctx, cancel := context.WithCancel(context.Background())
	r.stopChecks = cancel
	// Copied now: a reload replaces r.rc while these goroutines run.
	warn, window := r.rc.ExpiryWarning, r.rc.ReadyWindow
	for _, b := range routes {
		// Each route is checked on its own: one upstream that cannot be
		// trusted does not stop the others. A host list: each host is
		// prepared (its pin) and checked on its own; the first host's
		// goroutine also probes the route.
		log := r.log.With("route", b.conf.Name)
		probe := r.adm != nil
		if len(b.hostTrusts) == 0 {
			go r.watchUpstream(ctx, b.trust, b.conf.Name, log, warn, window, probe)
			continue
		}
		for i, ht := range b.hostTrusts {
			go r.watchUpstream(ctx, ht, b.conf.Name, log.With("host", ht.Addr()), warn, window, probe && i == 0)
		}
	}
}

// watchUpstream prepares one upstream's trust (its pin), logs one
// verification and repeats it every 12 hours, and with probe, probes
// route every third of the ready window until ctx ends.
func (r *runner) watchUpstream(ctx context.Context, rt *chain.RouteTrust, route string, log *slog.Logger, warn, window time.Duration, probe bool) {
	prepareTrust(ctx, rt, log, warn)
	if ctx.Err() != nil {
		return
	}
	checkUpstream(ctx, rt, log, warn)
	logTick := time.NewTicker(12 * time.Hour)
	defer logTick.Stop()
	var probeTick <-chan time.Time
	if probe {
		_ = r.srv.Probe(ctx, route)
		t := time.NewTicker(window / 3)
		defer t.Stop()
		probeTick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-logTick.C:
			checkUpstream(ctx, rt, log, warn)
		case <-probeTick:
			if ctx.Err() != nil {
				return
			}
			if err := r.srv.Probe(ctx, route); err != nil && ctx.Err() == nil {
				log.Debug("readiness probe failed", "error", err.Error())
			}
		}
	}
}

// reload applies a changed configuration on SIGHUP (or, where there is no
// SIGHUP, when the config file changed): the file is read again
// (flags and environment as at start), every route rebuilt (certificates,
// keys, pins), and the proxy switched over without dropping sessions. A
// configuration that fails anywhere is rejected and the running one kept.
func (r *runner) reload(sig os.Signal) {
	r.log.Info(reloadCause(sig)+": reloading the configuration", "config", r.configFile)
	rc, routes, err := loadRoutes(r.cmd, r.configFile, r.log, r.adm)
	if err == nil {
		err = r.srv.Reload(proxyRoutes(routes))
	}
	if err != nil {
		r.log.Error("reload rejected: the running configuration stays in force", "error", err.Error())
		return
	}
	if rc.LogLevel != r.rc.LogLevel {
		_ = setLevel(r.level, rc.LogLevel)
	}
	for _, k := range []struct{ name, old, new string }{
		{"admin", r.rc.Admin, rc.Admin},
		{"admin_quit", fmt.Sprint(r.rc.AdminQuit), fmt.Sprint(rc.AdminQuit)},
		{"log_format", r.rc.LogFormat, rc.LogFormat},
		{"log_file", r.rc.LogFile, rc.LogFile},
		{"ready_window", r.rc.ReadyWindow.String(), rc.ReadyWindow.String()},
		{"relay", r.rc.Relay, rc.Relay},
		{"relay_loops", fmt.Sprint(r.rc.RelayLoops), fmt.Sprint(rc.RelayLoops)},
		{"max_startup_connections", fmt.Sprint(r.rc.MaxStartupConnections), fmt.Sprint(rc.MaxStartupConnections)},
	} {
		if k.old != k.new {
			r.log.Warn("this setting changes only on restart; the running value stays", "setting", k.name, "running", k.old, "configured", k.new)
		}
	}
	if r.adm == nil || rc.ReadyWindow != r.rc.ReadyWindow {
		rc.ReadyWindow = r.rc.ReadyWindow
	}
	rc.Admin, rc.LogFormat, rc.LogFile = r.rc.Admin, r.rc.LogFormat, r.rc.LogFile
	rc.AdminQuit = r.rc.AdminQuit
	r.rc = rc
	r.stopChecks()
	r.startChecks(routes)
	r.log.Info("configuration reloaded", "routes", strings.Join(r.srv.Routes(), ","))
}

// drain stops accepting, lets running sessions finish for the drain
// timeout (a second signal cuts it short), then closes what is left.
func (r *runner) drain(sig os.Signal, sigs <-chan os.Signal, serveErr <-chan error) error {
	active := r.srv.Active()
	r.log.Info("shutting down: no new connections; waiting for running sessions", "signal", sig.String(),
		"sessions", active, "drain_timeout", r.rc.DrainTimeout.String())
	if r.adm != nil {
		r.adm.SetDraining()
	}
	r.stopChecks()
	ctx, cancel := context.WithTimeout(context.Background(), r.rc.DrainTimeout)
	defer cancel()
	go func() {
		for s := range sigs {
			if !isReload(s) {
				r.log.Warn("second signal: closing the running sessions now", "signal", s.String())
				cancel()
				return
			}
		}
	}()
	start := time.Now()
	if err := r.srv.Shutdown(ctx); err != nil {
		r.log.Warn("drain ended before every session did: the remaining sessions were closed", "after", time.Since(start).Round(time.Millisecond).String())
	} else {
		r.log.Info("drained: every session ended", "after", time.Since(start).Round(time.Millisecond).String())
	}
	serr := <-serveErr
	if r.adm != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = r.adm.Shutdown(sctx)
		scancel()
	}
	if serr != nil {
		return serr
	}
	r.log.Info("stopped")
	return nil
}

// checkUpstream inspects the upstream once at start-up (and every 12
// hours) so that a wrong address or an untrusted certificate shows in the
// log before the first client.
func checkUpstream(ctx context.Context, rt *chain.RouteTrust, log *slog.Logger, warn time.Duration) {
	d := rt.Dialer
	in, err := chain.Inspect(ctx, d, chain.InspectOptions{})
	if err != nil {
		if ctx.Err() != nil {
			return // replaced by a reload, or shutting down
		}
		var de *chain.DialError
		if errors.As(err, &de) && de.Step == chain.StepAfterHandshake {
			_, hint := chain.Explain(err, rt.HintContext())
			log.Error("upstream check failed: the server ended the TLS session right after the handshake; clients will get this error until it is fixed",
				"upstream", d.Addr(), "alert", de.Alert, "hint", hint)
			return
		}
		log.Error("upstream check failed; clients will get this error until it is fixed", "error", err.Error())
		return
	}
	h := in.Handshake
	leaf := h.Presented[0]
	attrs := []any{"upstream", d.Addr(), "server_name", d.VerifyName(),
		"tls", tls.VersionName(h.TLSVersion), "leaf", leaf.Subject.String(),
		"leaf_expires", leaf.NotAfter.UTC().Format(time.RFC3339),
		"handshake", h.RTT.Round(time.Millisecond).String()}
	if d.Negotiation == chain.NegotiateDirect {
		attrs = append(attrs, "negotiation", "direct", "alpn", in.ALPN)
	}
	if d.ClientCert != nil && d.ClientCert.Leaf != nil {
		attrs = append(attrs, "client_cert", d.ClientCert.Leaf.Subject.String())
	}
	log.Info("upstream verified (verify-full)", attrs...)
	warnExpiry(log, "server certificate", leaf, warn)
}

// describeRoot names a root CA for /readyz: its subject and key, since a
// re-keyed root may keep its name.
func describeRoot(c *x509.Certificate) string {
	return c.Subject.String() + " (SPKI SHA-256 " + chain.SPKIHash(c) + ")"
}

// adminHosts is admin_hosts plus the admin address's own host when that is
// a name (an address such as pgverifyproxy:9543 is reached by that name).
func adminHosts(rc *runConfig) []string {
	hosts := splitList(rc.AdminHosts)
	if addr, err := admin.ResolveAddr(rc.Admin); err == nil {
		if h, _, err := net.SplitHostPort(addr); err == nil && h != "" && net.ParseIP(h) == nil {
			hosts = append(hosts, h)
		}
	}
	return hosts
}
