package objstore_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/processserver"
)

// pointImages reads every disk of every point of every VM of j.
func pointImages(t *testing.T, j *journal.Journal) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	vms, err := j.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, vm := range vms {
		pts, err := j.Points(ctx, vm.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pts {
			for d, disk := range vm.Disks {
				img := make([]byte, disk.Size)
				if err := j.ReadPoint(ctx, vm.Name, p.ID, d, func(e journal.Extent) error {
					copy(img[e.Offset:], e.Data)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				out[fmt.Sprintf("%s/%s/%d", vm.Name, disk.Name, p.ID)] = img
			}
		}
	}
	return out
}

// TestJournalFromTheBucket: a process server's journal, shipped to the
// bucket as a snapshot while its agents keep writing, is rebuilt by
// another from the bucket alone: the same VMs, every recovery point byte
// for byte, the journal's invariants whole; encrypted at rest, the bucket
// holds none of the disks' data in the clear.
func TestJournalFromTheBucket(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	store, dir := open(t, srv, "journals", key)
	ps := ferrytest.StartPS(t, func(c *processserver.Config) { c.ProcessInterval = 50 * time.Millisecond })
	disks := map[string]*blockdev.Memory{}
	for _, vm := range []string{"web-1", "db-1"} {
		disk := blockdev.NewMemory(4 << 20)
		disk.WriteAt(ctx, random(42, 4<<20), 0)
		disks[vm] = disk
		a, err := agent.New(agent.Config{VM: vm, StateDir: filepath.Join(t.TempDir(), vm), Target: ps.Addr,
			Disks:       []agent.Disk{{Name: "os", Device: disk}},
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, IgnorePolicy: true,
			CrashInterval: time.Second, Logger: ferrytest.Logger(t), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Open(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(ctx) })
	}
	ferrytest.WaitFor(t, 30*time.Second, "both VMs with 3 points", func() bool {
		sts, err := ps.Status(ctx, "")
		if err != nil || len(sts) != 2 {
			return false
		}
		for _, st := range sts {
			if st.VM.Points < 3 {
				return false
			}
		}
		return true
	})

	w, err := store.Create(ctx, "journal/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	n, err := ps.Journal().Snapshot(w)
	if err != nil {
		w.Abort()
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// What the original held at the snapshot is what it holds of those
	// points now (points only grow; retention is days away).
	want := pointImages(t, ps.Journal())

	// Rebuilt elsewhere from the bucket alone.
	r, err := store.Open(ctx, "journal/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "journal.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(f, r)
	r.Close()
	if err := f.Close(); err != nil || got != n {
		t.Fatalf("restored %d of %d bytes: %v", got, n, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(path, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	journaltest.MustCheck(t, j)
	restored := pointImages(t, j)
	if len(restored) < 6 {
		t.Fatalf("%d point images restored", len(restored))
	}
	for k, img := range restored {
		if orig, ok := want[k]; !ok || !bytes.Equal(orig, img) {
			t.Fatalf("point %s differs from the original's (%v)", k, ok)
		}
	}
	// The bucket's file holds no 4 KiB of the disks' data in the clear.
	raw, err := os.ReadFile(filepath.Join(dir, "journal", "snapshot"))
	if err != nil {
		t.Fatal(err)
	}
	img := ferrytest.Image(t, disks["web-1"])
	for off := 0; off+4096 <= len(img); off += 1 << 20 {
		if bytes.Contains(raw, img[off:off+4096]) {
			t.Fatalf("the snapshot object holds the disk's bytes at %d in the clear", off)
		}
	}
}
