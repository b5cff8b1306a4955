package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/pgverifyproxy/pgverifyproxy/admin"
	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// envPrefix is the prefix of every environment variable the proxy reads.
const envPrefix = "PGVERIFYPROXY"

// runConfig is the plain configuration of `pgverifyproxy run`, filled from
// flags, PGVERIFYPROXY_* variables and the YAML file (in that order of
// precedence) and handed to the packages below as plain structs.
type runConfig struct {
	Upstream   string `mapstructure:"upstream"`
	ServerName string `mapstructure:"server_name"`
	CAFile     string `mapstructure:"ca_file"`
	PinDir     string `mapstructure:"pin_dir"`
	Trust      string `mapstructure:"trust"`
	// AIAAllowPrivate lets AIA completion fetch from loopback and private
	// addresses (chain.Completer.AllowPrivate).
	AIAAllowPrivate bool          `mapstructure:"aia_allow_private"`
	ExpiryWarning   time.Duration `mapstructure:"expiry_warning"`
	Listen          []string      `mapstructure:"listen"`
	ClientTLS       string        `mapstructure:"client_tls"`
	ClientTLSCert   string        `mapstructure:"client_tls_cert"`
	ClientTLSKey    string        `mapstructure:"client_tls_key"`
	ConnectTimeout  time.Duration `mapstructure:"connect_timeout"`
	StartupTimeout  time.Duration `mapstructure:"startup_timeout"`
	DrainTimeout    time.Duration `mapstructure:"drain_timeout"`
	LogLevel        string        `mapstructure:"log_level"`
	LogFormat       string        `mapstructure:"log_format"`
	LogFile         string        `mapstructure:"log_file"`
	UpstreamCert    string        `mapstructure:"upstream_cert"`
	UpstreamKey     string        `mapstructure:"upstream_key"`
	Negotiation     string        `mapstructure:"negotiation"`
	Auth            string        `mapstructure:"auth"`
	ChannelBinding  string        `mapstructure:"channel_binding"`
	AskPasswordFrom []string      `mapstructure:"ask_password_from"`
	// TargetSessionAttrs and LoadBalanceHosts: libpq's, for an upstream
	// host list (a URI's own parameters win).
	TargetSessionAttrs string `mapstructure:"target_session_attrs"`
	LoadBalanceHosts   string `mapstructure:"load_balance_hosts"`
	// UnixSocketPermissions and UnixSocketGroup: the socket files of
	// unix: listeners (octal mode; group name or number).
	UnixSocketPermissions string `mapstructure:"unix_socket_permissions"`
	UnixSocketGroup       string `mapstructure:"unix_socket_group"`
	PasswordFile          string `mapstructure:"password_file"`
	PasswordEnv           string `mapstructure:"password_env"`
	// PasswordCommand and its TTL and timeout: see passwordSource.
	PasswordCommand        string        `mapstructure:"password_command"`
	PasswordCommandTTL     time.Duration `mapstructure:"password_command_ttl"`
	PasswordCommandTimeout time.Duration `mapstructure:"password_command_timeout"`
	MaxConnections         int           `mapstructure:"max_connections"`
	MaxStartupConnections  int           `mapstructure:"max_startup_connections"`
	Prewarm                int           `mapstructure:"prewarm"`
	PrewarmMaxAge          time.Duration `mapstructure:"prewarm_max_age"`
	TCPKeepalive           time.Duration `mapstructure:"tcp_keepalive"`
	DNSRecheck             time.Duration `mapstructure:"dns_recheck"`
	Relay                  string        `mapstructure:"relay"`
	RelayLoops             int           `mapstructure:"relay_loops"`
	Admin                  string        `mapstructure:"admin"`
	AdminQuit              bool          `mapstructure:"admin_quit"`
	AdminHosts             []string      `mapstructure:"admin_hosts"`
	ReadyWindow            time.Duration `mapstructure:"ready_window"`
	// Routes come from the config file only. When there are none, the
	// top-level settings make the one route.
	Routes []routeConfig `mapstructure:"routes"`

	// setBy says where each top-level setting came from: "flag",
	// "environment", "file", or "" for its default.
	setBy map[string]string
}

