package main

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"time"
)

// config is what a snapshot must look like; defaultConfig matches
// .goreleaser.yaml.
type config struct {
	dist    string
	project string // project_name, the archives' and the binary's name
	module  string // the main module
	mainDir string // the main package, relative to the module
	commit  string // when set, the commit the snapshot must come from
	runHost bool   // run this machine's binary
	// archiveFiles are the files every archive holds besides the binary.
	archiveFiles []string
	// sbomModules are modules every SBOM must list.
	sbomModules []string
	// urlPrefix starts every download URL in the cask and the manifest.
	urlPrefix string
}

func defaultConfig() config {
	return config{
		dist:         "dist",
		project:      "pgverifyproxy",
		module:       "github.com/pgverifyproxy/pgverifyproxy",
		mainDir:      "cmd/pgverifyproxy",
		runHost:      true,
		archiveFiles: []string{"README.md", "config.example.yaml"},
		sbomModules:  []string{"github.com/jackc/pgx/v5", "github.com/spf13/viper"},
		urlPrefix:    "https://github.com/pgverifyproxy/pgverifyproxy/releases/download/",
	}
}

type platform struct{ goos, goarch string }

// platforms are the release's targets, in the order they are checked.
var platforms = []platform{
	{"linux", "amd64"}, {"linux", "arm64"},
	{"darwin", "amd64"}, {"darwin", "arm64"},
	{"windows", "amd64"}, {"windows", "arm64"},
}

func (p platform) String() string { return p.goos + "/" + p.goarch }

func (p platform) archiveExt() string {
	if p.goos == "windows" {
		return ".zip"
	}
	return ".tar.gz"
}

func (p platform) exeSuffix() string {
	if p.goos == "windows" {
		return ".exe"
	}
	return ""
}

func (cfg config) archiveName(version string, p platform) string {
	return fmt.Sprintf("%s_%s_%s_%s%s", cfg.project, version, p.goos, p.goarch, p.archiveExt())
}

type checker struct {
	cfg    config
	out    io.Writer
	passed int
	failed int
	// inspect reads a binary's platform, flags and build information;
	// tests replace it.
	inspect func(cfg config, p platform, version string, data []byte) (*debug.BuildInfo, []string)
	// runVersion runs an extracted binary's `version` command.
	runVersion func(path string) (string, error)
	// host is the platform whose binary runVersion can run.
	host platform
}

func newChecker(cfg config, out io.Writer) *checker {
	return &checker{
		cfg:        cfg,
		out:        out,
		inspect:    inspectBinary,
		runVersion: runVersion,
		host:       platform{runtime.GOOS, runtime.GOARCH},
	}
}

func (c *checker) pass(format string, args ...any) {
	c.passed++
	fmt.Fprintf(c.out, "ok    %s\n", fmt.Sprintf(format, args...))
}

func (c *checker) fail(format string, args ...any) {
	c.failed++
	fmt.Fprintf(c.out, "FAIL  %s\n", fmt.Sprintf(format, args...))
}

// check records a pass when problems is empty, else one failure each.
func (c *checker) check(what string, problems []string) {
	if len(problems) == 0 {
		c.pass("%s", what)
		return
	}
	for _, p := range problems {
		c.fail("%s: %s", what, p)
	}
}

func (c *checker) path(name string) string { return filepath.Join(c.cfg.dist, name) }

// metadata is goreleaser's dist/metadata.json.
type metadata struct {
	ProjectName string `json:"project_name"`
	Tag         string `json:"tag"`
	Version     string `json:"version"`
	Commit      string `json:"commit"`
}

