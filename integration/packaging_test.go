//go:build linux

package integration

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/viper"
	"golang.org/x/crypto/x509roots/fallback/bundle"

	"github.com/pgverifyproxy/pgverifyproxy/chain"
	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/proxy"
)

// The packaging tests check what the Dockerfile and the examples ship: the
// static binary, that it needs neither HOME nor a host trust store, the
// compose file and the systemd unit. Docker itself is not needed: the image
// build is mirrored by building the same way from the same build context.

// dockerBuildStep is the Dockerfile's build command, verbatim: the static
// build below uses the same flags, and the test fails if the Dockerfile
// drifts from it.
const dockerBuildStep = `CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}"`

// repoRoot is the repository's top directory (the tests run in integration/).
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// goBuildStatic builds ./cmd/pgverifyproxy in srcDir as the Dockerfile does.
func goBuildStatic(srcDir, out, version string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version,
		"-o", out, "./cmd/pgverifyproxy")
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, b)
	}
	return nil
}

var static struct {
	once sync.Once
	path string
	err  error
}

// staticBinary builds the release binary once for the package's tests.
func staticBinary(t *testing.T) string {
	t.Helper()
	static.once.Do(func() {
		static.path = filepath.Join(workDir, "static", "pgverifyproxy")
		static.err = goBuildStatic(repoRoot(t), static.path, "test")
	})
	if static.err != nil {
		t.Fatal(static.err)
	}
	return static.path
}

// scratchEnv is the whole environment of a process in a scratch image: no
// HOME, no XDG_*, no PATH, and a host trust store that is empty.
func scratchEnv(t *testing.T) (env []string, emptyDir string) {
	t.Helper()
	dir := t.TempDir()
	emptyFile := filepath.Join(dir, "ca-certificates.crt")
	emptyDir = filepath.Join(dir, "certs")
	if err := os.WriteFile(emptyFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(emptyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{"SSL_CERT_FILE=" + emptyFile, "SSL_CERT_DIR=" + emptyDir}, emptyDir
}

// startExact runs bin with exactly env (nothing inherited) and args, and
// waits until it logs that it is listening.
func startExact(t *testing.T, bin string, env []string, args ...string) *cliProxy {
	t.Helper()
	return startBinary(t, bin, append([]string{}, env...), args...) // non-nil: nothing inherited
}

// runExact runs bin to completion with exactly env; it returns standard
// output, standard error and the exit status.
func runExact(t *testing.T, bin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append([]string{}, env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s %v: %v", bin, args, err)
	}
	return out.String(), errb.String(), 0
}

// TestPackagingStaticBinary: the Dockerfile's build makes a fully static,
// stripped binary without build paths, carrying Mozilla's roots.
func TestPackagingStaticBinary(t *testing.T) {
	df, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(df), dockerBuildStep) {
		t.Fatalf("the Dockerfile does not build with %s: keep this test's build and the image's the same", dockerBuildStep)
	}
	bin := staticBinary(t)

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			t.Error("the binary has a PT_INTERP program header: it needs a dynamic loader, which scratch and distroless/static lack")
		case elf.PT_DYNAMIC:
			t.Error("the binary has a PT_DYNAMIC program header: it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("DT_NEEDED libraries %v (%v), want none", libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary has a symbol table: -ldflags -s not applied")
	}
	for _, s := range []string{".debug_info", ".zdebug_info"} {
		if f.Section(s) != nil {
			t.Errorf("the binary has %s: -ldflags -w not applied", s)
		}
	}

	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if root := repoRoot(t); bytes.Contains(data, []byte(root+"/")) {
		t.Errorf("the binary holds the build directory %s: -trimpath not applied", root)
	}
	// The Mozilla bundle of golang.org/x/crypto/x509roots/fallback, as
	// embedded: every root, in its order.
	var der []byte
	n := 0
	for r := range bundle.Roots() {
		der = append(der, r.Certificate...)
		n++
	}
	if n < 100 || !bytes.Contains(data, der) {
		t.Errorf("the binary does not embed the %d roots of x509roots/fallback (%d bytes)", n, len(der))
	}

	out, stderr, code := runExact(t, bin, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "pgverifyproxy test (go") {
		t.Errorf("version: exit %d, %q %q; want the -X main.version value", code, out, stderr)
	}
}