// routeConfig is one route: its listeners and one upstream with its own
// server name, trust and client certificate. Empty settings other than
// name, listen, upstream and server_name take the top-level value.
type routeConfig struct {
	Name           string   `mapstructure:"name"`
	Listen         []string `mapstructure:"listen"`
	Upstream       string   `mapstructure:"upstream"`
	ServerName     string   `mapstructure:"server_name"`
	CAFile         string   `mapstructure:"ca_file"`
	Trust          string   `mapstructure:"trust"`
	UpstreamCert   string   `mapstructure:"upstream_cert"`
	UpstreamKey    string   `mapstructure:"upstream_key"`
	Negotiation    string   `mapstructure:"negotiation"`
	ClientTLS      string   `mapstructure:"client_tls"`
	ClientTLSCert  string   `mapstructure:"client_tls_cert"`
	ClientTLSKey   string   `mapstructure:"client_tls_key"`
	Auth           string   `mapstructure:"auth"`
	ChannelBinding string   `mapstructure:"channel_binding"`
	// AskPasswordFrom is the route's own or the top level's.
	AskPasswordFrom       []string `mapstructure:"ask_password_from"`
	TargetSessionAttrs    string   `mapstructure:"target_session_attrs"`
	LoadBalanceHosts      string   `mapstructure:"load_balance_hosts"`
	UnixSocketPermissions string   `mapstructure:"unix_socket_permissions"`
	UnixSocketGroup       string   `mapstructure:"unix_socket_group"`
	PasswordFile          string   `mapstructure:"password_file"`
	PasswordEnv           string   `mapstructure:"password_env"`
	// PasswordCommand is the route's own; the TTL and timeout come from
	// the top level.
	PasswordCommand string `mapstructure:"password_command"`
	MaxConnections  int    `mapstructure:"max_connections"`
	Prewarm         int    `mapstructure:"prewarm"`
	// set holds the keys the file gives for this route, even empty ones:
	// `ca_file: ""` in a route means "use a pin", not "inherit".
	set map[string]bool
}

