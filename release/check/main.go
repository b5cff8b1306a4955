// Command check verifies a goreleaser snapshot in dist/ (see release/snapshot):
//
//   - the six archives (linux, darwin and windows on amd64 and arm64;
//     tar.gz, zip for windows) are there, nothing else is, and each one's
//     sha256 is the one in checksums.txt, as is every file listed there;
//   - each archive holds the binary built for its platform (checked in the
//     executable's headers and build information): CGO off, -trimpath,
//     stripped (-s -w), the snapshot version stamped in;
//   - the binary for this machine's platform, extracted from its archive,
//     runs `version` and reports the snapshot version;
//   - each archive has a CycloneDX SBOM for its platform that lists
//     github.com/jackc/pgx/v5 and github.com/spf13/viper, and exactly the
//     modules (and versions) compiled into that archive's binary;
//   - the Homebrew cask and the Scoop manifest name the right archives
//     with the right checksums.
//
// It uses the standard library only. Usage, from the module root:
//
//	go run ./release/check [-dist dist] [-commit SHA] [-run=false]
//
// It prints one line per check and exits 1 when any failed.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	cfg := defaultConfig()
	flag.StringVar(&cfg.dist, "dist", cfg.dist, "goreleaser's output directory")
	flag.StringVar(&cfg.commit, "commit", "", "full commit hash the snapshot must have been built from (optional)")
	flag.BoolVar(&cfg.runHost, "run", cfg.runHost, "run this machine's binary from its archive")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: check [-dist DIR] [-commit SHA] [-run=false]")
		os.Exit(2)
	}
	c := newChecker(cfg, os.Stdout)
	c.checkAll()
	if c.failed > 0 {
		fmt.Printf("release/check: %d of %d checks FAILED in %s\n", c.failed, c.failed+c.passed, cfg.dist)
		os.Exit(1)
	}
	fmt.Printf("release/check: all %d checks passed in %s\n", c.passed, cfg.dist)
}
