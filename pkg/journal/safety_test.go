package journal_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/blockdevtest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
)

// TestNoLatestPointInsideADrain: a drain (a resync or a bitmap catch-up)
// sends blocks out of write order, so until it ends no state of the
// journal is a real state of the disks; "latest" is refused there and the
// last point before the drain stays the newest.
func TestNoLatestPointInsideADrain(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, journal.CodecZstd, 256<<10)
	// Before the initial copy ended.
	f.append(f.rec(journal.KindDrainBegin), f.write(0, 0, bytes.Repeat([]byte{1}, bs)))
	if _, _, err := f.j.CutPoint(ctx, "vm1", "latest", time.Now()); !errors.Is(err, journal.ErrInconsistent) {
		t.Fatalf("latest during the initial copy: %v, want %v", err, journal.ErrInconsistent)
	}
	f.append(f.rec(journal.KindDrainEnd), f.write(0, bs, bytes.Repeat([]byte{2}, bs)), f.marker())
	before, _, err := f.j.CutPoint(ctx, "vm1", "latest", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A resync opens a drain again.
	f.append(f.rec(journal.KindDrainBegin), f.write(0, 2*bs, bytes.Repeat([]byte{3}, bs)))
	if p, _, err := f.j.CutPoint(ctx, "vm1", "latest", time.Now()); !errors.Is(err, journal.ErrInconsistent) {
		t.Fatalf("latest inside a resync's drain: point %d, %v; want %v", p.ID, err, journal.ErrInconsistent)
	}
	if p, err := f.j.LatestPoint(ctx, "vm1"); err != nil || p.ID != before.ID {
		t.Fatalf("newest point inside the drain: %d, %v; want %d", p.ID, err, before.ID)
	}
	// Once it ends, latest is cut at its end again.
	f.append(f.rec(journal.KindDrainEnd))
	if p, _, err := f.j.CutPoint(ctx, "vm1", "latest", time.Now()); err != nil || p.ID != f.seq {
		t.Fatalf("latest after the drain ended: point %d, %v; want %d", p.ID, err, f.seq)
	}
}

// TestProcessReadsDataBack: a point is offered only after the data it
// depends on was read back from the file and checked. A payload damaged at
// rest after it was acknowledged (or gone) makes processing fail with the
// write's location, and no point of it appears.
func TestProcessReadsDataBack(t *testing.T) {
	for _, damage := range []string{"flipped", "missing"} {
		t.Run(damage, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "j.db")
			j, err := journal.Open(path, journal.Options{})
			if err != nil {
				t.Fatal(err)
			}
			f := &fixture{t: t, j: j, snaps: map[ferry.Seq][][]byte{}, truth: []*blockdev.Memory{blockdev.NewMemory(256 << 10)}}
			f.comp, _ = journal.NewCompressor(journal.CodecRaw)
			f.vm = journal.VM{Name: "vm1", Epoch: 1, BlockSize: bs, Disks: []ferry.Disk{{Name: "os", Size: 256 << 10}}}
			if err := j.CreateVM(ctx, f.vm); err != nil {
				t.Fatal(err)
			}
			f.append(f.rec(journal.KindDrainBegin), f.rec(journal.KindDrainEnd), f.marker())
			if _, err := j.Process(ctx, "vm1", f.seq); err != nil {
				t.Fatal(err)
			}
			w := f.write(0, 5*bs, bytes.Repeat([]byte("damage me "), 2*bs/10+1)[:2*bs])
			f.append(w, f.marker())
			j.Close()
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			key := []byte{0, 0, 0, 0, 0, 0, 0, byte(w.Seq)}
			if err := db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("vm/vm1")).Bucket([]byte("data"))
				if damage == "missing" {
					return b.Delete(key)
				}
				v := append([]byte(nil), b.Get(key)...)
				v[len(v)/3] ^= 0x04
				return b.Put(key, v)
			}); err != nil {
				t.Fatal(err)
			}
			db.Close()
			j, err = journal.Open(path, journal.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			var ce *journal.CorruptError
			if _, err := j.Process(ctx, "vm1", ^ferry.Seq(0)); !errors.As(err, &ce) || ce.Seq != w.Seq || ce.Offset != 5*bs || !errors.Is(err, journal.ErrChecksum) {
				t.Fatalf("process over a %s payload: %v; want a checksum error at seq %d offset %d", damage, err, w.Seq, 5*bs)
			}
			pts, err := j.Points(ctx, "vm1")
			if err != nil || len(pts) != 1 || pts[0].ID != 3 {
				t.Fatalf("points after the failed processing: %+v %v; want only point 3", pts, err)
			}
			if _, _, err := j.CutPoint(ctx, "vm1", "latest", time.Now()); !errors.Is(err, journal.ErrChecksum) {
				t.Fatalf("latest over a %s payload: %v", damage, err)
			}
		})
	}
}

