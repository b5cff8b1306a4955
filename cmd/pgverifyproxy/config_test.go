package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestParseUpstream(t *testing.T) {
	tests := []struct {
		in      string
		host    string
		port    int
		ignored []string
		err     string
	}{
		{in: "db.example.com:6543", host: "db.example.com", port: 6543},
		{in: "db.example.com", host: "db.example.com", port: 5432},
		{in: "127.0.0.1:5432", host: "127.0.0.1", port: 5432},
		{in: "[::1]:5433", host: "::1", port: 5433},
		{in: "[::1]", host: "::1", port: 5432},
		{in: "postgres://app@ep-cool-1.eu.aws.neon.tech/neondb?sslmode=require", host: "ep-cool-1.eu.aws.neon.tech", port: 5432, ignored: []string{"user", "database", "sslmode=require"}},
		{in: "postgresql://u:secret@h.example:25060/db?sslmode=require&password=x", host: "h.example", port: 25060, ignored: []string{"user", "password", "database", "password", "sslmode=require"}},
		{in: "postgres://a,b/db", err: "several hosts"},
		{in: "postgres:///db?host=/tmp", err: "no host"},
		{in: "mysql://h:3306", err: "only postgres://"},
		{in: "h:99999", err: "invalid port"},
		{in: "", err: "empty"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseUpstream(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %+v, %v; want error with %q", got, err, tc.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Fatalf("error leaks the password: %v", err)
				}
				return
			}
			if err != nil || got.Host != tc.host || got.Port != tc.port || !reflect.DeepEqual(got.Ignored, tc.ignored) {
				t.Fatalf("got %+v, %v; want %s %d %v", got, err, tc.host, tc.port, tc.ignored)
			}
		})
	}
}

func TestConfigPrecedenceFlagsEnvFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("upstream: file.example:1\nca_file: /file/ca.pem\nserver_name: file-name\nlisten: [\"127.0.0.1:7000\", \"127.0.0.1:7001\"]\nconnect_timeout: 3s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGVERIFYPROXY_CA_FILE", "/env/ca.pem")
	t.Setenv("PGVERIFYPROXY_SERVER_NAME", "env-name")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addRunFlags(fs)
	if err := fs.Parse([]string{"--server-name", "flag-name"}); err != nil {
		t.Fatal(err)
	}
	rc, err := loadRunConfig(fs, file)
	if err != nil {
		t.Fatal(err)
	}
	want := runConfig{
		Upstream: "file.example:1", CAFile: "/env/ca.pem", ServerName: "flag-name", Trust: "system", ExpiryWarning: 720 * time.Hour,
		Listen: []string{"127.0.0.1:7000", "127.0.0.1:7001"}, ClientTLS: "allow",
		ConnectTimeout: 3 * time.Second, StartupTimeout: 60 * time.Second, DrainTimeout: 30 * time.Second,
		LogLevel: "info", LogFormat: "text", Negotiation: "postgres", Auth: "auto", ChannelBinding: "prefer", PasswordCommandTimeout: defaultPasswordCommandTimeout, PasswordCommandTTL: defaultPasswordCommandTTL, AdminHosts: []string{},
		AskPasswordFrom: []string{"loopback", "link"}, UnixSocketPermissions: "0777", TargetSessionAttrs: "any", LoadBalanceHosts: "disable",
		TCPKeepalive: 30 * time.Second, ReadyWindow: 30 * time.Second, PrewarmMaxAge: 30 * time.Second, Relay: "loop",
	}
	rc.setBy = nil
	if !reflect.DeepEqual(rc, want) {
		t.Fatalf("got  %+v\nwant %+v", rc, want)
	}
}

