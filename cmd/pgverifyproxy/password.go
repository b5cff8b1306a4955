package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
)

// storedPassword returns the route's password source for auth relay, or
// nil when clients give their own password. A password file is read (and
// its mode checked) at each login, so rotating it needs no restart; an
// environment variable is read once, at start.
func storedPassword(file, env string) (func() ([]byte, error), error) {
	switch {
	case file != "":
		if _, err := readPasswordFile(file); err != nil {
			return nil, err
		}
		return func() ([]byte, error) { return readPasswordFile(file) }, nil
	case env != "":
		v := os.Getenv(env)
		if v == "" {
			return nil, fmt.Errorf("password_env names %s, which is not set or empty", env)
		}
		return func() ([]byte, error) { return []byte(v), nil }, nil
	}
	return nil, nil
}

// readPasswordFile reads the first line of a 0600 (or stricter) file.
func readPasswordFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("password file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("password file %s has permissions %04o: other users could read it; chmod 0600 %s", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	pw := bytes.Clone(line)
	for i := range b {
		b[i] = 0
	}
	if len(pw) == 0 {
		return nil, errors.New("password file " + path + " is empty")
	}
	return pw, nil
}
