package journal_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
)

// foldedTruth is what a resync's first pass must be told of a disk: the
// fold of every chunk's block sums, from the ground truth.
func foldedTruth(t *testing.T, d *blockdev.Memory, chunk int64) []uint64 {
	img := make([]byte, d.Size())
	d.ReadAt(context.Background(), img, 0)
	var out []uint64
	for off := int64(0); off < d.Size(); off += chunk {
		out = append(out, ferry.FoldSums(ferry.BlockSums(nil, img[off:min(off+chunk, d.Size())])))
	}
	return out
}

func foldedHashes(t *testing.T, j *journal.Journal, vm ferry.VMID, disk int, chunk int64) []uint64 {
	t.Helper()
	var out []uint64
	_, err := j.EachFoldedHash(context.Background(), vm, disk, chunk, func(_ ferry.Seq, first int64, sums []uint64) error {
		if first != int64(len(out)) {
			t.Fatalf("window starts at chunk %d after %d chunks", first, len(out))
		}
		out = append(out, sums...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalSums(t *testing.T, what string, got, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d hashes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: chunk %d differs from the ground truth", what, i)
		}
	}
}

func hashIndexed(t *testing.T, j *journal.Journal, vm ferry.VMID) bool {
	t.Helper()
	v, err := j.VM(context.Background(), vm)
	if err != nil {
		t.Fatal(err)
	}
	return v.HashIndex
}

// TestHashIndexMatchesTheData appends random writes (zeros, random, text;
// overlapping; a disk whose size is not a whole number of index chunks),
// folds half of them into a base as retention does, and checks after each
// step that the hashes a resync reads from the index (folded chunks of
// several sizes, listed blocks) equal the ground truth. A write that comes
// without its block sums ends the index; the hashes, then read from the
// data, still equal the truth.
func TestHashIndexMatchesTheData(t *testing.T) {
	ctx := context.Background()
	for seed := uint64(1); seed <= 3; seed++ {
		f := newFixture(t, journal.CodecZstd, 1<<20+12<<10, 512<<10)
		if !hashIndexed(t, f.j, "vm1") {
			t.Fatal("a new VM has no hash index")
		}
		rng := rand.New(rand.NewPCG(seed, 7))
		check := func(step string) {
			t.Helper()
			for disk := range f.truth {
				for _, chunk := range []int64{4 << 10, 64 << 10, 1 << 20} {
					equalSums(t, step, foldedHashes(t, f.j, "vm1", disk, chunk), foldedTruth(t, f.truth[disk], chunk))
				}
				n := f.truth[disk].Size() / bs
				only := []uint64{uint64(n - 1), 0, uint64(rng.Int64N(n)), uint64(rng.Int64N(n))}
				sums, _, err := f.j.ChunkHashes(ctx, "vm1", disk, bs, only)
				if err != nil {
					t.Fatal(err)
				}
				for i, b := range only {
					blk := make([]byte, bs)
					f.truth[disk].ReadAt(ctx, blk, int64(b)*bs)
					if sums[i] != xxhash.Sum64(blk) {
						t.Fatalf("%s: disk %d block %d: listed block sum differs from the truth", step, disk, b)
					}
				}
			}
		}
		writes := func(n int) {
			recs := []journal.Record{f.rec(journal.KindDrainBegin)}
			for range n {
				disk := rng.IntN(2)
				size := f.truth[disk].Size()
				blocks := 1 + rng.IntN(40)
				off := rng.Int64N(size/bs-int64(blocks)+1) * bs
				recs = append(recs, f.write(disk, off, randomData(rng, blocks*bs)))
			}
			recs = append(recs, f.rec(journal.KindDrainEnd), f.marker())
			f.append(recs...)
		}
		check("empty")
		writes(60)
		check("after writes")
		// Retention folds the first half into a base.
		if _, err := f.j.Process(ctx, "vm1", f.seq); err != nil {
			t.Fatal(err)
		}
		upTo := f.seq
		base := []blockdev.Device{blockdev.NewMemory(f.truth[0].Size()), blockdev.NewMemory(f.truth[1].Size())}
		writes(60)
		if _, err := f.j.Trim(ctx, "vm1", upTo, base); err != nil {
			t.Fatal(err)
		}
		check("after a trim")
		if !hashIndexed(t, f.j, "vm1") {
			t.Fatal("retention's fold ended the index")
		}
		// A write without block sums ends the index for good.
		begin := f.rec(journal.KindDrainBegin)
		r := f.write(0, 8*bs, bytes.Repeat([]byte("no sums "), 2*bs/8))
		r.BlockSums = nil
		f.append(begin, r, f.rec(journal.KindDrainEnd))
		if hashIndexed(t, f.j, "vm1") {
			t.Fatal("a write without block sums left the index standing")
		}
		writes(10)
		check("without an index")
	}
}

// TestSeedBaseEndsTheIndex: a VM whose disks start from a seed base (a
// master target's original location) holds blocks no write covered that
// are not zeros; its index would call them zeros, so attaching the base
// ends it and hashes come from the data.
func TestSeedBaseEndsTheIndex(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, journal.CodecZstd, 256<<10)
	rng := rand.New(rand.NewPCG(9, 9))
	seed := blockdev.NewMemory(256 << 10)
	img := make([]byte, 256<<10)
	for i := range img {
		img[i] = byte(rng.Uint32())
	}
	seed.WriteAt(ctx, img, 0)
	f.truth[0].WriteAt(ctx, img, 0)
	if err := f.j.AttachBase(ctx, "vm1", []blockdev.Device{seed}); err != nil {
		t.Fatal(err)
	}
	if hashIndexed(t, f.j, "vm1") {
		t.Fatal("a seed base left the index standing")
	}
	begin := f.rec(journal.KindDrainBegin)
	f.append(begin, f.write(0, 4*bs, randomData(rng, 3*bs)), f.rec(journal.KindDrainEnd))
	equalSums(t, "over a seed base", foldedHashes(t, f.j, "vm1", 0, 64<<10), foldedTruth(t, f.truth[0], 64<<10))
	// Retention's own bases keep it: a folded base, on a new VM.
	g := newFixture(t, journal.CodecZstd, 256<<10)
	if err := g.j.AttachFolded(ctx, "vm1", []blockdev.Device{blockdev.NewMemory(256 << 10)}); err != nil {
		t.Fatal(err)
	}
	if !hashIndexed(t, g.j, "vm1") {
		t.Fatal("a folded base ended the index")
	}
}

// TestUnalignedDiskHasNoIndex: a disk whose size is not a whole number of
// blocks has a short last block that the index's 4 KiB sums cannot stand
// for: such a VM is hashed from its data.
func TestUnalignedDiskHasNoIndex(t *testing.T) {
	f := newFixture(t, journal.CodecZstd, 64<<10+100)
	if hashIndexed(t, f.j, "vm1") {
		t.Fatal("a disk of 64 KiB + 100 bytes has a hash index")
	}
	equalSums(t, "unaligned disk", foldedHashes(t, f.j, "vm1", 0, 64<<10), foldedTruth(t, f.truth[0], 64<<10))
}
