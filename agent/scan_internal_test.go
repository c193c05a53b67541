package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TestScanSkipsOnlySettledUnchangedFiles: a scan pass may skip reading a
// disk image only when the file's version read before its last hashing
// had settled and is still the same. A write moves the modification and
// change times; putting the modification time back (as cp -p or touch -d
// do) still moves the change time; a memory disk has no version and is
// always read.
func TestScanSkipsOnlySettledUnchangedFiles(t *testing.T) {
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := blockdev.CreateFile(img, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, err := New(Config{VM: "vm1", StateDir: t.TempDir(), Target: "127.0.0.1:1", Logger: ferrytest.Logger(t), Mode: ModeScan,
		Disks: []Disk{{Name: "file", Device: f}, {Name: "memory", Device: blockdev.NewMemory(1 << 20)}}})
	if err != nil {
		t.Fatal(err)
	}
	a.scanVersion = make([]*diskVersion, 2)
	if a.unchanged(0) {
		t.Fatal("a disk never hashed counts as unchanged")
	}
	// Hashed right after it was made: its times have not settled.
	if _, err := a.hashDisk(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	if a.scanVersion[0] == nil || a.scanVersion[0].settled {
		t.Fatalf("version of a file changed just now: %+v, want kept and not settled", a.scanVersion[0])
	}
	if a.unchanged(0) {
		t.Fatal("an unsettled version let a pass skip the file")
	}
	// Settled (the file was last changed long ago): the pass may skip it.
	old := time.Now().Add(-time.Hour)
	a.scanVersion[0].settled = true
	if !a.unchanged(0) {
		t.Fatal("an unchanged file with a settled version is read again")
	}
	// A write moves the version.
	if _, err := f.WriteAt(ctx, []byte{1}, 4096); err != nil {
		t.Fatal(err)
	}
	if a.unchanged(0) {
		t.Fatal("a written file counts as unchanged")
	}
	// Hashed long after its last change: settled.
	if err := os.Chtimes(img, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := a.hashDisk(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	// The change time moved with Chtimes itself, just now: not settled.
	if a.scanVersion[0].settled {
		t.Fatal("a version whose change time is new counts as settled")
	}
	a.scanVersion[0].settled = true
	// A write whose modification time is put back still moves the change
	// time.
	time.Sleep(20 * time.Millisecond)
	if _, err := f.WriteAt(ctx, []byte{2}, 8192); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(img, old, old); err != nil {
		t.Fatal(err)
	}
	if a.unchanged(0) {
		t.Fatal("a write hidden by putting the modification time back counts as unchanged")
	}
	// A disk with no version is always read.
	if _, err := a.hashDisk(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	if a.scanVersion[1] != nil || a.unchanged(1) {
		t.Fatal("a memory disk counts as unchanged")
	}
}

func TestVersionSettled(t *testing.T) {
	now := time.Unix(1000, 0)
	v := blockdev.Version{Mtime: now.Add(-3 * time.Second), Ctime: now.Add(-2 * time.Second)}
	if !v.Settled(now, time.Second) {
		t.Fatal("changed 2 s before: not settled with a 1 s margin")
	}
	if v.Settled(now, 2*time.Second) {
		t.Fatal("changed exactly at the margin counts as settled")
	}
	v.Ctime = now.Add(-500 * time.Millisecond)
	if v.Settled(now, time.Second) {
		t.Fatal("the change time is not considered")
	}
	v.Ctime, v.Mtime = now.Add(-5*time.Second), now.Add(-500*time.Millisecond)
	if v.Settled(now, time.Second) {
		t.Fatal("the modification time is not considered")
	}
}