// routeKeys are the settings a route may carry.
var routeKeys = []string{"name", "listen", "upstream", "server_name", "ca_file", "trust",
	"upstream_cert", "upstream_key", "negotiation", "client_tls", "client_tls_cert", "client_tls_key",
	"auth", "channel_binding", "ask_password_from", "target_session_attrs", "load_balance_hosts", "unix_socket_permissions", "unix_socket_group", "password_file", "password_env", "password_command", "max_connections", "prewarm"}

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
	{"pin_dir", "pin-dir", "", "directory of the pin files (default: $XDG_STATE_HOME/pgverifyproxy, else ~/.local/state/pgverifyproxy; on macOS ~/Library/Application Support/pgverifyproxy unless XDG_STATE_HOME is set; on Windows %LocalAppData%\\pgverifyproxy)"},
	{"trust", "trust", "system", "what the upstream is verified against when ca_file is empty: system (pin the root the chain leads to in the system trust store), tofu (pin what the server presents first, after you checked its fingerprint) or live (no pin: the system trust store at every connection, like libpq's sslrootcert=system)"},
	{"aia_allow_private", "aia-allow-private", false, "let the completion of a server's chain (AIA caIssuers URLs, from a certificate not verified yet) fetch from loopback, link-local and private addresses: only for a CA whose AIA server is on an internal network"},
	{"expiry_warning", "expiry-warning", 30 * 24 * time.Hour, "warn in the log when the pinned anchor or the server's certificate expires within this time"},
	{"upstream_cert", "upstream-cert", "", "PEM client certificate to present to the upstream (pg_hba cert / clientcert=verify-full); sent only after the server is verified"},
	{"upstream_key", "upstream-key", "", "PEM private key for --upstream-cert (mode 0600, or 0640 owned by root, as libpq requires)"},
	{"negotiation", "negotiation", string(chain.NegotiatePostgres), "how TLS starts upstream: postgres (SSLRequest first, any server) or direct (PostgreSQL 17+ direct TLS with ALPN postgresql)"},
	{"listen", "listen", []string{"127.0.0.1:5432"}, "local address to accept clients on, HOST:PORT or unix:/DIR[:PORT] for libpq's /DIR/.s.PGSQL.PORT (repeatable)"},
	{"client_tls", "client-tls", "allow", "answer to a client's SSLRequest: allow (TLS or plaintext), disable (plaintext only), require (TLS only)"},
	{"client_tls_cert", "client-tls-cert", "", "PEM certificate chain for client TLS (default: an in-memory self-signed certificate for localhost)"},
	{"client_tls_key", "client-tls-key", "", "PEM private key for --client-tls-cert"},
	{"connect_timeout", "connect-timeout", chain.DefaultConnectTimeout, "bound on the upstream TCP connect, SSLRequest and TLS handshake"},
	{"startup_timeout", "startup-timeout", proxy.DefaultStartupTimeout, "bound on everything before the relay: client startup, upstream dial, authentication"},
	{"drain_timeout", "drain-timeout", 30 * time.Second, "on SIGTERM/SIGINT, how long running sessions may go on before they are closed"},
	{"auth", "auth", string(proxy.AuthAuto), "who logs in upstream: auto (the client's own exchange is relayed, except where the server offers SCRAM channel binding to a TLS client: there the proxy asks for the password inside that TLS and logs in with channel binding itself), passthrough (always the client's own exchange) or relay (the proxy always asks for the password and logs in itself)"},
	{"unix_socket_permissions", "unix-socket-permissions", "0777", "mode of the socket files of unix: listeners, in octal, as PostgreSQL's unix_socket_permissions: 0777 lets every local user connect; 0770 with unix_socket_group only that group's members (narrow a stored-password route this way)"},
	{"unix_socket_group", "unix-socket-group", "", "group (name or number) of the socket files of unix: listeners, as PostgreSQL's unix_socket_group; the proxy must be a member of it, or root"},
	{"target_session_attrs", "target-session-attrs", "any", "with an upstream host list: libpq's target_session_attrs, the role a host must have to serve a session: any, read-write, read-only, primary, standby or prefer-standby (read from the ParameterStatus of PostgreSQL 14 and later; an upstream URI's own parameter wins)"},
	{"load_balance_hosts", "load-balance-hosts", "disable", "with an upstream host list: libpq's load_balance_hosts, disable (try the hosts in order) or random"},
	{"ask_password_from", "ask-password-from", proxy.DefaultAskPasswordFrom, "with auth auto and the generated client certificate: where the proxy may ask a TLS client for its password to log in for it with SCRAM-SHA-256-PLUS: loopback (and unix sockets), link (a client on the network of the address it reached, not through a default gateway: a compose or pod network), private (both addresses private), or CIDR prefixes; an empty list asks nowhere; elsewhere the client's own login is relayed (repeatable)"},
	{"channel_binding", "channel-binding", "prefer", "SCRAM channel binding on the proxy's own logins (relay, and auto where it logs in): prefer, require or disable"},
	{"password_file", "password-file", "", "with auth relay or auto: a file (mode 0600) holding the password to log in with, so clients need none (loopback and unix listeners only)"},
	{"password_env", "password-env", "", "with auth relay or auto: the name of an environment variable holding that password instead"},
	{"password_command", "password-command", "", "with auth relay or auto: a shell command run for each login whose first output line is the password (an IAM token: aws rds generate-db-auth-token ...); loopback and unix listeners only"},
	{"password_command_ttl", "password-command-ttl", defaultPasswordCommandTTL, "reuse the password_command's password for this long (0: run it for every login; concurrent logins always share one run, and a login the server refuses drops the cached password)"},
	{"password_command_timeout", "password-command-timeout", defaultPasswordCommandTimeout, "stop password_command after this long and refuse the login"},
	{"max_connections", "max-connections", 0, "most client sessions a route serves at once (0: no limit); beyond it clients get FATAL 53300 too_many_connections"},
	{"max_startup_connections", "max-startup-connections", 0, "most connections in their startup phase at once over all routes (accepted, no startup message or TLS handshake yet, not past max_connections); beyond it the proxy accepts no more until one is admitted or its startup_timeout runs out (0: a quarter of the open-files limit, 64 to 4096)"},
	{"prewarm", "prewarm", 0, "keep this many upstream connections per route already verified (TCP, TLS, verify-full; nothing sent), so new clients skip those round trips"},
	{"prewarm_max_age", "prewarm-max-age", proxy.DefaultPrewarmMaxAge, "replace a pre-dialled upstream connection after this long: 1s to 50s, below the server's authentication_timeout (60s by default)"},
	{"dns_recheck", "dns-recheck", time.Duration(0), "resolve upstream host names again this often and end the sessions and pre-dialled connections held to an address the name no longer resolves to (managed endpoints fail over by moving their name); a failed lookup changes nothing (0: off)"},
	{"tcp_keepalive", "tcp-keepalive", 30 * time.Second, "TCP keepalive idle time and probe interval on both legs (0 turns keepalive off)"},
	{"relay", "relay", string(proxy.RelayLoop), "how authenticated sessions are relayed: loop (on Linux, event loops own both sockets of each session: less CPU and latency per message), goroutine (two goroutines per session: the loop's fallback) or portable (nothing but net.Conn: every other system's relay; elsewhere loop and goroutine mean portable)"},
	{"relay_loops", "relay-loops", 0, "with relay loop: how many event loops share the sessions (0: one per four CPUs of GOMAXPROCS, at least one)"},
	{"admin", "admin", "", "serve /metrics, /healthz and /readyz on this address (PORT or :PORT means 127.0.0.1:PORT; off by default)"},
	{"admin_quit", "admin-quit", false, "with --admin: serve POST /quitquitquit, which starts the same drain as SIGTERM (to end a Kubernetes Job's sidecar); anyone who can reach the admin address can then stop the proxy"},
	{"admin_hosts", "admin-hosts", []string{}, "with --admin: host names a request's Host header may name besides IP addresses and localhost (the name Prometheus scrapes by, e.g. pgverifyproxy in a compose network); any other Host is refused (421) against DNS rebinding (repeatable)"},
	{"ready_window", "ready-window", 30 * time.Second, "with --admin: /readyz passes when every route's upstream was reached and verified within this time (probed every third of it)"},
	{"log_level", "log-level", "info", "debug, info, warn or error"},
	{"log_format", "log-format", "text", "text or json"},
	{"log_file", "log-file", "", "append the log to this file instead of standard error (a Windows service has none); created 0600"},
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
		case bool:
			fs.Bool(o.flag, d, o.usage)
		case int:
			fs.Int(o.flag, d, o.usage)
		}
	}
}

