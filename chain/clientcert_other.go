//go:build !unix

package chain

import (
	"fmt"
	"os"
)

// checkKeyFileMode checks that the key file is a regular file. Outside unix
// there are no mode bits to apply libpq's rule to: the file's access
// control list is the user's to set (libpq on Windows does not check it
// either).
func checkKeyFileMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("upstream client certificate: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("upstream client certificate: key file %s is not a regular file", path)
	}
	return nil
}