var snapshotVersion = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?-SNAPSHOT-([0-9a-f]{7,40})$`)

func (c *checker) checkAll() {
	var meta metadata
	if err := readJSON(c.path("metadata.json"), &meta); err != nil {
		c.fail("metadata.json: %v", err)
		return
	}
	version := meta.Version
	var problems []string
	if meta.ProjectName != c.cfg.project {
		problems = append(problems, fmt.Sprintf("project_name %q, want %q", meta.ProjectName, c.cfg.project))
	}
	m := snapshotVersion.FindStringSubmatch(version)
	if m == nil {
		problems = append(problems, fmt.Sprintf("version %q is not a snapshot version (X.Y.Z-SNAPSHOT-<commit>)", version))
	} else if !strings.HasPrefix(meta.Commit, m[2]) {
		problems = append(problems, fmt.Sprintf("version %q does not name commit %s", version, meta.Commit))
	}
	if c.cfg.commit != "" && meta.Commit != c.cfg.commit {
		problems = append(problems, fmt.Sprintf("built from commit %s, want %s", meta.Commit, c.cfg.commit))
	}
	c.check(fmt.Sprintf("metadata.json: snapshot %s of %s at %.12s", version, meta.ProjectName, meta.Commit), problems)
	if version == "" || strings.ContainsAny(version, `/\`) {
		return
	}

	sums := c.checkChecksums()
	c.checkNoStrayArchives(version)
	c.checkArtifactsJSON(version)

	if c.cfg.runHost && !slices.Contains(platforms, c.host) {
		c.fail("this machine (%s) runs none of the binaries: use -run=false", c.host)
	}
	archiveSums := map[platform]string{}
	for _, p := range platforms {
		if sum, ok := c.checkPlatform(version, p, sums); ok {
			archiveSums[p] = sum
		}
	}
	c.checkCask(version, archiveSums)
	c.checkScoop(version, archiveSums)
}

// checkChecksums verifies every line of checksums.txt against its file
// and returns the sums by file name.
func (c *checker) checkChecksums() map[string]string {
	data, err := os.ReadFile(c.path("checksums.txt"))
	if err != nil {
		c.fail("checksums.txt: %v", err)
		return nil
	}
	sums, problems := parseChecksums(data)
	c.check(fmt.Sprintf("checksums.txt: %d well-formed sha256 lines", len(sums)), problems)
	names := make([]string, 0, len(sums))
	for name := range sums {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		got, err := sha256File(c.path(name))
		switch {
		case err != nil:
			c.fail("checksums.txt lists %s: %v", name, err)
		case got != sums[name]:
			c.fail("checksums.txt lists %s with sha256 %s, the file's is %s", name, sums[name], got)
		default:
			c.pass("sha256 %s  %s (as in checksums.txt)", got, name)
		}
	}
	return sums
}

var checksumLine = regexp.MustCompile(`^([0-9a-f]{64})  ([^/\\]+)$`)

// parseChecksums reads sha256sum-style lines ("<hex>  <name>").
func parseChecksums(data []byte) (map[string]string, []string) {
	sums := map[string]string{}
	var problems []string
	s := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; s.Scan(); n++ {
		line := s.Text()
		m := checksumLine.FindStringSubmatch(line)
		switch {
		case m == nil:
			problems = append(problems, fmt.Sprintf("line %d is not \"<sha256>  <file>\": %q", n, line))
		case sums[m[2]] != "":
			problems = append(problems, fmt.Sprintf("line %d lists %s again", n, m[2]))
		default:
			sums[m[2]] = m[1]
		}
	}
	if len(sums) == 0 && len(problems) == 0 {
		problems = append(problems, "no lines")
	}
	return sums, problems
}

// checkNoStrayArchives verifies that dist/ holds the six archives and no
// other (an old version's, or a platform too many).
func (c *checker) checkNoStrayArchives(version string) {
	want := map[string]bool{}
	for _, p := range platforms {
		want[c.cfg.archiveName(version, p)] = true
	}
	entries, err := os.ReadDir(c.cfg.dist)
	if err != nil {
		c.fail("%s: %v", c.cfg.dist, err)
		return
	}
	var problems []string
	n := 0
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".tar.gz") && !strings.HasSuffix(name, ".zip") {
			continue
		}
		n++
		if !want[name] {
			problems = append(problems, "unexpected archive "+name)
		}
	}
	c.check(fmt.Sprintf("%s holds %d archives, no others", c.cfg.dist, n), problems)
}

// artifact is an entry of goreleaser's dist/artifacts.json.
type artifact struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Goos   string `json:"goos"`
	Goarch string `json:"goarch"`
	Type   string `json:"type"`
}

// checkArtifactsJSON verifies goreleaser's own list: the six archives,
// one SBOM each, the cask and the scoop manifest.
func (c *checker) checkArtifactsJSON(version string) {
	var arts []artifact
	if err := readJSON(c.path("artifacts.json"), &arts); err != nil {
		c.fail("artifacts.json: %v", err)
		return
	}
	want := map[string]platform{}
	for _, p := range platforms {
		want[c.cfg.archiveName(version, p)] = p
	}
	var problems []string
	archives, sboms := map[string]bool{}, map[string]bool{}
	types := map[string]int{}
	for _, a := range arts {
		types[a.Type]++
		switch a.Type {
		case "Archive":
			p, ok := want[a.Name]
			switch {
			case !ok:
				problems = append(problems, "unexpected archive "+a.Name)
			case a.Goos != p.goos || a.Goarch != p.goarch:
				problems = append(problems, fmt.Sprintf("archive %s is listed for %s/%s", a.Name, a.Goos, a.Goarch))
			}
			archives[a.Name] = true
		case "SBOM":
			sboms[a.Name] = true
		}
	}
	for name := range want {
		if !archives[name] {
			problems = append(problems, "archive "+name+" not listed")
		}
		if !sboms[name+".sbom.json"] {
			problems = append(problems, "SBOM "+name+".sbom.json not listed")
		}
	}
	for _, t := range []string{"Homebrew Cask", "Scoop Manifest", "Checksum"} {
		if types[t] != 1 {
			problems = append(problems, fmt.Sprintf("%d artifacts of type %q, want 1", types[t], t))
		}
	}
	sort.Strings(problems)
	c.check(fmt.Sprintf("artifacts.json: %d archives, %d SBOMs, a cask, a scoop manifest, checksums", len(archives), len(sboms)), problems)
}

// checkPlatform checks p's archive, binary and SBOM; it returns the
// archive's sha256 when the archive could be read.
func (c *checker) checkPlatform(version string, p platform, sums map[string]string) (string, bool) {
	name := c.cfg.archiveName(version, p)
	sum, err := sha256File(c.path(name))
	if err != nil {
		c.fail("%s archive: %v", p, err)
		return "", false
	}
	switch listed, ok := sums[name]; {
	case !ok:
		c.fail("%s archive %s: not in checksums.txt", p, name)
	case listed != sum:
		c.fail("%s archive %s: sha256 %s, checksums.txt says %s", p, name, sum, listed)
	default:
		c.pass("%s archive %s present, sha256 matches checksums.txt", p, name)
	}

	bin, problems := readArchive(c.path(name), p, c.cfg.project+p.exeSuffix(), c.cfg.archiveFiles)
	c.check(fmt.Sprintf("%s archive holds %s%s and %s", p, c.cfg.project, p.exeSuffix(), strings.Join(c.cfg.archiveFiles, ", ")), problems)

	var bi *debug.BuildInfo
	if bin != nil {
		bi, problems = c.inspect(c.cfg, p, version, bin)
		c.check(fmt.Sprintf("%s binary: %s executable, CGO_ENABLED=0, -trimpath, stripped, version %s stamped", p, p, version), problems)
		if p == c.host && c.cfg.runHost {
			c.checkRun(p, version, bin)
		}
	}

	sbomName := name + ".sbom.json"
	if _, ok := sums[sbomName]; !ok {
		c.fail("%s SBOM %s: not in checksums.txt", p, sbomName)
	}
	c.check(fmt.Sprintf("%s SBOM %s: CycloneDX for %s, lists %s and the binary's modules", p, sbomName, p, strings.Join(c.cfg.sbomModules, ", ")),
		checkSBOM(c.cfg, c.path(sbomName), p, bi))
	return sum, true
}

// readArchive returns the binary's bytes from an archive and what is
// wrong with the archive.
func readArchive(file string, p platform, binary string, others []string) ([]byte, []string) {
	var bin []byte
	var problems []string
	seen := map[string]bool{}
	add := func(name string, mode os.FileMode, open func() (io.ReadCloser, error)) error {
		if seen[name] {
			problems = append(problems, "holds "+name+" twice")
		}
		seen[name] = true
		if name != binary {
			return nil
		}
		if p.goos != "windows" && mode&0o111 == 0 {
			problems = append(problems, fmt.Sprintf("%s is not executable (mode %v)", name, mode))
		}
		r, err := open()
		if err != nil {
			return err
		}
		defer r.Close()
		bin, err = io.ReadAll(io.LimitReader(r, 1<<30))
		return err
	}
	var err error
	if p.archiveExt() == ".zip" {
		err = readZip(file, add)
	} else {
		err = readTarGz(file, add)
	}
	if err != nil {
		return nil, append(problems, err.Error())
	}
	for _, want := range append([]string{binary}, others...) {
		if !seen[want] {
			problems = append(problems, "no "+want)
		}
	}
	return bin, problems
}

type entryFunc func(name string, mode os.FileMode, open func() (io.ReadCloser, error)) error

func readTarGz(file string, add entryFunc) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		err = add(h.Name, h.FileInfo().Mode(), func() (io.ReadCloser, error) { return io.NopCloser(tr), nil })
		if err != nil {
			return err
		}
	}
}

func readZip(file string, add entryFunc) error {
	zr, err := zip.OpenReader(file)
	if err != nil {
		return err
	}
	defer zr.Close()
	for _, zf := range zr.File {
		if zf.FileInfo().IsDir() {
			continue
		}
		if err := add(zf.Name, zf.Mode(), zf.Open); err != nil {
			return err
		}
	}
	return nil
}

// inspectBinary checks that data is an executable for p, built from the
// main package with CGO off and -trimpath, stripped, with version in it.
func inspectBinary(cfg config, p platform, version string, data []byte) (*debug.BuildInfo, []string) {
	var problems []string
	if err := checkExecutable(p, data); err != nil {
		problems = append(problems, err.Error())
	}
	if !bytes.Contains(data, []byte(version)) {
		problems = append(problems, "the version "+version+" is not in the binary (-X main.version)")
	}
	bi, err := buildinfo.Read(bytes.NewReader(data))
	if err != nil {
		return nil, append(problems, "no Go build information: "+err.Error())
	}
	if want := cfg.module + "/" + cfg.mainDir; bi.Path != want {
		problems = append(problems, fmt.Sprintf("main package %s, want %s", bi.Path, want))
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for k, v := range map[string]string{"GOOS": p.goos, "GOARCH": p.goarch, "CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[k] != v {
			problems = append(problems, fmt.Sprintf("built with %s=%q, want %q", k, settings[k], v))
		}
	}
	sort.Strings(problems)
	return bi, problems
}

// checkExecutable checks the executable format and architecture, and that
// the symbol table (-s) and DWARF (-w) are gone.
func checkExecutable(p platform, data []byte) error {
	r := bytes.NewReader(data)
	var sections []string
	symbols := 0
	switch p.goos {
	case "linux":
		f, err := elf.NewFile(r)
		if err != nil {
			return fmt.Errorf("not an ELF executable: %v", err)
		}
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[p.goarch]
		if f.Machine != want {
			return fmt.Errorf("ELF machine %v, want %v", f.Machine, want)
		}
		for _, s := range f.Sections {
			sections = append(sections, s.Name)
			if s.Name == ".symtab" {
				symbols++
			}
		}
	case "darwin":
		f, err := macho.NewFile(r)
		if err != nil {
			return fmt.Errorf("not a Mach-O executable: %v", err)
		}
		want := map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}[p.goarch]
		if f.Cpu != want {
			return fmt.Errorf("Mach-O CPU %v, want %v", f.Cpu, want)
		}
		for _, s := range f.Sections {
			sections = append(sections, s.Name)
		}
		if f.Symtab != nil {
			for _, s := range f.Symtab.Syms {
				if s.Type&0x0e == 0x0e { // N_SECT: defined here, not imported
					symbols++
				}
			}
		}
	case "windows":
		f, err := pe.NewFile(r)
		if err != nil {
			return fmt.Errorf("not a PE executable: %v", err)
		}
		want := map[string]uint16{"amd64": pe.IMAGE_FILE_MACHINE_AMD64, "arm64": pe.IMAGE_FILE_MACHINE_ARM64}[p.goarch]
		if f.Machine != want {
			return fmt.Errorf("PE machine %#x, want %#x", f.Machine, want)
		}
		for _, s := range f.Sections {
			sections = append(sections, s.Name)
		}
		symbols = int(f.NumberOfSymbols)
	default:
		return fmt.Errorf("no executable check for %s", p)
	}
	for _, s := range sections {
		s = strings.TrimLeft(s, "._")
		if strings.HasPrefix(s, "debug") || strings.HasPrefix(s, "zdebug") {
			return fmt.Errorf("DWARF section %s present: not built with -w", s)
		}
	}
	if symbols > 0 {
		return errors.New("symbol table present: not built with -s")
	}
	return nil
}

// checkRun extracts the host's binary and runs `version`.
func (c *checker) checkRun(p platform, version string, bin []byte) {
	dir, err := os.MkdirTemp("", "release-check-")
	if err != nil {
		c.fail("%s run version: %v", p, err)
		return
	}
	defer os.RemoveAll(dir)
	exe := filepath.Join(dir, c.cfg.project+p.exeSuffix())
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		c.fail("%s run version: %v", p, err)
		return
	}
	out, err := c.runVersion(exe)
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	f := strings.Fields(line)
	switch {
	case err != nil:
		c.fail("%s `%s version`: %v: %q", p, c.cfg.project, err, out)
	case len(f) < 2 || f[0] != c.cfg.project || f[1] != version || !strings.Contains(line, " "+p.String()):
		c.fail("%s `%s version` printed %q, want %q then %s", p, c.cfg.project, line, c.cfg.project+" "+version, p)
	default:
		c.pass("%s binary from its archive runs: %q", p, line)
	}
}

func runVersion(exe string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "version")
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(exe))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cdxBOM is the part of a CycloneDX JSON document that is checked.
type cdxBOM struct {
	BOMFormat   string `json:"bomFormat"`
	SpecVersion string `json:"specVersion"`
	Metadata    struct {
		Component struct {
			Name       string `json:"name"`
			Purl       string `json:"purl"`
			Properties []struct {
				Name  string `json:"name"`
				Value string `json:"value"`
			} `json:"properties"`
		} `json:"component"`
	} `json:"metadata"`
	Components []struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"components"`
}