// TestPackagingNoHomeNoTrustStore runs the static binary as a scratch image
// would: no HOME, no XDG_*, an empty host trust store. With --ca-file and
// --pin-dir it serves psql, and `ready` (the image's healthcheck) passes.
func TestPackagingNoHomeNoTrustStore(t *testing.T) {
	bin := staticBinary(t)
	env, _ := scratchEnv(t)
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)

	// Without a pin directory there is nowhere to derive one from: this is
	// why the image sets PGVERIFYPROXY_PIN_DIR.
	_, stderr, code := runExact(t, bin, env, "run", "--upstream", upstream, "--listen", "127.0.0.1:0")
	if code != 2 || !strings.Contains(stderr, "no pin directory: set --pin-dir (no HOME or XDG_STATE_HOME)") {
		t.Errorf("run without HOME or --pin-dir: exit %d, %q; want exit 2 asking for --pin-dir", code, stderr)
	}

	ports := freePorts(t, 3)
	admin := fmt.Sprintf("127.0.0.1:%d", ports[1])
	pinDir := t.TempDir()
	p := startExact(t, bin, env, "run", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--upstream", upstream,
		"--ca-file", rootFile, "--pin-dir", pinDir, "--admin", admin)
	r := runPsql(t, ports[0], "user="+harness.MD5User+" sslmode=require", harness.MD5Password, "select current_user")
	if r.code != 0 || r.out != harness.MD5User {
		t.Fatalf("psql through the static binary: exit %d out %q err %q\nproxy log:\n%s", r.code, r.out, r.err, p.log())
	}
	waitForLog(t, p, "upstream verified")

	// The healthcheck, in the same empty environment.
	var out string
	waitFor(t, "ready exits 0", func() bool {
		out, _, code = runExact(t, bin, env, "ready", "--admin", admin)
		return code == 0
	})
	if !strings.HasPrefix(out, "ok   default: ") {
		t.Errorf("ready output %q, want the route's ok line", out)
	}
	// As the image runs it: the address from PGVERIFYPROXY_ADMIN.
	if out, stderr, code := runExact(t, bin, append(env, "PGVERIFYPROXY_ADMIN="+admin), "ready"); code != 0 || !strings.Contains(out, "ok   default: ") {
		t.Errorf("ready with PGVERIFYPROXY_ADMIN: exit %d, %q %q", code, out, stderr)
	}
	closed := fmt.Sprintf("127.0.0.1:%d", ports[2])
	if _, stderr, code := runExact(t, bin, env, "ready", "--admin", closed); code != 1 ||
		!strings.Contains(stderr, "cannot reach the admin endpoint at "+closed) || !strings.Contains(stderr, "is the proxy running with --admin "+closed+"?") {
		t.Errorf("ready against a closed port: exit %d, %q", code, stderr)
	}
	if ents, err := os.ReadDir(pinDir); err != nil || len(ents) != 0 {
		t.Errorf("pin directory with --ca-file: %v %v, want it untouched", ents, err)
	}
}