// loadRunConfig merges defaults, the config file, the environment and the
// flags with viper (flags win) into a runConfig.
func loadRunConfig(fs *pflag.FlagSet, configFile string) (runConfig, error) {
	var rc runConfig
	v, err := loadConfig(fs, configFile, runOptions, &rc)
	if err != nil {
		return runConfig{}, err
	}
	rc.Listen = splitList(rc.Listen)
	rc.setBy = sources(v, fs)
	markRouteKeys(v, rc.Routes)
	for i := range rc.Routes {
		rc.Routes[i].Listen = splitList(rc.Routes[i].Listen)
	}
	return rc, nil
}

// sources says where each run option came from.
func sources(v *viper.Viper, fs *pflag.FlagSet) map[string]string {
	out := map[string]string{}
	for _, o := range runOptions {
		switch {
		case fs.Lookup(o.flag) != nil && fs.Lookup(o.flag).Changed:
			out[o.key] = "flag"
		case os.Getenv(envPrefix+"_"+strings.ToUpper(o.key)) != "":
			out[o.key] = "environment"
		case v.InConfig(o.key):
			out[o.key] = "file"
		}
	}
	return out
}

// markRouteKeys records which keys each route of the file sets.
func markRouteKeys(v *viper.Viper, routes []routeConfig) {
	list, _ := v.Get("routes").([]any)
	for i := range routes {
		routes[i].set = map[string]bool{}
		if i < len(list) {
			if m, ok := list[i].(map[string]any); ok {
				for k := range m {
					routes[i].set[strings.ToLower(k)] = true
				}
			}
		}
	}
}

// loadConfig fills out (a struct with mapstructure tags) from opts' flags,
// environment variables, the config file and defaults, flags first. Options
// without a flag in fs are read from the environment and the file only.
func loadConfig(fs *pflag.FlagSet, configFile string, opts []option, out any) (*viper.Viper, error) {
	v := viper.New()
	for _, o := range opts {
		v.SetDefault(o.key, o.def)
		if f := fs.Lookup(o.flag); f != nil {
			if err := v.BindPFlag(o.key, f); err != nil {
				return nil, err
			}
		}
		if err := v.BindEnv(o.key, envPrefix+"_"+strings.ToUpper(o.key)); err != nil {
			return nil, err
		}
	}
	if configFile != "" {
		v.SetConfigFile(configFile)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("reading config file %s: %w", configFile, err)
		}
		if err := checkKnownKeys(v); err != nil {
			return nil, fmt.Errorf("config file %s: %w", configFile, err)
		}
	}
	if err := v.Unmarshal(out); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return v, nil
}