// checkSBOM checks a cyclonedx-gomod `app` SBOM for p: the main module and
// package, the platform, the required modules, and, when bi is known, the
// exact list of modules compiled into the binary with their versions and
// the Go version (the "std" component).
func checkSBOM(cfg config, file string, p platform, bi *debug.BuildInfo) []string {
	var bom cdxBOM
	if err := readJSON(file, &bom); err != nil {
		return []string{err.Error()}
	}
	var problems []string
	if bom.BOMFormat != "CycloneDX" || bom.SpecVersion == "" {
		problems = append(problems, fmt.Sprintf("bomFormat %q specVersion %q, want CycloneDX", bom.BOMFormat, bom.SpecVersion))
	}
	mc := bom.Metadata.Component
	if mc.Name != cfg.module {
		problems = append(problems, fmt.Sprintf("describes %q, want %s", mc.Name, cfg.module))
	}
	if !strings.HasSuffix(mc.Purl, "#"+cfg.mainDir) {
		problems = append(problems, fmt.Sprintf("main component %q is not the package %s", mc.Purl, cfg.mainDir))
	}
	props := map[string]string{}
	for _, pr := range mc.Properties {
		props[pr.Name] = pr.Value
	}
	for k, v := range map[string]string{"GOOS": p.goos, "GOARCH": p.goarch, "CGO_ENABLED": "0"} {
		if got := props["cdx:gomod:build:env:"+k]; got != v {
			problems = append(problems, fmt.Sprintf("made for %s=%q, want %q", k, got, v))
		}
	}
	listed := map[string]string{}
	for _, comp := range bom.Components {
		listed[comp.Name] = comp.Version
	}
	for _, mod := range cfg.sbomModules {
		if _, ok := listed[mod]; !ok {
			problems = append(problems, "does not list "+mod)
		}
	}
	if bi != nil {
		inBinary := map[string]bool{"std": true}
		if v, ok := listed["std"]; !ok || v != bi.GoVersion {
			problems = append(problems, fmt.Sprintf("lists the standard library as %q, the binary was built with %s", v, bi.GoVersion))
		}
		for _, d := range bi.Deps {
			inBinary[d.Path] = true
			want := []string{d.Version}
			if d.Replace != nil {
				want = append(want, d.Replace.Version)
			}
			v, ok := listed[d.Path]
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("does not list %s %s, which is in the binary", d.Path, d.Version))
			case !slices.Contains(want, v):
				problems = append(problems, fmt.Sprintf("lists %s %s, the binary has %s", d.Path, v, d.Version))
			}
		}
		for name := range listed {
			if !inBinary[name] {
				problems = append(problems, fmt.Sprintf("lists %s, which is not in the binary", name))
			}
		}
	}
	sort.Strings(problems)
	return problems
}

