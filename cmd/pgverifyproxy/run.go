package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

func newLogger(rc runConfig) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(rc.LogLevel)); err != nil {
		return nil, fmt.Errorf("log level must be debug, info, warn or error, not %q", rc.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	if rc.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
}

// buildRoute turns one route's plain configuration into a proxy route and
// the upstream trust behind it.
func buildRoute(r routeConfig, rc runConfig, log *slog.Logger) (proxy.Route, *upstreamTrust, error) {
	log = log.With("route", r.Name)
	ut, err := buildTrust(trustConfig{Upstream: r.Upstream, ServerName: r.ServerName, CAFile: r.CAFile,
		PinDir: rc.PinDir, Trust: r.Trust, ConnectTimeout: rc.ConnectTimeout,
		UpstreamCert: r.UpstreamCert, UpstreamKey: r.UpstreamKey, Negotiation: r.Negotiation}, log)
	if err != nil {
		return proxy.Route{}, nil, err
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
			return proxy.Route{}, nil, err
		}
	}
	auth, _ := proxy.ParseAuthMode(r.Auth)
	stored, err := storedPassword(r.PasswordFile, r.PasswordEnv)
	if err != nil {
		return proxy.Route{}, nil, err
	}
	d := ut.dialer
	route := proxy.Route{
		Name:         r.Name,
		Listen:       r.Listen,
		UpstreamAddr: ut.spec.addr(),
		Trust:        ut.describe,
		RepinCommand: ut.repin,
		Dial: func(ctx context.Context) (net.Conn, error) {
			c, err := d.Dial(ctx)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		ClientTLS:          mode,
		TLSConfig:          serverTLS,
		ClientTLSGenerated: mode != proxy.ClientTLSDisable && r.ClientTLSCert == "",
		StartupTimeout:     rc.StartupTimeout,
		Auth:               auth,
		ChannelBinding:     r.ChannelBinding,
		StoredPassword:     stored,
	}
	return route, ut, nil
}

func runProxy(cmd *cobra.Command, configFile string) error {
	rc, err := loadRunConfig(cmd.Flags(), configFile)
	if err != nil {
		return usageError{err}
	}
	if err := rc.validate(); err != nil {
		return usageError{err}
	}
	log, err := newLogger(rc)
	if err != nil {
		return usageError{err}
	}
	rcs, err := rc.routes()
	if err != nil {
		return usageError{err}
	}
	var routes []proxy.Route
	var trusts []*upstreamTrust
	for _, r := range rcs {
		route, ut, err := buildRoute(r, rc, log)
		if err != nil {
			if len(rcs) > 1 {
				err = fmt.Errorf("route %s: %w", r.Name, err)
			}
			return usageError{err}
		}
		routes = append(routes, route)
		trusts = append(trusts, ut)
	}
	srv, err := proxy.New(proxy.Config{Routes: routes, Logger: log})
	if err != nil {
		return usageError{err}
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	for i, ut := range trusts {
		// Each route is checked on its own: one upstream that cannot be
		// trusted does not stop the others.
		go func(ut *upstreamTrust, log *slog.Logger) {
			prepareTrust(context.Background(), ut, log, rc.ExpiryWarning)
			checkUpstream(context.Background(), ut.dialer, log, rc.ExpiryWarning)
			// Expiry warnings stay visible in long-running logs.
			t := time.NewTicker(12 * time.Hour)
			defer t.Stop()
			for range t.C {
				checkUpstream(context.Background(), ut.dialer, log, rc.ExpiryWarning)
			}
		}(ut, log.With("route", rcs[i].Name))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(context.Background()) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: no new connections; waiting for running sessions", "drain_timeout", rc.DrainTimeout.String())
	dctx, cancel := context.WithTimeout(context.Background(), rc.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("drain timeout reached: remaining sessions closed")
	}
	<-serveErr
	return nil
}

// checkUpstream dials the upstream once at start-up so that a wrong address
// or an untrusted certificate shows in the log before the first client.
func checkUpstream(ctx context.Context, d *chain.Dialer, log *slog.Logger, warn time.Duration) {
	start := time.Now()
	c, err := d.Dial(ctx)
	if err != nil {
		log.Error("upstream check failed; clients will get this error until it is fixed", "error", err.Error())
		return
	}
	defer c.Close()
	// With TLS 1.3 a server that refuses the client certificate (or its
	// absence) says so only after the handshake: listen for a moment. A
	// PostgreSQL server waiting for a startup message sends nothing.
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		if alert, ok := chain.TLSAlert(err); ok {
			attrs := []any{"upstream", d.Addr(), "alert", alert}
			if chain.ClientCertAlert(alert) {
				attrs = append(attrs, "hint", chain.ClientCertHint)
			}
			log.Error("upstream check failed: the server ended the TLS session right after the handshake; clients will get this error until it is fixed", attrs...)
			return
		}
	}
	cs := c.ConnectionState()
	leaf := cs.PeerCertificates[0]
	attrs := []any{"upstream", d.Addr(), "server_name", d.VerifyName(),
		"tls", tls.VersionName(cs.Version), "leaf", leaf.Subject.String(),
		"leaf_expires", leaf.NotAfter.UTC().Format(time.RFC3339),
		"rtt", time.Since(start).Round(time.Millisecond).String()}
	if d.Negotiation == chain.NegotiateDirect {
		attrs = append(attrs, "negotiation", "direct", "alpn", cs.NegotiatedProtocol)
	}
	if d.ClientCert != nil && d.ClientCert.Leaf != nil {
		attrs = append(attrs, "client_cert", d.ClientCert.Leaf.Subject.String())
	}
	log.Info("upstream verified (verify-full)", attrs...)
	warnExpiry(log, "server certificate", leaf, warn)
}
