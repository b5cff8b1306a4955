package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Wine runs Windows programs built by Go on this Linux machine, in a Wine
// prefix of its own.
type Wine struct {
	// Prefix is the Wine prefix (its C: drive and registry).
	Prefix string
	// Env is the environment for wine commands: the caller's plus
	// WINEPREFIX and settings that keep Wine quiet and offline.
	Env []string
}

// shimDef makes bcryptprimitives.dll out of nothing but a forwarder. Go
// 1.24 and later load bcryptprimitives.dll!ProcessPrng at start-up (their
// only random source on Windows 10+); Wine 8.0, Debian 12's, has no such
// DLL, so every Go program dies there with "bcryptprimitives.dll not
// found". ProcessPrng fills a buffer with random bytes and returns TRUE,
// as advapi32!SystemFunction036 (RtlGenRandom) does, with the same
// arguments; the Go runtime reads only the low byte of the result.
const shimDef = `LIBRARY bcryptprimitives
EXPORTS
ProcessPrng=advapi32.SystemFunction036
`

// shimC is the DLL's entry point, which the linker requires.
const shimC = "int __stdcall DllMain(void *h, unsigned reason, void *p) { return 1; }\n"

// PrepareWine makes a Wine prefix in dir ready to run Go programs: it
// initialises the prefix and installs the bcryptprimitives.dll forwarder
// (see shimDef), built with MinGW-w64. It needs wine and
// x86_64-w64-mingw32-gcc (Debian: wine, wine64, gcc-mingw-w64-x86-64).
func PrepareWine(ctx context.Context, dir string) (*Wine, error) {
	for tool, pkg := range map[string]string{"wine": "wine wine64", "wineboot": "wine wine64", "x86_64-w64-mingw32-gcc": "gcc-mingw-w64-x86-64"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("wine: %s not found on PATH: apt-get install %s (scripts/setup does)", tool, pkg)
		}
	}
	w := &Wine{Prefix: filepath.Join(dir, "prefix")}
	w.Env = append(os.Environ(),
		"WINEPREFIX="+w.Prefix,
		"WINEDEBUG=-all",
		// No Mono or Gecko download prompts: the machine has no network.
		"WINEDLLOVERRIDES=mscoree,mshtml=",
	)
	// wineboot leaves Wine's own services (services.exe, rpcss.exe...)
	// running, and they inherit its output: into a file, not a pipe that
	// Wait would wait on until they end.
	logPath := filepath.Join(dir, "wineboot.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	boot := exec.CommandContext(ctx, "wineboot", "--init")
	boot.Env = w.Env
	boot.Stdout, boot.Stderr = logFile, logFile
	err = boot.Run()
	logFile.Close()
	if err != nil {
		out, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("wine: initialising the prefix %s: %v\n%s", w.Prefix, err, out)
	}
	system32 := filepath.Join(w.Prefix, "drive_c", "windows", "system32")
	if _, err := os.Stat(system32); err != nil {
		return nil, fmt.Errorf("wine: the prefix has no system32: %w", err)
	}
	src := filepath.Join(dir, "shim")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(src, "shim.def"), []byte(shimDef), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(src, "shim.c"), []byte(shimC), 0o644); err != nil {
		return nil, err
	}
	cc := exec.CommandContext(ctx, "x86_64-w64-mingw32-gcc", "-shared", "-nostdlib", "-e", "DllMain",
		"-o", filepath.Join(system32, "bcryptprimitives.dll"), "shim.c", "shim.def")
	cc.Dir = src
	if out, err := cc.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("wine: building the bcryptprimitives.dll forwarder: %v\n%s", err, out)
	}
	return w, nil
}

// Close stops the prefix's wineserver and every program still running in
// it.
func (w *Wine) Close() error {
	kill := exec.Command("wineserver", "-k")
	kill.Env = w.Env
	err := kill.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return nil // no server left to kill
	}
	return err
}

// Path returns the Windows form of a path of this machine (Wine maps the
// whole file system to drive Z:).
func (w *Wine) Path(p string) string {
	return `Z:` + strings.ReplaceAll(p, "/", `\`)
}