// caskEntry is a url and sha256 of a cask, in an on_macos/on_linux and
// on_intel/on_arm block.
type caskEntry struct{ url, sha256 string }

type cask struct {
	version  string
	binaries []string
	entries  map[platform]caskEntry
}

var (
	caskString = regexp.MustCompile(`^(version|url|sha256|binary) "([^"]*)"`)
	caskBlock  = regexp.MustCompile(`^on_(macos|linux|intel|arm) do$`)
)

// parseCask reads the stanzas of a goreleaser cask that are checked.
func parseCask(data []byte) (cask, error) {
	k := cask{entries: map[platform]caskEntry{}}
	var stack []string // open blocks: "darwin", "linux", "amd64", "arm64" or ""
	where := func() (platform, bool) {
		var p platform
		for _, b := range stack {
			switch b {
			case "darwin", "linux":
				p.goos = b
			case "amd64", "arm64":
				p.goarch = b
			}
		}
		return p, p.goos != "" && p.goarch != ""
	}
	s := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if m := caskBlock.FindStringSubmatch(line); m != nil {
			stack = append(stack, map[string]string{"macos": "darwin", "linux": "linux", "intel": "amd64", "arm": "arm64"}[m[1]])
			continue
		}
		if strings.HasSuffix(line, " do") {
			stack = append(stack, "")
			continue
		}
		if line == "end" {
			if len(stack) == 0 {
				return k, fmt.Errorf("line %d: end without a block", n)
			}
			stack = stack[:len(stack)-1]
			continue
		}
		m := caskString.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch m[1] {
		case "version":
			k.version = m[2]
		case "binary":
			k.binaries = append(k.binaries, m[2])
		case "url", "sha256":
			p, ok := where()
			if !ok {
				return k, fmt.Errorf("line %d: %s outside an on_macos/on_linux and on_intel/on_arm block", n, m[1])
			}
			e := k.entries[p]
			if m[1] == "url" {
				e.url = m[2]
			} else {
				e.sha256 = m[2]
			}
			k.entries[p] = e
		}
	}
	return k, s.Err()
}

