package tlsca_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/pkg/tlsca"
)

// TestHostileCADirectories: a CA is not created in a directory others can
// read or change, or that belongs to someone else, and a link planted
// where a key is written is not followed.
func TestHostileCADirectories(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o755)
	if _, err := tlsca.Init(open, nil); err == nil || !strings.Contains(err.Error(), "others may read") {
		t.Fatalf("ca init into a 0755 directory: %v", err)
	}
	if os.Getuid() == 0 {
		theirs := filepath.Join(dir, "theirs")
		os.Mkdir(theirs, 0o700)
		os.Chown(theirs, 65534, 65534)
		if _, err := tlsca.Init(theirs, nil); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("ca init into another user's directory: %v", err)
		}
	}
	if ents, _ := os.ReadDir(open); len(ents) != 0 {
		t.Fatalf("refused init wrote %d files", len(ents))
	}

	// A link where the key's temporary file goes.
	mine := filepath.Join(dir, "mine")
	os.Mkdir(mine, 0o700)
	victim := filepath.Join(dir, "stolen.key")
	os.WriteFile(victim, nil, 0o666)
	os.Symlink(victim, filepath.Join(mine, tlsca.CAKey+".tmp"))
	if _, err := tlsca.Init(mine, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); len(b) != 0 {
		t.Fatal("the CA's key was written through a planted link")
	}
	fi, err := os.Lstat(filepath.Join(mine, tlsca.CAKey))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key: %v %v", fi.Mode(), err)
	}
	// A directory of the symlinked client names serves QEMU and libnbd.
	for _, f := range []string{"ca-cert.pem", "client-cert.pem", "client-key.pem"} {
		if _, err := os.Stat(filepath.Join(mine, "ps", f)); err != nil {
			t.Fatal(err)
		}
	}
}
