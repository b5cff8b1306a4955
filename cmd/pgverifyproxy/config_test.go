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
		LogLevel: "info", LogFormat: "text",
	}
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
		{runConfig{CAFile: "x", Listen: []string{"a"}, LogFormat: "text"}, "--upstream"},
		{runConfig{Upstream: "h", Listen: []string{"a"}, Trust: "always", LogFormat: "text"}, "--trust must be system or tofu"},
		{runConfig{Upstream: "h", CAFile: "x", Listen: []string{"a"}, ClientTLS: "maybe", LogFormat: "text"}, "allow, disable or require"},
		{runConfig{Upstream: "h", CAFile: "x", Listen: []string{"a"}, ClientTLSCert: "c", LogFormat: "text"}, "go together"},
	}
	for _, tc := range tests {
		if err := tc.rc.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("validate(%+v) = %v, want mention of %s", tc.rc, err, tc.want)
		}
	}
}
