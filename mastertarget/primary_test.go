package mastertarget

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry"
)

// TestFilePrimaryStartsOnTheFailedBackDisks runs the start hook after an
// original and an alternate failback: each time it must get the disks the
// failback wrote.
func TestFilePrimaryStartsOnTheFailedBackDisks(t *testing.T) {
	dir := t.TempDir()
	args := filepath.Join(dir, "args")
	hook := filepath.Join(dir, "start.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\necho \"$@\" > "+args+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	orig := filepath.Join(dir, "web-os.img")
	if err := os.WriteFile(orig, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &FilePrimary{Disks: map[string]string{"web:os": orig, "db:os": "/elsewhere.img"}, AlternateDir: filepath.Join(dir, "alt"), StartHook: hook}
	ctx := context.Background()
	read := func() string {
		b, err := os.ReadFile(args)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if err := p.Start(ctx, "web", ferry.LocationOriginal); err != nil {
		t.Fatal(err)
	}
	if got, want := read(), "web original os="+orig; got != want {
		t.Fatalf("original: hook got %q, want %q", got, want)
	}
	// Before failback made alternate disks there is nothing to start.
	if err := p.Start(ctx, "web", ferry.LocationAlternate); err == nil {
		t.Fatal("started an alternate location without its disks")
	}
	devs, paths, err := p.CreateDisks(ctx, "web", []ferry.Disk{{Name: "os", Size: 8192}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if c, ok := d.(interface{ Close() error }); ok {
			defer c.Close()
		}
	}
	if err := p.Start(ctx, "web", ferry.LocationAlternate); err != nil {
		t.Fatal(err)
	}
	if got, want := read(), "web alternate os="+paths[0]; got != want || paths[0] == orig {
		t.Fatalf("alternate: hook got %q, want %q", got, want)
	}
}