func TestConfigDefaultsAndRepeatedListen(t *testing.T) {
	t.Setenv("PGVERIFYPROXY_LISTEN", "")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addRunFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	rc, err := loadRunConfig(fs, "")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rc.Listen, []string{"127.0.0.1:5432"}) {
		t.Fatalf("default listen %q, want loopback only", rc.Listen)
	}
	fs = pflag.NewFlagSet("t", pflag.ContinueOnError)
	addRunFlags(fs)
	fs.Parse([]string{"--listen", "127.0.0.1:1", "--listen", "[::1]:2"})
	rc, _ = loadRunConfig(fs, "")
	if !reflect.DeepEqual(rc.Listen, []string{"127.0.0.1:1", "[::1]:2"}) {
		t.Fatalf("listen %q", rc.Listen)
	}
	t.Setenv("PGVERIFYPROXY_LISTEN", "127.0.0.1:3,127.0.0.1:4")
	fs = pflag.NewFlagSet("t", pflag.ContinueOnError)
	addRunFlags(fs)
	fs.Parse(nil)
	rc, _ = loadRunConfig(fs, "")
	if !reflect.DeepEqual(rc.Listen, []string{"127.0.0.1:3", "127.0.0.1:4"}) {
		t.Fatalf("env listen %q", rc.Listen)
	}
}

func TestConfigFileRejectsUnknownKeys(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("upstream: h:1\ncafile: typo.pem\n"), 0o600)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addRunFlags(fs)
	fs.Parse(nil)
	if _, err := loadRunConfig(fs, file); err == nil || !strings.Contains(err.Error(), "cafile") {
		t.Fatalf("want an unknown-setting error naming cafile, got %v", err)
	}
}

func TestExampleConfigLoads(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addRunFlags(fs)
	fs.Parse(nil)
	rc, err := loadRunConfig(fs, "../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.validate(); err != nil {
		t.Fatalf("example config does not validate: %v", err)
	}
	// Every option is documented in the example.
	data, _ := os.ReadFile("../../config.example.yaml")
	for _, o := range runOptions {
		if !strings.Contains(string(data), "\n"+o.key+":") {
			t.Errorf("config.example.yaml lacks %s", o.key)
		}
	}
}

func TestValidateNamesWhatIsMissing(t *testing.T) {
	tests := []struct {
		rc   runConfig
		want string
	}{
		{runConfig{CAFile: "x", Listen: []string{"127.0.0.1:1"}, LogFormat: "text"}, "--upstream"},
		{runConfig{Upstream: "h", Listen: []string{"127.0.0.1:1"}, Trust: "always", LogFormat: "text"}, "--trust must be system, tofu or live"},
		{runConfig{Upstream: "h", CAFile: "x", Listen: []string{"127.0.0.1:1"}, ClientTLS: "maybe", LogFormat: "text"}, "allow, disable or require"},
		{runConfig{Upstream: "h", CAFile: "x", Listen: []string{"127.0.0.1:1"}, ClientTLSCert: "c", LogFormat: "text"}, "--client-tls-cert and --client-tls-key go together"},
		{runConfig{Upstream: "h", CAFile: "x", Listen: []string{"127.0.0.1:1"}, UpstreamKey: "k", LogFormat: "text"}, "--upstream-cert and --upstream-key go together"},
		{runConfig{Upstream: "h", CAFile: "x", Listen: []string{"127.0.0.1:1"}, Negotiation: "starttls", LogFormat: "text"}, "postgres (SSLRequest, any server) or direct"},
		{runConfig{Upstream: "h", CAFile: "x", Listen: []string{"localhost"}, LogFormat: "text"}, "want HOST:PORT or unix:/DIR[:PORT]"},
	}
	for _, tc := range tests {
		if err := tc.rc.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("validate(%+v) = %v, want mention of %s", tc.rc, err, tc.want)
		}
	}
}

// loadFile loads a run configuration from YAML text and flags.
func loadFile(t *testing.T, yaml string, args ...string) (runConfig, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addRunFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return loadRunConfig(fs, file)
}