func (c *checker) checkCask(version string, sums map[platform]string) {
	name := filepath.Join("homebrew", "Casks", c.cfg.project+".rb")
	data, err := os.ReadFile(c.path(name))
	if err != nil {
		c.fail("homebrew cask: %v", err)
		return
	}
	k, err := parseCask(data)
	if err != nil {
		c.fail("homebrew cask %s: %v", name, err)
		return
	}
	var problems []string
	if k.version != version {
		problems = append(problems, fmt.Sprintf("version %q, want %q", k.version, version))
	}
	if !slices.Contains(k.binaries, c.cfg.project) {
		problems = append(problems, fmt.Sprintf("binaries %q, want %s", k.binaries, c.cfg.project))
	}
	var want []platform
	for _, p := range platforms {
		if p.goos == "darwin" || p.goos == "linux" {
			want = append(want, p)
		}
	}
	problems = append(problems, c.checkDownloads("cask", version, want, sums, func(p platform) (string, string, bool) {
		e, ok := k.entries[p]
		return strings.ReplaceAll(e.url, "#{version}", k.version), e.sha256, ok
	}, len(k.entries))...)
	c.check(fmt.Sprintf("homebrew cask %s: version %s, %d archives with their sha256", name, k.version, len(k.entries)), problems)
}