// checkKnownKeys rejects misspelt keys in the file, at the top level and in
// routes, which would otherwise be silently ignored.
func checkKnownKeys(v *viper.Viper) error {
	known := map[string]bool{"routes": true}
	for _, o := range runOptions {
		known[o.key] = true
	}
	var unknown []string
	for _, k := range v.AllKeys() {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	if raw := v.Get("routes"); raw != nil {
		list, ok := raw.([]any)
		if !ok {
			return errors.New("routes must be a list of routes")
		}
		inRoute := map[string]bool{}
		for _, k := range routeKeys {
			inRoute[k] = true
		}
		for i, r := range list {
			m, ok := r.(map[string]any)
			if !ok {
				return fmt.Errorf("routes[%d] must be a mapping of settings", i)
			}
			for k := range m {
				if !inRoute[strings.ToLower(k)] {
					unknown = append(unknown, fmt.Sprintf("routes[%d].%s", i, k))
				}
			}
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown setting(s): %s", strings.Join(unknown, ", "))
	}
	return nil
}

// unixSocketMode reads unix_socket_permissions: an octal mode from 0000
// to 0777 ("" means the default, 0777).
func unixSocketMode(s string) (os.FileMode, error) {
	if s == "" {
		return 0o777, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("unix_socket_permissions must be an octal mode from 0000 to 0777 (such as 0770), not %s", strconv.Quote(s))
	}
	return os.FileMode(m), nil
}

// askPasswordFrom is a route's ask_password_from for proxy.Route: the list
// as given, where an empty one (ask nowhere) stays empty, never nil (the
// default).
func askPasswordFrom(in []string) []string {
	if out := splitList(in); out != nil {
		return out
	}
	return []string{}
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

// routes returns the routes to serve: the config file's, each completed with
// the top-level settings, or else one route named "default" made of the
// top-level settings.
func (rc *runConfig) routes() ([]routeConfig, error) {
	if len(rc.Routes) == 0 {
		return []routeConfig{{
			Name: "default", Listen: rc.Listen, Upstream: rc.Upstream, ServerName: rc.ServerName,
			CAFile: rc.CAFile, Trust: rc.Trust, UpstreamCert: rc.UpstreamCert, UpstreamKey: rc.UpstreamKey,
			Negotiation: rc.Negotiation, ClientTLS: rc.ClientTLS, ClientTLSCert: rc.ClientTLSCert, ClientTLSKey: rc.ClientTLSKey,
			Auth: rc.Auth, ChannelBinding: rc.ChannelBinding, AskPasswordFrom: rc.AskPasswordFrom,
			UnixSocketPermissions: rc.UnixSocketPermissions, UnixSocketGroup: rc.UnixSocketGroup, PasswordFile: rc.PasswordFile,
			TargetSessionAttrs: rc.TargetSessionAttrs, LoadBalanceHosts: rc.LoadBalanceHosts, PasswordEnv: rc.PasswordEnv,
			PasswordCommand: rc.PasswordCommand, MaxConnections: rc.MaxConnections, Prewarm: rc.Prewarm,
		}}, nil
	}
	given := map[string]bool{"upstream": rc.Upstream != "", "listen": len(rc.Listen) > 0, "server_name": rc.ServerName != "",
		"password_file": rc.PasswordFile != "", "password_env": rc.PasswordEnv != "", "password_command": rc.PasswordCommand != ""}
	// Credentials belong to one route: never inherited.
	for _, k := range []string{"upstream", "listen", "server_name", "password_file", "password_env", "password_command"} {
		if src := rc.setBy[k]; src != "" && given[k] {
			return nil, fmt.Errorf("%s is set at the top level (%s) and the config file has routes: set it in each route instead", k, describeSource(src, k))
		}
	}
	top := map[string]string{"ca_file": rc.CAFile, "trust": rc.Trust, "upstream_cert": rc.UpstreamCert, "upstream_key": rc.UpstreamKey,
		"negotiation": rc.Negotiation, "client_tls": rc.ClientTLS, "client_tls_cert": rc.ClientTLSCert, "client_tls_key": rc.ClientTLSKey,
		"auth": rc.Auth, "channel_binding": rc.ChannelBinding,
		"unix_socket_permissions": rc.UnixSocketPermissions, "unix_socket_group": rc.UnixSocketGroup,
		"target_session_attrs": rc.TargetSessionAttrs, "load_balance_hosts": rc.LoadBalanceHosts}
	// Certificate and key come as a pair: a route that sets either one
	// inherits neither.
	pairs := map[string]string{"upstream_cert": "upstream_key", "upstream_key": "upstream_cert",
		"client_tls_cert": "client_tls_key", "client_tls_key": "client_tls_cert"}
	names := map[string]bool{}
	out := make([]routeConfig, len(rc.Routes))
	for i, r := range rc.Routes {
		if r.Upstream == "" {
			return nil, fmt.Errorf("routes[%d]: no upstream", i)
		}
		if r.Name == "" {
			// Never the raw upstream: a URI may hold a password, and the
			// name is in every log line.
			r.Name = fmt.Sprintf("routes[%d]", i)
			if spec, err := parseUpstream(r.Upstream); err == nil {
				r.Name = spec.addr()
			}
		}
		if names[r.Name] {
			return nil, fmt.Errorf("routes[%d]: the name %q is used twice; give each route its own name", i, r.Name)
		}
		names[r.Name] = true
		fields := map[string]*string{"ca_file": &r.CAFile, "trust": &r.Trust, "upstream_cert": &r.UpstreamCert, "upstream_key": &r.UpstreamKey,
			"negotiation": &r.Negotiation, "client_tls": &r.ClientTLS, "client_tls_cert": &r.ClientTLSCert, "client_tls_key": &r.ClientTLSKey,
			"auth": &r.Auth, "channel_binding": &r.ChannelBinding,
			"unix_socket_permissions": &r.UnixSocketPermissions, "unix_socket_group": &r.UnixSocketGroup,
			"target_session_attrs": &r.TargetSessionAttrs, "load_balance_hosts": &r.LoadBalanceHosts}
		for k, f := range fields {
			if r.set[k] {
				// A route's own value would silently beat a flag or a
				// variable given for this run: refuse the ambiguity.
				if src := rc.setBy[k]; src == "flag" || src == "environment" {
					return nil, fmt.Errorf("%s is given for this run and route %s sets %s itself: remove one (the route's own value would silently win)", describeSource(src, k), r.Name, k)
				}
				continue
			}
			if p, ok := pairs[k]; ok && r.set[p] {
				continue
			}
			*f = top[k]
		}
		ints := []struct {
			key string
			top int
			own *int
		}{{"max_connections", rc.MaxConnections, &r.MaxConnections}, {"prewarm", rc.Prewarm, &r.Prewarm}}
		for _, k := range ints {
			if r.set[k.key] {
				if src := rc.setBy[k.key]; src == "flag" || src == "environment" {
					return nil, fmt.Errorf("%s is given for this run and route %s sets %s itself: remove one (the route's own value would silently win)", describeSource(src, k.key), r.Name, k.key)
				}
				continue
			}
			*k.own = k.top
		}
		if r.set["ask_password_from"] {
			if src := rc.setBy["ask_password_from"]; src == "flag" || src == "environment" {
				return nil, fmt.Errorf("%s is given for this run and route %s sets ask_password_from itself: remove one (the route's own value would silently win)", describeSource(src, "ask_password_from"), r.Name)
			}
		} else {
			r.AskPasswordFrom = rc.AskPasswordFrom
		}
		out[i] = r
	}
	return out, nil
}

// describeSource names a setting as the user gave it.
func describeSource(src, key string) string {
	switch src {
	case "flag":
		return "--" + strings.ReplaceAll(key, "_", "-")
	case "environment":
		return envPrefix + "_" + strings.ToUpper(key)
	}
	return "config file"
}

// validate checks one route without touching the network.
func (r *routeConfig) validate() error {
	if r.Upstream == "" {
		return errors.New("no upstream: pass --upstream HOST:PORT (or set upstream in the config file, or PGVERIFYPROXY_UPSTREAM)")
	}
	if _, err := chain.ParsePolicy(r.Trust); err != nil {
		return err
	}
	if len(r.Listen) == 0 {
		return errors.New("no listen address")
	}
	for _, a := range r.Listen {
		if _, err := proxy.ParseListenAddr(a); err != nil {
			return err
		}
	}
	if _, err := proxy.ParseClientTLSMode(r.ClientTLS); err != nil {
		return err
	}
	if _, err := chain.ParseNegotiation(r.Negotiation); err != nil {
		return err
	}
	if (r.ClientTLSCert == "") != (r.ClientTLSKey == "") {
		return errors.New("--client-tls-cert and --client-tls-key go together")
	}
	if (r.UpstreamCert == "") != (r.UpstreamKey == "") {
		return errors.New("--upstream-cert and --upstream-key go together")
	}
	auth, err := proxy.ParseAuthMode(r.Auth)
	if err != nil {
		return err
	}
	if _, err := proxy.ParseChannelBinding(r.ChannelBinding); err != nil {
		return err
	}
	if err := proxy.CheckAskPasswordFrom(askPasswordFrom(r.AskPasswordFrom)); err != nil {
		return err
	}
	if _, err := unixSocketMode(r.UnixSocketPermissions); err != nil {
		return err
	}
	if _, err := proxy.ParseTargetSessionAttrs(r.TargetSessionAttrs); err != nil {
		return err
	}
	if lb := r.LoadBalanceHosts; lb != "" && lb != "disable" && lb != "random" {
		return fmt.Errorf("load_balance_hosts must be disable or random, not %s", strconv.Quote(lb))
	}
	stored := 0
	for _, v := range []string{r.PasswordFile, r.PasswordEnv, r.PasswordCommand} {
		if v != "" {
			stored++
		}
	}
	if stored > 1 {
		return errors.New("--password-file, --password-env and --password-command: give one of them")
	}
	if err := proxy.CheckLimits(r.MaxConnections, r.Prewarm); err != nil {
		return err
	}
	if stored > 0 && auth == proxy.AuthPassthrough {
		return errors.New("a stored password (--password-file, --password-env, --password-command) needs --auth auto or relay: in passthrough mode the client logs in itself")
	}
	return nil
}

// validate checks what can be checked without touching the network.
func (rc *runConfig) validate() error {
	routes, err := rc.routes()
	if err != nil {
		return err
	}
	seen := map[string]string{}
	for _, r := range routes {
		if err := r.validate(); err != nil {
			if len(rc.Routes) > 0 {
				return fmt.Errorf("route %s: %w", r.Name, err)
			}
			return err
		}
		for _, a := range r.Listen {
			la, _ := proxy.ParseListenAddr(a)
			if other, dup := seen[la.String()]; dup {
				return fmt.Errorf("listen address %s is in route %s and route %s: each address serves one route", a, other, r.Name)
			}
			seen[la.String()] = r.Name
		}
	}
	switch rc.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log format must be text or json, not %q", rc.LogFormat)
	}
	if err := proxy.CheckPrewarmMaxAge(rc.PrewarmMaxAge); err != nil {
		return err
	}
	if _, err := proxy.ParseRelayEngine(rc.Relay); err != nil {
		return err
	}
	if rc.RelayLoops < 0 {
		return fmt.Errorf("relay_loops must be 0 (one per four CPUs) or more, not %d", rc.RelayLoops)
	}
	if rc.MaxStartupConnections < 0 {
		return fmt.Errorf("max_startup_connections must be 0 (from the open-files limit) or more, not %d", rc.MaxStartupConnections)
	}
	if rc.DNSRecheck < 0 || (rc.DNSRecheck > 0 && rc.DNSRecheck < time.Second) {
		return fmt.Errorf("dns_recheck must be 0 (off) or at least 1s, not %s", rc.DNSRecheck)
	}
	if rc.TCPKeepalive < 0 {
		return fmt.Errorf("tcp_keepalive must be 0 (off) or a positive duration, not %s", rc.TCPKeepalive)
	}
	if rc.Admin != "" {
		if _, err := admin.ResolveAddr(rc.Admin); err != nil {
			return err
		}
	}
	if rc.AdminQuit && rc.Admin == "" {
		return errors.New("admin_quit needs the admin endpoint: set admin (--admin ADDR) as well")
	}
	if rc.Admin != "" && rc.ReadyWindow < 3*time.Second {
		return fmt.Errorf("ready_window must be at least 3s (the upstream is probed every third of it), not %s", rc.ReadyWindow)
	}
	return nil
}
