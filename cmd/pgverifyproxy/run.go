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

// buildRoute turns the plain configuration into a proxy route and the
// upstream trust behind it.
func buildRoute(rc runConfig, log *slog.Logger) (proxy.Route, *upstreamTrust, error) {
	ut, err := buildTrust(trustConfig{Upstream: rc.Upstream, ServerName: rc.ServerName, CAFile: rc.CAFile,
		PinDir: rc.PinDir, Trust: rc.Trust, ConnectTimeout: rc.ConnectTimeout}, log)
	if err != nil {
		return proxy.Route{}, nil, err
	}
	mode, _ := proxy.ParseClientTLSMode(rc.ClientTLS)
	var serverTLS *tls.Config
	if mode != proxy.ClientTLSDisable {
		if rc.ClientTLSCert != "" {
			serverTLS, err = proxy.LoadServerTLSConfig(rc.ClientTLSCert, rc.ClientTLSKey)
		} else {
			serverTLS, err = proxy.SelfSignedTLSConfig()
		}
		if err != nil {
			return proxy.Route{}, nil, err
		}
	}
	d := ut.dialer
	route := proxy.Route{
		Name:         "default",
		Listen:       rc.Listen,
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
		ClientTLS:      mode,
		TLSConfig:      serverTLS,
		StartupTimeout: rc.StartupTimeout,
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
	route, ut, err := buildRoute(rc, log)
	if err != nil {
		return usageError{err}
	}
	srv, err := proxy.New(proxy.Config{Routes: []proxy.Route{route}, Logger: log})
	if err != nil {
		return usageError{err}
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	go func() {
		prepareTrust(context.Background(), ut, log, rc.ExpiryWarning)
		checkUpstream(context.Background(), ut.dialer, log, rc.ExpiryWarning)
		// Expiry warnings stay visible in long-running logs.
		t := time.NewTicker(12 * time.Hour)
		defer t.Stop()
		for range t.C {
			checkUpstream(context.Background(), ut.dialer, log, rc.ExpiryWarning)
		}
	}()

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
	cs := c.ConnectionState()
	leaf := cs.PeerCertificates[0]
	log.Info("upstream verified (verify-full)",
		"upstream", d.Addr(), "server_name", d.VerifyName(),
		"tls", tls.VersionName(cs.Version), "leaf", leaf.Subject.String(),
		"leaf_expires", leaf.NotAfter.UTC().Format(time.RFC3339),
		"rtt", time.Since(start).Round(time.Millisecond).String())
	warnExpiry(log, "server certificate", leaf, warn)
}