// scoopManifest is the part of a Scoop manifest that is checked.
type scoopManifest struct {
	Version      string `json:"version"`
	Architecture map[string]struct {
		URL  string   `json:"url"`
		Bin  []string `json:"bin"`
		Hash string   `json:"hash"`
	} `json:"architecture"`
}

func (c *checker) checkScoop(version string, sums map[platform]string) {
	name := filepath.Join("scoop", c.cfg.project+".json")
	var man scoopManifest
	if err := readJSON(c.path(name), &man); err != nil {
		c.fail("scoop manifest: %v", err)
		return
	}
	var problems []string
	if man.Version != version {
		problems = append(problems, fmt.Sprintf("version %q, want %q", man.Version, version))
	}
	archKey := map[string]string{"amd64": "64bit", "arm64": "arm64"}
	for _, goarch := range []string{"amd64", "arm64"} {
		if a, ok := man.Architecture[archKey[goarch]]; ok && !slices.Equal(a.Bin, []string{c.cfg.project + ".exe"}) {
			problems = append(problems, fmt.Sprintf("%s bin %q, want [%s.exe]", archKey[goarch], a.Bin, c.cfg.project))
		}
	}
	want := []platform{{"windows", "amd64"}, {"windows", "arm64"}}
	problems = append(problems, c.checkDownloads("manifest", version, want, sums, func(p platform) (string, string, bool) {
		a, ok := man.Architecture[archKey[p.goarch]]
		return a.URL, a.Hash, ok
	}, len(man.Architecture))...)
	c.check(fmt.Sprintf("scoop manifest %s: version %s, %d archives with their sha256", name, man.Version, len(man.Architecture)), problems)
}

// checkDownloads checks that a package manager's file names exactly the
// archives of want, under urlPrefix, with their sha256.
func (c *checker) checkDownloads(what, version string, want []platform, sums map[platform]string, get func(platform) (url, sum string, ok bool), count int) []string {
	var problems []string
	if count != len(want) {
		problems = append(problems, fmt.Sprintf("%d downloads, want %d", count, len(want)))
	}
	for _, p := range want {
		url, sum, ok := get(p)
		archive := c.cfg.archiveName(version, p)
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("no download for %s", p))
			continue
		case !strings.HasPrefix(url, c.cfg.urlPrefix) || path.Base(url) != archive:
			problems = append(problems, fmt.Sprintf("%s url %q, want %s<tag>/%s", p, url, c.cfg.urlPrefix, archive))
		}
		if actual, ok := sums[p]; !ok || sum != actual {
			problems = append(problems, fmt.Sprintf("%s sha256 %q, the archive's is %q", p, sum, actual))
		}
	}
	return problems
}

func readJSON(file string, v any) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %v", file, err)
	}
	return nil
}

func sha256File(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
