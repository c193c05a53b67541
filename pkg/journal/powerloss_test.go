package journal_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/sim/fault"
)

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestTrimPowerLoss cuts the power at every write and sync the retention
// roll-forward makes to the base images (300 crash points with
// FERRY_FAULTS=full, 60 otherwise), dropping what was not synced and
// sometimes tearing a write: after each, the journal opens, its invariants
// hold, every point that is left reads exactly its ground truth, and the
// roll-forward run again completes with the same points intact.
func TestTrimPowerLoss(t *testing.T) {
	ctx := context.Background()
	want := 60
	switch {
	case os.Getenv("FERRY_FAULTS") == "full":
		want = 300
	case raceEnabled:
		want = 12
	}
	crashes, tried := 0, 0
	for seed := uint64(1); crashes < want; seed++ {
		f := newFixture(t, journal.CodecZstd, 256<<10, 128<<10)
		rng := rand.New(rand.NewPCG(seed, 7))
		var ids []ferry.Seq
		f.append(f.rec(journal.KindDrainBegin), f.rec(journal.KindDrainEnd))
		for i := 0; i < 60; i++ {
			d := rng.IntN(2)
			n := int64(1+rng.IntN(6)) * bs
			off := rng.Int64N((f.vm.Disks[d].Size-n)/bs+1) * bs
			f.append(f.write(d, off, randomData(rng, int(n))))
			if i%6 == 5 {
				m := f.marker()
				f.append(m)
				ids = append(ids, m.Seq)
			}
		}
		if _, err := f.j.Process(ctx, "vm1", f.seq); err != nil {
			t.Fatal(err)
		}
		upTo := ids[len(ids)/2]
		src := f.j.Path()
		for disk := 0; disk < 2; disk++ {
			for op := 1; crashes < want; op++ {
				tried++
				dir := t.TempDir()
				path := filepath.Join(dir, "journal.db")
				copyFile(t, src, path)
				j, err := journal.Open(path, journal.Options{})
				if err != nil {
					t.Fatal(err)
				}
				base := []*fault.Disk{fault.NewDisk(256 << 10), fault.NewDisk(128 << 10)}
				base[disk].CrashAt(op)
				_, err = j.Trim(ctx, "vm1", upTo, []blockdev.Device{base[0], base[1]})
				if err == nil {
					j.Close()
					break // this disk has fewer calls: every crash point of it is done
				}
				if !errors.Is(err, fault.ErrCrashed) {
					t.Fatalf("seed %d disk %d op %d: trim failed on its own: %v", seed, disk, op, err)
				}
				j.Close()
				for _, b := range base {
					b.PowerLoss(op%2 == 0)
				}
				crashes++
				// Restart: the base images are what survived.
				j, err = journal.Open(path, journal.Options{})
				if err != nil {
					t.Fatalf("seed %d disk %d op %d: journal does not open after the power loss: %v", seed, disk, op, err)
				}
				check := func(when string) {
					t.Helper()
					vm, err := j.VM(ctx, "vm1")
					if err != nil {
						t.Fatal(err)
					}
					if vm.BaseSeq > 0 {
						if err := j.AttachBase(ctx, "vm1", []blockdev.Device{base[0], base[1]}); err != nil {
							t.Fatal(err)
						}
					}
					if err := j.Check(ctx); err != nil {
						t.Fatalf("seed %d disk %d op %d %s: %v", seed, disk, op, when, err)
					}
					pts, err := j.Points(ctx, "vm1")
					if err != nil {
						t.Fatal(err)
					}
					for _, p := range pts {
						for d := range 2 {
							img := blockdev.NewMemory(f.vm.Disks[d].Size)
							if err := j.Materialize(ctx, "vm1", p.ID, d, img, true); err != nil {
								t.Fatalf("seed %d disk %d op %d %s: point %d: %v", seed, disk, op, when, p.ID, err)
							}
							got := make([]byte, img.Size())
							img.ReadAt(ctx, got, 0)
							if !bytes.Equal(got, f.snaps[p.ID][d]) {
								t.Fatalf("seed %d disk %d op %d %s: point %d disk %d differs from its ground truth", seed, disk, op, when, p.ID, d)
							}
						}
					}
				}
				check("after the power loss")
				if _, err := j.Trim(ctx, "vm1", upTo, []blockdev.Device{base[0], base[1]}); err != nil {
					t.Fatalf("seed %d disk %d op %d: trim again after the power loss: %v", seed, disk, op, err)
				}
				check("after trimming again")
				j.Close()
			}
		}
	}
	t.Logf("%d power losses during the retention roll-forward (%d runs): every time the journal opened, its checks held and every point left equals its ground truth", crashes, tried)
}

// TestTrimStorageErrors injects a full disk, a failed fsync and a short
// write into the base images of a retention roll-forward: the trim fails
// with that error and deletes no record, every point still reads its
// ground truth, and a later trim on a healthy disk completes. A failed
// fsync is never retried into a false success: the trim is run again
// from the start.
func TestTrimStorageErrors(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		inject func(d *fault.Disk)
		want   error
	}{
		{"ENOSPC on the third write", func(d *fault.Disk) { d.FailAt(3, syscall.ENOSPC) }, syscall.ENOSPC},
		{"EIO on fsync", func(d *fault.Disk) { d.FailSyncs(syscall.EIO) }, syscall.EIO},
		{"short write", func(d *fault.Disk) { d.ShortAt(2, 1024) }, syscall.EIO},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, journal.CodecZstd, 256<<10)
			rng := rand.New(rand.NewPCG(9, 9))
			f.append(f.rec(journal.KindDrainBegin), f.rec(journal.KindDrainEnd))
			var ids []ferry.Seq
			for i := 0; i < 40; i++ {
				f.append(f.write(0, rng.Int64N(60)*bs, randomData(rng, int(1+rng.IntN(4))*bs)))
				if i%5 == 4 {
					m := f.marker()
					f.append(m)
					ids = append(ids, m.Seq)
				}
			}
			if _, err := f.j.Process(ctx, "vm1", f.seq); err != nil {
				t.Fatal(err)
			}
			upTo := ids[len(ids)/2]
			d := fault.NewDisk(256 << 10)
			tc.inject(d)
			want := tc.want
			before, _ := f.j.VM(ctx, "vm1")
			_, err := f.j.Trim(ctx, "vm1", upTo, []blockdev.Device{d})
			if !errors.Is(err, want) {
				t.Fatalf("trim: %v, want %v", err, want)
			}
			after, _ := f.j.VM(ctx, "vm1")
			if after.BaseSeq != before.BaseSeq || after.LastSeq != before.LastSeq {
				t.Fatalf("the failed trim changed the journal: base %d -> %d", before.BaseSeq, after.BaseSeq)
			}
			for _, p := range ids[len(ids)/2:] {
				img := blockdev.NewMemory(256 << 10)
				if err := f.j.Materialize(ctx, "vm1", p, 0, img, true); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, img.Size())
				img.ReadAt(ctx, got, 0)
				if !bytes.Equal(got, f.snaps[p][0]) {
					t.Fatalf("point %d differs from its ground truth after the failed trim", p)
				}
			}
			if _, err := f.j.Trim(ctx, "vm1", upTo, []blockdev.Device{fault.DiskFrom(d.Durable())}); err != nil {
				t.Fatalf("trim on a healthy disk: %v", err)
			}
		})
	}
}
