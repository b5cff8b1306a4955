package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// envPrefix is the prefix of every environment variable the proxy reads.
const envPrefix = "PGVERIFYPROXY"

// runConfig is the plain configuration of `pgverifyproxy run`, filled from
// flags, PGVERIFYPROXY_* variables and the YAML file (in that order of
// precedence) and handed to the packages below as plain structs.
type runConfig struct {
	Upstream       string        `mapstructure:"upstream"`
	ServerName     string        `mapstructure:"server_name"`
	CAFile         string        `mapstructure:"ca_file"`
	PinDir         string        `mapstructure:"pin_dir"`
	Trust          string        `mapstructure:"trust"`
	ExpiryWarning  time.Duration `mapstructure:"expiry_warning"`
	Listen         []string      `mapstructure:"listen"`
	ClientTLS      string        `mapstructure:"client_tls"`
	ClientTLSCert  string        `mapstructure:"client_tls_cert"`
	ClientTLSKey   string        `mapstructure:"client_tls_key"`
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
	StartupTimeout time.Duration `mapstructure:"startup_timeout"`
	DrainTimeout   time.Duration `mapstructure:"drain_timeout"`
	LogLevel       string        `mapstructure:"log_level"`
	LogFormat      string        `mapstructure:"log_format"`
}

// option is one setting: its config key, flag name, default and help.
type option struct {
	key   string
	flag  string
	def   any
	usage string
}

var runOptions = []option{
	{"upstream", "upstream", "", "upstream PostgreSQL server: HOST:PORT, or a libpq URI (postgres://user@host:port/db?sslmode=require; only host and port are used)"},
	{"server_name", "server-name", "", "name to verify in the server certificate and send as SNI (default: the upstream host)"},
	{"ca_file", "ca-file", "", "PEM file with the root CA(s) to trust for the upstream, and nothing else (default: the upstream's pin, fetched on first start)"},
	{"pin_dir", "pin-dir", "", "directory of the pin files (default: $XDG_STATE_HOME/pgverifyproxy or ~/.local/state/pgverifyproxy)"},
	{"trust", "trust", "system", "how a first pin is chosen: system (the chain must lead to a root in the system trust store) or tofu (trust on first use)"},
	{"expiry_warning", "expiry-warning", 30 * 24 * time.Hour, "warn in the log when the pinned anchor or the server's certificate expires within this time"},
	{"listen", "listen", []string{"127.0.0.1:5432"}, "local address to accept clients on (repeatable)"},
	{"client_tls", "client-tls", "allow", "answer to a client's SSLRequest: allow (TLS or plaintext), disable (plaintext only), require (TLS only)"},
	{"client_tls_cert", "client-tls-cert", "", "PEM certificate chain for client TLS (default: an in-memory self-signed certificate for localhost)"},
	{"client_tls_key", "client-tls-key", "", "PEM private key for --client-tls-cert"},
	{"connect_timeout", "connect-timeout", chain.DefaultConnectTimeout, "bound on the upstream TCP connect, SSLRequest and TLS handshake"},
	{"startup_timeout", "startup-timeout", proxy.DefaultStartupTimeout, "bound on everything before the relay: client startup, upstream dial, authentication"},
	{"drain_timeout", "drain-timeout", 30 * time.Second, "on SIGTERM/SIGINT, how long running sessions may go on before they are closed"},
	{"log_level", "log-level", "info", "debug, info, warn or error"},
	{"log_format", "log-format", "text", "text or json"},
}

// addRunFlags declares the flags of `run` (also accepted by the root command).
func addRunFlags(fs *pflag.FlagSet) { addFlags(fs, runOptions) }

// pickOptions returns the options with the given keys, for subcommands that
// take a subset of run's settings.
func pickOptions(keys ...string) []option {
	var out []option
	for _, k := range keys {
		for _, o := range runOptions {
			if o.key == k {
				out = append(out, o)
			}
		}
	}
	return out
}

// addFlags declares one flag per option.
func addFlags(fs *pflag.FlagSet, opts []option) {
	for _, o := range opts {
		switch d := o.def.(type) {
		case string:
			fs.String(o.flag, d, o.usage)
		case []string:
			fs.StringArray(o.flag, d, o.usage)
		case time.Duration:
			fs.Duration(o.flag, d, o.usage)
		}
	}
}

// loadRunConfig merges defaults, the config file, the environment and the
// flags with viper (flags win) into a runConfig.
func loadRunConfig(fs *pflag.FlagSet, configFile string) (runConfig, error) {
	var rc runConfig
	if err := loadConfig(fs, configFile, runOptions, &rc); err != nil {
		return runConfig{}, err
	}
	rc.Listen = splitList(rc.Listen)
	return rc, nil
}

// loadConfig fills out (a struct with mapstructure tags) from opts' flags,
// environment variables, the config file and defaults, flags first.
func loadConfig(fs *pflag.FlagSet, configFile string, opts []option, out any) error {
	v := viper.New()
	for _, o := range opts {
		v.SetDefault(o.key, o.def)
		if err := v.BindPFlag(o.key, fs.Lookup(o.flag)); err != nil {
			return err
		}
		if err := v.BindEnv(o.key, envPrefix+"_"+strings.ToUpper(o.key)); err != nil {
			return err
		}
	}
	if configFile != "" {
		v.SetConfigFile(configFile)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return fmt.Errorf("reading config file %s: %w", configFile, err)
		}
		if err := checkKnownKeys(v); err != nil {
			return fmt.Errorf("config file %s: %w", configFile, err)
		}
	}
	if err := v.Unmarshal(out); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// checkKnownKeys rejects misspelt keys in the file, which would otherwise be
// silently ignored.
func checkKnownKeys(v *viper.Viper) error {
	known := map[string]bool{}
	for _, o := range runOptions {
		known[o.key] = true
	}
	var unknown []string
	for _, k := range v.AllKeys() {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("unknown setting(s): %s", strings.Join(unknown, ", "))
	}
	return nil
}

// splitList lets PGVERIFYPROXY_LISTEN hold several comma-separated addresses.
func splitList(in []string) []string {
	var out []string
	for _, s := range in {
		for _, part := range strings.Split(s, ",") {
			if p := strings.TrimSpace(part); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// validate checks what can be checked without touching the network.
func (rc *runConfig) validate() error {
	if rc.Upstream == "" {
		return errors.New("no upstream: pass --upstream HOST:PORT (or set upstream in the config file, or PGVERIFYPROXY_UPSTREAM)")
	}
	if _, err := chain.ParsePolicy(rc.Trust); err != nil {
		return err
	}
	if len(rc.Listen) == 0 {
		return errors.New("no listen address")
	}
	if _, err := proxy.ParseClientTLSMode(rc.ClientTLS); err != nil {
		return err
	}
	if (rc.ClientTLSCert == "") != (rc.ClientTLSKey == "") {
		return errors.New("--client-tls-cert and --client-tls-key go together")
	}
	switch rc.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log format must be text or json, not %q", rc.LogFormat)
	}
	return nil
}