// TestOverlayLeavesTheBaseAlone: a test failover of a VM whose old
// records were folded into a base image (retention) writes into its
// overlay's scratch only. The base is the replica every later point is
// read from; the point itself reads the same afterwards.
func TestOverlayLeavesTheBaseAlone(t *testing.T) {
	ctx := context.Background()
	const size = 256 << 10
	f := newFixture(t, journal.CodecZstd, size)
	f.append(f.rec(journal.KindDrainBegin), f.rec(journal.KindDrainEnd))
	f.append(f.write(0, 0, bytes.Repeat([]byte{1}, 8*bs)), f.marker())
	old := f.seq
	f.append(f.write(0, 4*bs, bytes.Repeat([]byte{2}, 2*bs)), f.marker())
	kept := f.seq
	if _, err := f.j.Process(ctx, "vm1", f.seq); err != nil {
		t.Fatal(err)
	}
	base := blockdev.NewMemory(size)
	if err := f.j.AttachBase(ctx, "vm1", []blockdev.Device{base}); err != nil {
		t.Fatal(err)
	}
	if st, err := f.j.Trim(ctx, "vm1", kept, []blockdev.Device{base}); err != nil || st.PointsDeleted != 1 {
		t.Fatalf("trim to point %d: %+v %v (point %d should go)", kept, st, err, old)
	}
	baseBefore := bytes.Clone(imageOf(t, base))
	scratch := blockdev.NewMemory(size)
	ov, err := f.j.OpenOverlay(ctx, "vm1", kept, 0, scratch)
	if err != nil {
		t.Fatal(err)
	}
	// A whole block the base holds, a partial one, and one past the writes.
	for _, w := range []struct {
		off  int64
		data []byte
	}{{0, bytes.Repeat([]byte{9}, bs)}, {bs + 100, []byte("test failover writes here")}, {20 * bs, bytes.Repeat([]byte{8}, bs)}} {
		if _, err := ov.WriteAt(ctx, w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(imageOf(t, base), baseBefore) {
		t.Fatal("the test failover's writes reached the base (the replica)")
	}
	got := make([]byte, 2*bs)
	ov.ReadAt(ctx, got, 0)
	want := bytes.Repeat([]byte{9}, bs)
	want = append(want, bytes.Repeat([]byte{1}, bs)...)
	copy(want[bs+100:], "test failover writes here")
	if !bytes.Equal(got, want) {
		t.Fatal("the overlay does not show its own writes over the base")
	}
	after := blockdev.NewMemory(size)
	if err := f.j.Materialize(ctx, "vm1", kept, 0, after, true); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(imageOf(t, after), f.snaps[kept][0]) {
		t.Fatal("the point changed under a test failover")
	}
}

func imageOf(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	img := make([]byte, d.Size())
	if _, err := d.ReadAt(context.Background(), img, 0); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestOverlayContract: an overlay is a Device (here of a point with no
// writes, so it starts all zeros).
func TestOverlayContract(t *testing.T) {
	blockdevtest.Run(t, blockdevtest.Options{}, func(t *testing.T) blockdev.Device {
		f := newFixture(t, journal.CodecZstd, blockdevtest.Size)
		f.append(f.rec(journal.KindDrainBegin), f.rec(journal.KindDrainEnd), f.marker())
		ov, err := f.j.OpenOverlay(context.Background(), "vm1", f.seq, 0, blockdev.NewMemory(blockdevtest.Size))
		if err != nil {
			t.Fatal(err)
		}
		return ov
	})
}
