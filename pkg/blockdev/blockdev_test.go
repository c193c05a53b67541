package blockdev_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/blockdevtest"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TestDeviceContract runs the Device contract against the memory disk and
// the file disk.
func TestDeviceContract(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		blockdevtest.Run(t, blockdevtest.Options{}, func(t *testing.T) blockdev.Device { return blockdev.NewMemory(blockdevtest.Size) })
	})
	t.Run("file", func(t *testing.T) {
		blockdevtest.Run(t, blockdevtest.Options{}, func(t *testing.T) blockdev.Device {
			f, err := blockdev.CreateFile(filepath.Join(t.TempDir(), "d.img"), blockdevtest.Size)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		})
	})
}

func TestMemorySnapshot(t *testing.T) {
	ctx := context.Background()
	m := blockdev.NewMemory(1 << 20)
	m.WriteAt(ctx, bytes.Repeat([]byte{1}, 8192), 0)
	snap := m.Snapshot()
	m.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 4096)
	snap.WriteAt(ctx, bytes.Repeat([]byte{3}, 10), 100)
	got := make([]byte, 8192)
	snap.ReadAt(ctx, got, 0)
	want := bytes.Repeat([]byte{1}, 8192)
	copy(want[100:], bytes.Repeat([]byte{3}, 10))
	if !bytes.Equal(got, want) {
		t.Fatal("snapshot saw a later write, or lost its own")
	}
	m.ReadAt(ctx, got, 0)
	want = append(bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)...)
	if !bytes.Equal(got, want) {
		t.Fatal("original saw the snapshot's write, or lost its own")
	}
}

// TestFileVersion: a regular file's version moves with a write; a device
// node has none (its times do not follow its blocks).
func TestFileVersion(t *testing.T) {
	ctx := context.Background()
	f, err := blockdev.CreateFile(filepath.Join(t.TempDir(), "disk.img"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v1, ok, err := f.Version()
	if err != nil || !ok || v1.Size != 1<<20 || v1.Ino == 0 {
		t.Fatalf("version of a regular file: %+v %v %v", v1, ok, err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := f.WriteAt(ctx, []byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	if v2, _, _ := f.Version(); v2 == v1 {
		t.Fatal("a write left the file's version as it was")
	}
	dev, err := blockdev.OpenFile("/dev/zero", true)
	if err != nil {
		t.Skip(err)
	}
	defer dev.Close()
	if _, ok, err := dev.Version(); ok || err != nil {
		t.Fatalf("a device node has a version: %v %v", ok, err)
	}
}