func TestRoutesFromConfigFile(t *testing.T) {
	t.Setenv("PGVERIFYPROXY_LISTEN", "")
	rc, err := loadFile(t, `
ca_file: /top/ca.pem
client_tls: disable
negotiation: direct
routes:
  - name: a
    upstream: a.example:5432
    listen: ["127.0.0.1:6001", "unix:/run/a"]
  - upstream: b.example:6543
    server_name: b.internal
    listen: ["127.0.0.1:6002"]
    trust: tofu
    ca_file: ""
    client_tls: require
    negotiation: postgres
    upstream_cert: /b/c.crt
    upstream_key: /b/c.key
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.validate(); err != nil {
		t.Fatal(err)
	}
	got, err := rc.routes()
	if err != nil {
		t.Fatal(err)
	}
	want := []routeConfig{
		{Name: "a", Upstream: "a.example:5432", Listen: []string{"127.0.0.1:6001", "unix:/run/a"}, CAFile: "/top/ca.pem",
			Trust: "system", ClientTLS: "disable", Negotiation: "direct", Auth: "auto", ChannelBinding: "prefer", AskPasswordFrom: []string{"loopback", "link"}, UnixSocketPermissions: "0777", TargetSessionAttrs: "any", LoadBalanceHosts: "disable"},
		// Keys a route leaves out take the top-level value; an explicit
		// ca_file: "" means "use a pin".
		{Name: "b.example:6543", Upstream: "b.example:6543", ServerName: "b.internal", Listen: []string{"127.0.0.1:6002"},
			CAFile: "", Trust: "tofu", ClientTLS: "require", Negotiation: "postgres",
			UpstreamCert: "/b/c.crt", UpstreamKey: "/b/c.key", Auth: "auto", ChannelBinding: "prefer", AskPasswordFrom: []string{"loopback", "link"}, UnixSocketPermissions: "0777", TargetSessionAttrs: "any", LoadBalanceHosts: "disable"},
	}
	for i := range got {
		got[i].set = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("routes:\n got  %+v\n want %+v", got, want)
	}
}

func TestRoutesRefusals(t *testing.T) {
	t.Setenv("PGVERIFYPROXY_LISTEN", "")
	t.Setenv("PGVERIFYPROXY_UPSTREAM", "")
	const two = "routes:\n  - {name: a, upstream: a:1, listen: [\"127.0.0.1:6001\"]}\n  - {name: b, upstream: b:1, listen: [\"127.0.0.1:6002\"]}\n"
	tests := []struct {
		name, yaml string
		args       []string
		want       string
	}{
		{"top-level upstream in file", "upstream: x:1\n" + two, nil, "upstream is set at the top level"},
		{"upstream flag", two, []string{"--upstream", "x:1"}, "upstream is set at the top level"},
		{"listen flag", two, []string{"--listen", "127.0.0.1:7"}, "listen is set at the top level"},
		{"top-level server name", "server_name: s\n" + two, nil, "server_name is set at the top level"},
		{"same name", "routes:\n  - {name: a, upstream: a:1, listen: [\"127.0.0.1:6001\"]}\n  - {name: a, upstream: b:1, listen: [\"127.0.0.1:6002\"]}\n", nil, `the name "a" is used twice`},
		{"same listen address", "routes:\n  - {name: a, upstream: a:1, listen: [\"unix:/run/x\"]}\n  - {name: b, upstream: b:1, listen: [\"unix:/run/x/.s.PGSQL.5432\"]}\n", nil, "is in route a and route b"},
		{"no upstream", "routes:\n  - {listen: [\"127.0.0.1:6001\"]}\n", nil, "routes[0]: no upstream"},
		{"no listen", "routes:\n  - {upstream: a:1}\n", nil, "route a:1: no listen address"},
		{"bad trust in a route", "routes:\n  - {upstream: a:1, listen: [\"127.0.0.1:6001\"], trust: maybe}\n", nil, "route a:1: --trust must be"},
		{"require over unix", "routes:\n  - {upstream: a:1, listen: [\"unix:/run/x\"], client_tls: require}\n", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := loadFile(t, tc.yaml, tc.args...)
			if err == nil {
				err = rc.validate()
			}
			if tc.want == "" {
				// validated later by proxy.New (a route-level rule)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want an error with %q", err, tc.want)
			}
		})
	}
	t.Run("unknown key in a route", func(t *testing.T) {
		_, err := loadFile(t, "routes:\n  - {upstream: a:1, listen: [\"127.0.0.1:6001\"], cafile: x}\n")
		if err == nil || !strings.Contains(err.Error(), "routes[0].cafile") {
			t.Fatalf("got %v; want an unknown-setting error naming routes[0].cafile", err)
		}
	})
}

// TestExampleRoutesLoad uncomments the routes block of config.example.yaml
// (dropping the top-level upstream, as the comment says) and validates it.
func TestExampleRoutesLoad(t *testing.T) {
	t.Setenv("PGVERIFYPROXY_LISTEN", "")
	data, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	inRoutes := false
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "upstream:"), strings.HasPrefix(line, "listen:"), strings.HasPrefix(line, "  - \"127.0.0.1:5432\""):
			continue
		case strings.HasPrefix(line, "# routes:"):
			inRoutes = true
		}
		if inRoutes && strings.HasPrefix(line, "# ") {
			line = strings.TrimPrefix(line, "# ")
		}
		out = append(out, line)
	}
	rc, err := loadFile(t, strings.Join(out, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.validate(); err != nil {
		t.Fatalf("the example routes do not validate: %v", err)
	}
	routes, _ := rc.routes()
	if len(routes) != 6 {
		t.Fatalf("got %d routes from the example, want 6", len(routes))
	}
	ha := routes[5]
	l, err := parseUpstreamList(ha.Upstream)
	if err != nil || len(l.Hosts) != 3 || ha.TargetSessionAttrs != "read-write" {
		t.Fatalf("the example's HA route: %+v, %v, target_session_attrs %q", l, err, ha.TargetSessionAttrs)
	}
}

func TestChainCommandsPickARoute(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("pin_dir: /pins\nroutes:\n  - {name: a, upstream: a:1, listen: [\"127.0.0.1:6001\"]}\n  - {name: b, upstream: b:2, server_name: b.example, listen: [\"127.0.0.1:6002\"], negotiation: direct}\n"), 0o600)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addFlags(fs, trustOptions)
	fs.Parse(nil)
	tc, err := loadTrustConfig(fs, file, "b")
	if err != nil {
		t.Fatal(err)
	}
	if tc.Upstream != "b:2" || tc.ServerName != "b.example" || tc.PinDir != "/pins" || tc.Negotiation != "direct" {
		t.Fatalf("route b gave %+v", tc)
	}
	if _, err := loadTrustConfig(fs, file, "c"); err == nil || !strings.Contains(err.Error(), "routes: a, b") {
		t.Fatalf("unknown route: %v", err)
	}
	if _, err := loadTrustConfig(fs, file, ""); err == nil || !strings.Contains(err.Error(), "--route NAME") {
		t.Fatalf("no route picked: %v", err)
	}
}

func TestRouteInheritanceRules(t *testing.T) {
	t.Setenv("PGVERIFYPROXY_LISTEN", "")
	t.Setenv("PGVERIFYPROXY_CLIENT_TLS", "")
	t.Run("a URI with a password never becomes the route's name", func(t *testing.T) {
		rc, err := loadFile(t, "routes:\n  - {upstream: \"postgres://app:s3cret@db.example:6543/x\", listen: [\"127.0.0.1:6001\"]}\n")
		if err != nil {
			t.Fatal(err)
		}
		routes, err := rc.routes()
		if err != nil || routes[0].Name != "db.example:6543" {
			t.Fatalf("name %q, %v; want db.example:6543", routes[0].Name, err)
		}
	})
	t.Run("certificate and key are inherited only as a pair", func(t *testing.T) {
		rc, err := loadFile(t, "upstream_cert: /top.crt\nupstream_key: /top.key\nclient_tls_cert: /ctop.crt\nclient_tls_key: /ctop.key\n"+
			"routes:\n  - {name: a, upstream: a:1, listen: [\"127.0.0.1:6001\"], upstream_cert: /a.crt}\n"+
			"  - {name: b, upstream: b:1, listen: [\"127.0.0.1:6002\"]}\n")
		if err != nil {
			t.Fatal(err)
		}
		routes, err := rc.routes()
		if err != nil {
			t.Fatal(err)
		}
		if a := routes[0]; a.UpstreamCert != "/a.crt" || a.UpstreamKey != "" || a.ClientTLSCert != "/ctop.crt" {
			t.Fatalf("route a: %+v; want its own certificate, no inherited key", a)
		}
		if err := rc.validate(); err == nil || !strings.Contains(err.Error(), "route a: --upstream-cert and --upstream-key go together") {
			t.Fatalf("validate: %v", err)
		}
		if b := routes[1]; b.UpstreamCert != "/top.crt" || b.UpstreamKey != "/top.key" {
			t.Fatalf("route b: %+v; want the top-level pair", b)
		}
	})
	t.Run("a flag or variable that a route overrides is refused", func(t *testing.T) {
		const file = "routes:\n  - {name: a, upstream: a:1, listen: [\"127.0.0.1:6001\"], client_tls: allow}\n"
		rc, err := loadFile(t, file, "--client-tls", "require")
		if err == nil {
			_, err = rc.routes()
		}
		if err == nil || !strings.Contains(err.Error(), "--client-tls is given for this run and route a sets client_tls itself") {
			t.Fatalf("flag: %v", err)
		}
		t.Setenv("PGVERIFYPROXY_CLIENT_TLS", "require")
		rc, err = loadFile(t, file)
		if err == nil {
			_, err = rc.routes()
		}
		if err == nil || !strings.Contains(err.Error(), "PGVERIFYPROXY_CLIENT_TLS is given for this run") {
			t.Fatalf("environment: %v", err)
		}
		// A flag for a key no route sets is the default of every route.
		t.Setenv("PGVERIFYPROXY_CLIENT_TLS", "")
		rc, err = loadFile(t, file, "--negotiation", "direct")
		if err != nil {
			t.Fatal(err)
		}
		routes, err := rc.routes()
		if err != nil || routes[0].Negotiation != "direct" {
			t.Fatalf("%+v %v", routes, err)
		}
	})
	t.Run("max_connections: a route's own value, else the top level", func(t *testing.T) {
		rc, err := loadFile(t, "max_connections: 7\nroutes:\n  - {name: a, upstream: a:1, listen: [\"127.0.0.1:6001\"], max_connections: 0}\n"+
			"  - {name: b, upstream: b:1, listen: [\"127.0.0.1:6002\"]}\n")
		if err != nil {
			t.Fatal(err)
		}
		routes, err := rc.routes()
		if err != nil {
			t.Fatal(err)
		}
		if routes[0].MaxConnections != 0 || routes[1].MaxConnections != 7 {
			t.Fatalf("max_connections a=%d b=%d, want 0 (its own: no limit) and 7 (inherited)", routes[0].MaxConnections, routes[1].MaxConnections)
		}
		rc, err = loadFile(t, "routes:\n  - {name: a, upstream: a:1, listen: [\"127.0.0.1:6001\"], max_connections: 3}\n", "--max-connections", "5")
		if err == nil {
			_, err = rc.routes()
		}
		if err == nil || !strings.Contains(err.Error(), "route a sets max_connections itself") {
			t.Fatalf("flag vs route: %v", err)
		}
	})
}

func TestOperationsSettingsValidation(t *testing.T) {
	t.Setenv("PGVERIFYPROXY_LISTEN", "")
	tests := []struct {
		name string
		args []string
		want string // "" means valid
	}{
		{"defaults", nil, ""},
		{"negative limit", []string{"--max-connections", "-1"}, "max_connections must be 0 (no limit) or more, not -1"},
		{"negative keepalive", []string{"--tcp-keepalive", "-5s"}, "tcp_keepalive must be 0 (off) or a positive duration"},
		{"keepalive off", []string{"--tcp-keepalive", "0"}, ""},
		{"admin with a tiny ready window", []string{"--admin", "9543", "--ready-window", "1s"}, "ready_window must be at least 3s"},
		{"admin", []string{"--admin", "9543"}, ""},
		{"prewarm", []string{"--prewarm", "4", "--prewarm-max-age", "20s"}, ""},
		{"too much prewarm", []string{"--prewarm", "5000"}, "prewarm must be between 0 (off) and 1000"},
		{"tiny prewarm age", []string{"--prewarm-max-age", "10ms"}, "prewarm_max_age must be at least 1s"},
		{"longest prewarm age", []string{"--prewarm-max-age", "50s"}, ""},
		{"prewarm age past authentication_timeout", []string{"--prewarm-max-age", "51s"}, "prewarm_max_age must be at most 50s, below PostgreSQL's authentication_timeout"},
		{"admin without a port", []string{"--admin", "localhost"}, `admin address "localhost" must be PORT, :PORT or HOST:PORT`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := loadFile(t, "upstream: db.example:5432\n", tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			err = rc.validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("valid settings refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
