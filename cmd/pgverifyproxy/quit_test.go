package main

import (
	"os"
	"strings"
	"testing"
)

func TestQuitRequests(t *testing.T) {
	ch := make(chan os.Signal, 1)
	if quitRequests(false, ch) != nil {
		t.Fatal("admin_quit off: Options.Quit must be nil (the path then answers 404)")
	}
	quit := quitRequests(true, ch)
	quit("127.0.0.1:40000")
	quit("127.0.0.1:40001") // does not block: one waiting request is enough
	sig := <-ch
	if got, want := sig.String(), "POST /quitquitquit from 127.0.0.1:40000"; got != want {
		t.Errorf("signal %q, want %q", got, want)
	}
	select {
	case s := <-ch:
		t.Errorf("a second request was queued: %v", s)
	default:
	}
}

func TestAdminQuitOption(t *testing.T) {
	t.Setenv("PGVERIFYPROXY_LISTEN", "")
	rc, err := loadFile(t, "upstream: db.example.com:5432\nca_file: /ca.pem\nadmin: \"9543\"\nadmin_quit: true\n")
	if err != nil {
		t.Fatal(err)
	}
	if !rc.AdminQuit || rc.setBy["admin_quit"] != "file" {
		t.Errorf("admin_quit from the file: %v (set by %q)", rc.AdminQuit, rc.setBy["admin_quit"])
	}
	if err := rc.validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
	rc, err = loadFile(t, "upstream: db.example.com:5432\nca_file: /ca.pem\n", "--admin-quit")
	if err != nil {
		t.Fatal(err)
	}
	if !rc.AdminQuit {
		t.Error("--admin-quit not applied")
	}
	if err := rc.validate(); err == nil || !strings.Contains(err.Error(), "admin_quit needs the admin endpoint") {
		t.Errorf("validate without admin = %v, want the admin_quit error", err)
	}
	t.Setenv("PGVERIFYPROXY_ADMIN_QUIT", "true")
	rc, err = loadFile(t, "upstream: db.example.com:5432\nca_file: /ca.pem\nadmin: \"9543\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if !rc.AdminQuit || rc.setBy["admin_quit"] != "environment" {
		t.Errorf("PGVERIFYPROXY_ADMIN_QUIT: %v (set by %q)", rc.AdminQuit, rc.setBy["admin_quit"])
	}
	fs := newRootCmd().Flags()
	if f := fs.Lookup("admin-quit"); f == nil || f.DefValue != "false" || !strings.Contains(f.Usage, "anyone who can reach the admin address can then stop the proxy") {
		t.Errorf("--admin-quit flag: %+v", f)
	}
}
