// Command demo shows pgverifyproxy end to end on this machine alone: it
// makes a private PKI, starts a local PostgreSQL with TLS, puts the real
// pgverifyproxy binary in front of it, runs a query through it as a
// plaintext client, and then shows the proxy refusing a man in the middle.
//
//	go run ./integration/demo          # run the story and exit
//	go run ./integration/demo --keep   # then keep the proxy up for your own psql
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgverifyproxy/pgverifyproxy/integration/harness"
	"github.com/pgverifyproxy/pgverifyproxy/internal/testpki"
)

func main() {
	keep := flag.Bool("keep", false, "keep PostgreSQL and the proxy running after the demo, until Ctrl-C")
	flag.Parse()
	if err := run(*keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo: error:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }
func info(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }

func run(keep bool) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	dir, err := os.MkdirTemp("", "pgverifyproxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("Building pgverifyproxy")
	bin := filepath.Join(dir, "pgverifyproxy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/pgverifyproxy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build (run the demo from the repository root): %w", err)
	}

	step("Making a private PKI: root CA -> intermediate CA -> server certificate for localhost")
	pki, err := testpki.NewPKI()
	if err != nil {
		return err
	}
	rootFile := filepath.Join(dir, "root.crt")
	if err := testpki.WritePEMFile(rootFile, pki.Root.CertPEM); err != nil {
		return err
	}
	info("trust anchor: %s", rootFile)

	step("Starting PostgreSQL with ssl=on and hostssl-only access")
	cl, err := harness.StartCluster(ctx, harness.ClusterOptions{
		ServerCertPEM: pki.Leaf.ChainPEM(pki.Intermediate),
		ServerKeyPEM:  pki.Leaf.KeyPEM,
	})
	if err != nil {
		return err
	}
	defer cl.Stop()
	info("PostgreSQL on %s (plaintext connections are rejected by pg_hba.conf)", cl.Addr())

	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	args := []string{"--upstream", fmt.Sprintf("localhost:%d", cl.Port), "--ca-file", rootFile, "--listen", fmt.Sprintf("127.0.0.1:%d", port)}
	step("Starting the proxy: pgverifyproxy %s", strings.Join(args, " "))
	stopProxy, err := startProxy(ctx, bin, args)
	if err != nil {
		return err
	}
	defer stopProxy()

	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", port, harness.MD5User)
	step("An app connects to the proxy in plaintext and runs a query")
	info("$ PGPASSWORD=%s psql \"%s\" -c \"...\"", harness.MD5Password, dsn)
	query := "select current_user, ssl, version, cipher from pg_stat_ssl where pid = pg_backend_pid()"
	out, err := query1(ctx, dsn, harness.MD5Password, query)
	if err != nil {
		return fmt.Errorf("query through the proxy failed: %w", err)
	}
	info("%s", strings.ReplaceAll(out, "\n", "\n    "))
	info("the server saw a TLS connection (ssl = t): the proxy verified it like sslmode=verify-full")

	step("A man in the middle: a TLS middlebox with its own CA, presenting a certificate for localhost")
	mitm, err := testpki.StartFakeUpstream(testpki.AnswerTLS(pki.OtherLeaf.TLSCertificate(pki.OtherRoot), nil))
	if err != nil {
		return err
	}
	mport, err := harness.FreePort()
	if err != nil {
		return err
	}
	margs := []string{"--upstream", fmt.Sprintf("localhost:%d", mitm.Port), "--ca-file", rootFile, "--listen", fmt.Sprintf("127.0.0.1:%d", mport)}
	info("pgverifyproxy %s", strings.Join(margs, " "))
	stopMITM, err := startProxy(ctx, bin, margs)
	if err != nil {
		return err
	}
	mdsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", mport, harness.MD5User)
	_, err = query1(ctx, mdsn, harness.MD5Password, "select 1")
	stopMITM()
	mitm.Close()
	if err == nil {
		return errors.New("the proxy connected through the man in the middle: this must never happen")
	}
	info("the app got:\n    %s", strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "\n    "))
	if testpki.HasStartupMessage(mitm.Received()) {
		return errors.New("the middlebox received a startup message: this must never happen")
	}
	info("the middlebox received no startup message: no user name, no password")

	if keep {
		step("Still running. Try it yourself, then press Ctrl-C:")
		info("PGPASSWORD=%s psql \"%s\"", harness.MD5Password, dsn)
		info("PGPASSWORD=%s psql \"host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable\"", harness.ScramPassword, port, harness.ScramUser)
		<-ctx.Done()
	}
	step("Done: stopping the proxy and PostgreSQL")
	return nil
}

// startProxy runs the binary, waits for it to listen, and returns a stop
// function. Its log goes to stdout, indented.
func startProxy(ctx context.Context, bin string, args []string) (func(), error) {
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		closed := false
		for sc.Scan() {
			fmt.Println("    [proxy] " + sc.Text())
			if !closed && strings.Contains(sc.Text(), "msg=listening") {
				close(ready)
				closed = true
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	select {
	case <-ready:
		time.Sleep(300 * time.Millisecond) // let the start-up check print
		return stop, nil
	case <-time.After(20 * time.Second):
		stop()
		return nil, errors.New("the proxy did not start listening")
	case <-ctx.Done():
		stop()
		return nil, ctx.Err()
	}
}

// query1 runs sql with psql when it is installed (what a person would
// type), else with pgx, and returns the output or the error a user sees.
func query1(ctx context.Context, dsn, password, sql string) (string, error) {
	if _, err := exec.LookPath("psql"); err == nil {
		cmd := exec.CommandContext(ctx, "psql", "-X", "-d", dsn, "-c", sql)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return "", errors.New(strings.TrimSpace(errb.String()))
		}
		return strings.TrimRight(out.String(), "\n"), nil
	}
	conn, err := pgx.Connect(ctx, dsn+" password="+password)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return "", fmt.Errorf("%s: %s\nHINT: %s", pe.Severity, pe.Message, pe.Hint)
		}
		return "", err
	}
	defer conn.Close(ctx)
	var user, version, cipher string
	var ssl bool
	if err := conn.QueryRow(ctx, sql).Scan(&user, &ssl, &version, &cipher); err != nil {
		return "", err
	}
	return fmt.Sprintf("current_user=%s ssl=%v version=%s cipher=%s", user, ssl, version, cipher), nil
}