// TestPackagingEmbeddedRootsRefusePrivateCA: with --trust system and no CA
// file, a first start in a scratch environment trusts only the roots built
// into the binary, and the test server's private root is not one of them:
// the proxy refuses it and pins nothing. The control run, with the test
// root as the host's trust store (SSL_CERT_FILE), pins: so the refusal is
// the trust store's answer, and with an empty host store that store is the
// embedded one (cmd/pgverifyproxy's TestRootsEmbeddedFallback shows it
// verifies public chains; TestPackagingStaticBinary that it is in the
// binary).
func TestPackagingEmbeddedRootsRefusePrivateCA(t *testing.T) {
	bin := staticBinary(t)
	scratch, emptyDir := scratchEnv(t)
	upstream := fmt.Sprintf("localhost:%d", cluster.Port)
	ports := freePorts(t, 4)
	pinFile := func(dir string) string { return (&chain.PinStore{Dir: dir}).Path("localhost", cluster.Port, "") }

	// Configured as the image is: PGVERIFYPROXY_* variables and `run`.
	pinDir := t.TempDir()
	admin := fmt.Sprintf("127.0.0.1:%d", ports[1])
	env := append(scratch, "PGVERIFYPROXY_UPSTREAM="+upstream, "PGVERIFYPROXY_TRUST=system",
		"PGVERIFYPROXY_PIN_DIR="+pinDir, "PGVERIFYPROXY_ADMIN="+admin,
		fmt.Sprintf("PGVERIFYPROXY_LISTEN=127.0.0.1:%d", ports[0]))
	p := startExact(t, bin, env, "run")
	waitForLog(t, p, "refusing to relay to this upstream until it can be trusted")
	r := runPsql(t, ports[0], "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
	if r.code == 0 || !strings.Contains(r.err, "not in the system trust store") || !strings.Contains(r.err, "--ca-file") {
		t.Errorf("psql through a proxy that cannot trust its upstream: exit %d out %q err %q\nproxy log:\n%s", r.code, r.out, r.err, p.log())
	}
	if !strings.Contains(p.log(), "not in the system trust store") {
		t.Errorf("the proxy log lacks the reason:\n%s", p.log())
	}
	// The healthcheck says so too, and fails.
	var out string
	var code int
	waitFor(t, "ready reports the refused route", func() bool {
		out, _, code = runExact(t, bin, env, "ready")
		return strings.Contains(out, "not in the system trust store")
	})
	if code != 1 || !strings.HasPrefix(out, "FAIL default: ") {
		t.Errorf("ready with an untrusted upstream: exit %d, %q; want exit 1 and the route's FAIL line", code, out)
	}
	if ents, err := os.ReadDir(pinDir); err != nil || len(ents) != 0 {
		t.Errorf("pin directory after the refusal: %v %v, want nothing pinned", ents, err)
	}

	// Control: the same binary and settings, with the test root as the
	// host's trust store, pin it on first start and serve.
	pinDir2 := t.TempDir()
	env2 := []string{"SSL_CERT_FILE=" + rootFile, "SSL_CERT_DIR=" + emptyDir,
		"PGVERIFYPROXY_UPSTREAM=" + upstream, "PGVERIFYPROXY_TRUST=system", "PGVERIFYPROXY_PIN_DIR=" + pinDir2,
		fmt.Sprintf("PGVERIFYPROXY_LISTEN=127.0.0.1:%d", ports[2])}
	p2 := startExact(t, bin, env2, "run")
	waitForLog(t, p2, "upstream pinned")
	r = runPsql(t, ports[2], "user="+harness.MD5User+" sslmode=disable", harness.MD5Password, "select 1")
	if r.code != 0 || r.out != "1" {
		t.Errorf("control with the test root in SSL_CERT_FILE: exit %d out %q err %q\nproxy log:\n%s", r.code, r.out, r.err, p2.log())
	}
	if _, err := os.Stat(pinFile(pinDir2)); err != nil {
		t.Errorf("control: no pin file: %v", err)
	}
}

// dockerignored reports whether rel (slash-separated, relative to the
// context) is excluded by the .dockerignore patterns: Docker's rules for the
// patterns used there (anchored at the context root, ** for any depth, a
// directory's exclusion covers its contents; no ! exceptions).
func dockerignored(patterns []string, rel string) bool {
	parts := strings.Split(rel, "/")
	for _, p := range patterns {
		p = strings.TrimPrefix(p, "/")
		pp := strings.Split(p, "/")
		for n := 1; n <= len(parts); n++ {
			if globParts(pp, parts[:n]) {
				return true
			}
		}
	}
	return false
}

// globParts matches path components against pattern components.
func globParts(pat, parts []string) bool {
	if len(pat) == 0 {
		return len(parts) == 0
	}
	if pat[0] == "**" {
		for i := 0; i <= len(parts); i++ {
			if globParts(pat[1:], parts[i:]) {
				return true
			}
		}
		return false
	}
	if len(parts) == 0 {
		return false
	}
	ok, err := filepath.Match(pat[0], parts[0])
	return err == nil && ok && globParts(pat[1:], parts[1:])
}

// TestPackagingDockerfile checks the image's settings and that the build
// context .dockerignore leaves builds the binary the Dockerfile's way.
func TestPackagingDockerfile(t *testing.T) {
	root := repoRoot(t)
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Instructions, with continuation lines joined and comments dropped.
	text := strings.ReplaceAll(string(df), "\\\n", " ")
	var instr []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.Join(strings.Fields(line), " ")
		if line != "" && !strings.HasPrefix(line, "#") {
			instr = append(instr, line)
		}
	}
	has := func(re string) bool {
		for _, l := range instr {
			if regexp.MustCompile(re).MatchString(l) {
				return true
			}
		}
		return false
	}
	for _, re := range []string{
		`^FROM golang:1\.2[6-9][-.\w]* AS build$`,
		`^FROM gcr\.io/distroless/static-debian1\d:nonroot$`,
		`^COPY --from=build /out/pgverifyproxy /pgverifyproxy$`,
		`^USER 65532:65532$`,
		`^ENV .*PGVERIFYPROXY_PIN_DIR=/var/lib/pgverifyproxy\b`,
		`^ENV .*PGVERIFYPROXY_LISTEN=0\.0\.0\.0:5432\b`,
		`^ENV .*PGVERIFYPROXY_ADMIN=127\.0\.0\.1:\d+\b`,
		`^VOLUME \["/var/lib/pgverifyproxy"\]$`,
		`^EXPOSE 5432$`,
		`^HEALTHCHECK .*CMD \["/pgverifyproxy", "ready"\]$`,
		`^ENTRYPOINT \["/pgverifyproxy"\]$`,
		`^CMD \["run"\]$`,
	} {
		if !has(re) {
			t.Errorf("the Dockerfile has no instruction matching %s", re)
		}
	}

	// The build context: the repository less .dockerignore.
	ign, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(ign), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			if strings.HasPrefix(l, "!") {
				t.Fatalf(".dockerignore exception %q: this test's matcher does not handle them", l)
			}
			patterns = append(patterns, l)
		}
	}
	for rel, want := range map[string]bool{".git": true, "integration/clients/node/node_modules/pg/package.json": true,
		"pgverifyproxy": true, "cmd/pgverifyproxy/ready_test.go": true, "cmd/pgverifyproxy/testdata/README.md": true,
		"go.mod": false, "go.sum": false, "cmd/pgverifyproxy/main.go": false, "chain/pin.go": false} {
		if got := dockerignored(patterns, rel); got != want {
			t.Errorf(".dockerignore excludes %s: %v, want %v", rel, got, want)
		}
	}
	ctxDir := t.TempDir()
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while we walk (an editor's temporary file)
		}
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		if dockerignored(patterns, filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(ctxDir, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		files++
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build context: %d files", files)
	bin := filepath.Join(t.TempDir(), "pgverifyproxy")
	if err := goBuildStatic(ctxDir, bin, "ctx"); err != nil {
		t.Fatalf("building from the .dockerignore'd context: %v", err)
	}
	if out, _, code := runExact(t, bin, nil, "version"); code != 0 || !strings.HasPrefix(out, "pgverifyproxy ctx ") {
		t.Errorf("version of the context's build: %d %q", code, out)
	}
}

// composeFile is the compose example.
func composeFile(t *testing.T) string {
	return filepath.Join(repoRoot(t), "examples", "docker-compose.yaml")
}

// TestPackagingComposeExample validates examples/docker-compose.yaml with
// docker-compose (v1: `config` needs no Docker engine) and checks its wiring.
func TestPackagingComposeExample(t *testing.T) {
	file := composeFile(t)
	dc, err := exec.LookPath("docker-compose")
	if err != nil {
		// A missing validator is a failure, never a silent skip.
		t.Fatalf("docker-compose not found on PATH: install it (apt-get install --no-install-recommends docker-compose; scripts/setup does): %v", err)
	}
	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGVP_") && !strings.HasPrefix(kv, "COMPOSE_") {
			base = append(base, kv)
		}
	}
	compose := func(env []string, args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, dc, append([]string{"-f", file}, args...)...)
		cmd.Env = append(append([]string{}, base...), env...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatalf("docker-compose: %v", err)
		}
		return string(out), 0
	}
	if out, code := compose([]string{"PGVP_UPSTREAM=db.example.com:5432"}, "config", "-q"); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("docker-compose config -q: exit %d\n%s", code, out)
	}
	// The upstream is required, with a message that says what to set.
	if out, code := compose(nil, "config", "-q"); code == 0 || !strings.Contains(out, "set PGVP_UPSTREAM to your database host:port") {
		t.Errorf("docker-compose config without PGVP_UPSTREAM: exit %d\n%s", code, out)
	}
	out, code := compose([]string{"PGVP_UPSTREAM=db.example.com:5432"}, "config")
	if code != 0 || !strings.Contains(out, "PGVERIFYPROXY_UPSTREAM: db.example.com:5432") {
		t.Errorf("docker-compose config does not pass PGVP_UPSTREAM on: exit %d\n%s", code, out)
	}

	// The wiring, from the file itself.
	v := viper.New()
	v.SetConfigFile(file)
	v.SetConfigType("yaml")
	if err := v.ReadInConfig(); err != nil {
		t.Fatal(err)
	}
	str := func(key, want string) {
		t.Helper()
		if got := v.GetString(key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	const px, app = "services.pgverifyproxy.", "services.app."
	if got := v.GetStringSlice(px + "healthcheck.test"); !slices.Equal(got, []string{"CMD", "/pgverifyproxy", "ready"}) {
		t.Errorf("the proxy's healthcheck is %q, want [CMD /pgverifyproxy ready] (ready asks /readyz)", got)
	}
	// ready finds /readyz through PGVERIFYPROXY_ADMIN.
	if a := v.GetString(px + "environment.pgverifyproxy_admin"); !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("PGVERIFYPROXY_ADMIN = %q, want the container's loopback", a)
	}
	str(app+"depends_on.pgverifyproxy.condition", "service_healthy")
	str(app+"environment.pghost", "pgverifyproxy")
	str(app+"environment.pgsslmode", "disable")
	str(px+"build.context", "..")
	str(px+"environment.pgverifyproxy_listen", "0.0.0.0:5432")
	str(px+"environment.pgverifyproxy_pin_dir", "/var/lib/pgverifyproxy")
	if u := v.GetString(px + "environment.pgverifyproxy_upstream"); !strings.HasPrefix(u, "${PGVP_UPSTREAM:?") {
		t.Errorf("PGVERIFYPROXY_UPSTREAM = %q, want it required from PGVP_UPSTREAM", u)
	}
	if !v.GetBool(px + "read_only") {
		t.Error("the proxy's root file system is not read-only")
	}
	if so := v.GetStringSlice(px + "security_opt"); !slices.Contains(so, "no-new-privileges:true") {
		t.Errorf("the proxy's security_opt %q lacks no-new-privileges:true", so)
	}
	if vols := v.GetStringSlice(px + "volumes"); !slices.Contains(vols, "pins:/var/lib/pgverifyproxy") {
		t.Errorf("the proxy's volumes %q lack the pins volume", vols)
	}
	if !v.IsSet("volumes.pins") && !slices.Contains(keys(v.GetStringMap("volumes")), "pins") {
		t.Error("no named volume pins")
	}
	if d := v.GetDuration(px + "stop_grace_period"); d <= 30*time.Second {
		t.Errorf("stop_grace_period %s, want more than the 30s drain_timeout", d)
	}
	if v.IsSet(px + "ports") {
		t.Error("the proxy publishes ports: only the app should reach it")
	}
	// The app keeps its connection string: the proxy runs on the defaults
	// of its login rules. An app on the compose bridge is on the proxy's
	// link (ask_password_from's default, loopback and link), so an app
	// that switches to sslmode=require against a SCRAM server is asked
	// and logged in by the proxy with channel binding, unchanged
	// (proxy.TestAutoAsksOnlyWhereClientsAreLocalOrCanVerify, "compose
	// network"); and the proxy publishes no port, so nothing arrives
	// through the bridge's gateway.
	for _, k := range []string{"pgverifyproxy_ask_password_from", "pgverifyproxy_auth", "pgverifyproxy_channel_binding", "pgverifyproxy_client_tls"} {
		if v.IsSet(px + "environment." + k) {
			t.Errorf("the compose example sets %s: the example must run on the defaults of the login rules", strings.ToUpper(k))
		}
	}
	if !slices.Equal(proxy.DefaultAskPasswordFrom, []string{proxy.AskLoopback, proxy.AskLink}) {
		t.Errorf("ask_password_from's default is %q: the compose example relies on link", proxy.DefaultAskPasswordFrom)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// unitFile is the systemd example.
func unitFile(t *testing.T) string {
	return filepath.Join(repoRoot(t), "examples", "pgverifyproxy.service")
}

// unitSettings reads KEY=VALUE lines of a unit (last one wins, like the
// single-valued settings checked here).
func unitSettings(text string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") {
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok {
			out[k] = v
		}
	}
	return out
}

// TestPackagingSystemdUnit verifies examples/pgverifyproxy.service with
// systemd-analyze (which works without systemd running), and runs its
// command line: SIGHUP (ExecReload) reloads, SIGTERM (KillSignal) drains.
func TestPackagingSystemdUnit(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found on PATH: install systemd (scripts/setup does): %v", err)
	}
	bin := staticBinary(t)
	b, err := os.ReadFile(unitFile(t))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	s := unitSettings(unit)
	const execStart = "/usr/local/bin/pgverifyproxy run --config /etc/pgverifyproxy/config.yaml --pin-dir ${STATE_DIRECTORY}"
	for k, want := range map[string]string{
		"ExecStart": execStart, "ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM",
		"Restart": "on-failure", "DynamicUser": "yes", "StateDirectory": "pgverifyproxy",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	} {
		if got, ok := s[k]; !ok || got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	stop, err := time.ParseDuration(s["TimeoutStopSec"])
	if err != nil || stop <= 30*time.Second {
		t.Errorf("TimeoutStopSec=%s (%v): want a time above the 30s drain_timeout", s["TimeoutStopSec"], err)
	}

	// systemd-analyze verify checks that ExecStart's binary exists: a copy
	// of the unit with the static binary in its place.
	dir := t.TempDir()
	local := filepath.Join(dir, "pgverifyproxy.service")
	if err := os.WriteFile(local, []byte(strings.Replace(unit, "ExecStart=/usr/local/bin/pgverifyproxy ", "ExecStart="+bin+" ", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	analyze := func(args ...string) (string, int) {
		cmd := exec.Command(sa, args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatalf("systemd-analyze: %v", err)
		}
		return string(out), 0
	}
	// Any output is a warning (an unknown key only warns): none allowed.
	if out, code := analyze("verify", "--man=no", local); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: exit %d\n%s", code, out)
	}
	// The check is real: a missing binary fails it.
	broken := filepath.Join(dir, "broken.service")
	if err := os.WriteFile(broken, []byte(strings.Replace(unit, "ExecStart=/usr/local/bin/pgverifyproxy ", "ExecStart="+filepath.Join(dir, "missing")+" ", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := analyze("verify", "--man=no", broken); code == 0 {
		t.Errorf("systemd-analyze verify passed a unit whose binary is missing:\n%s", out)
	}
	// Hardening: systemd's exposure score at most 2.0 ("OK"; 10 is unprotected).
	if out, code := analyze("security", "--offline=true", "--threshold=20", "--no-pager", local); code != 0 {
		t.Errorf("systemd-analyze security: exposure above 2.0 (exit %d)\n%s", code, out)
	}

	// The command line itself, as systemd would run it: STATE_DIRECTORY
	// set, no HOME.
	ports := freePorts(t, 1)
	state := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, fmt.Sprintf("upstream: localhost:%d\nca_file: %s\nlisten: [127.0.0.1:%d]\n", cluster.Port, rootFile, ports[0]))
	args := strings.Fields(strings.NewReplacer("${STATE_DIRECTORY}", state, "/etc/pgverifyproxy/config.yaml", cfg).Replace(execStart))[1:]
	p := startExact(t, bin, []string{"STATE_DIRECTORY=" + state}, args...)
	if r := runPsql(t, ports[0], "user="+harness.MD5User, harness.MD5Password, "select 1"); r.code != 0 || r.out != "1" {
		t.Fatalf("psql through the unit's command line: %+v\n%s", r, p.log())
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, p, "SIGHUP: reloading the configuration")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, p); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0\n%s", code, p.log())
	}
}
