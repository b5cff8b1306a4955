//go:build !unix

package chain

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// readPinFile reads a pin file. Outside unix there are no owner and mode
// bits to check; the pin directory's access control list is the user's
// profile's (see the README).
func readPinFile(path string) ([]byte, error) {
	st, err := os.Lstat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, err
		}
		return nil, fmt.Errorf("pin: reading %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("pin: %s is not a regular file (a link?): remove it and pin again (pgverifyproxy chain fetch)", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pin: reading %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPinFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("pin: reading %s: %w", path, err)
	}
	if len(data) > maxPinFileBytes {
		return nil, fmt.Errorf("pin: %s is larger than %d bytes: not a pin file", path, maxPinFileBytes)
	}
	return data, nil
}

// checkPrivate has no owner or mode bits to check outside unix.
func checkPrivate(string, fs.FileInfo) error { return nil }
