package journal_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
)

const bs = blockdev.BlockSize

type fixture struct {
	t     *testing.T
	j     *journal.Journal
	comp  *journal.Compressor
	vm    journal.VM
	seq   ferry.Seq
	truth []*blockdev.Memory
	snaps map[ferry.Seq][][]byte
}

func newFixture(t *testing.T, codec journal.Codec, sizes ...int64) *fixture {
	j := journaltest.MustOpen(t)
	comp, err := journal.NewCompressor(codec)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, j: j, comp: comp, snaps: map[ferry.Seq][][]byte{}}
	f.vm = journal.VM{Name: "vm1", Epoch: 1, BlockSize: bs}
	for i, s := range sizes {
		f.vm.Disks = append(f.vm.Disks, ferry.Disk{Name: ferry.DiskID([]string{"os", "data", "log"}[i]), Size: s})
		f.truth = append(f.truth, blockdev.NewMemory(s))
	}
	if err := j.CreateVM(context.Background(), f.vm); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) rec(kind journal.Kind) journal.Record {
	f.seq++
	return journal.Record{VM: f.vm.Name, Seq: f.seq, Kind: kind}
}

func (f *fixture) write(disk int, off int64, data []byte) journal.Record {
	r := f.rec(journal.KindWrite)
	r.Disk, r.Offset, r.Length, r.Sum = disk, off, len(data), xxhash.Sum64(data)
	r.Codec, r.Payload = f.comp.Encode(nil, data)
	// As the receiver does: the block sums that keep the hash index.
	r.BlockSums = ferry.BlockSums(nil, data)
	f.truth[disk].WriteAt(context.Background(), data, off)
	return r
}

func (f *fixture) marker() journal.Record {
	r := f.rec(journal.KindMarker)
	r.Consistency, r.Time = ferry.Crash, time.Now()
	var imgs [][]byte
	for _, d := range f.truth {
		img := make([]byte, d.Size())
		d.ReadAt(context.Background(), img, 0)
		imgs = append(imgs, img)
	}
	f.snaps[r.Seq] = imgs
	return r
}

func (f *fixture) append(recs ...journal.Record) {
	f.t.Helper()
	if err := f.j.Append(context.Background(), recs); err != nil {
		f.t.Fatal(err)
	}
}

func randomData(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	switch rng.IntN(3) {
	case 0: // zeros
	case 1:
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	default:
		for i := range b {
			b[i] = "ferry replicates blocks "[i%24] ^ byte(rng.IntN(2))
		}
	}
	return b
}

// TestPointsMatchTruth appends random writes and markers across two disks
// and checks every point, materialized, equals the ground truth byte for
// byte, with every codec.
func TestPointsMatchTruth(t *testing.T) {
	for _, codec := range []journal.Codec{journal.CodecZstd, journal.CodecS2, journal.CodecRaw} {
		t.Run(codec.String(), func(t *testing.T) {
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(7, uint64(codec)))
			f := newFixture(t, codec, 1<<20, 512<<10)
			f.append(f.rec(journal.KindDrainBegin), f.rec(journal.KindDrainEnd))
			for round := 0; round < 12; round++ {
				var batch []journal.Record
				for i := 0; i < 20; i++ {
					d := rng.IntN(2)
					nb := int64(1 + rng.IntN(8))
					off := rng.Int64N(f.vm.Disks[d].Size/bs-nb+1) * bs
					batch = append(batch, f.write(d, off, randomData(rng, int(nb*bs))))
				}
				batch = append(batch, f.marker())
				f.append(batch...)
			}
			if pts, _ := f.j.Points(ctx, "vm1"); len(pts) != 0 {
				t.Fatalf("%d points before processing", len(pts))
			}
			st, err := f.j.Process(ctx, "vm1", ^ferry.Seq(0))
			if err != nil || st.Points != 12 || st.Writes != 12*20 {
				t.Fatalf("process: %+v, %v", st, err)
			}
			pts, err := f.j.Points(ctx, "vm1")
			if err != nil || len(pts) != 12 {
				t.Fatalf("points: %d, %v", len(pts), err)
			}
			for _, p := range pts {
				for d := range f.vm.Disks {
					got := blockdev.NewMemory(f.vm.Disks[d].Size)
					if err := f.j.Materialize(ctx, "vm1", p.ID, d, got, true); err != nil {
						t.Fatal(err)
					}
					img := make([]byte, got.Size())
					got.ReadAt(ctx, img, 0)
					if !bytes.Equal(img, f.snaps[p.ID][d]) {
						t.Fatalf("point %d disk %d differs from ground truth", p.ID, d)
					}
					// Onto a dirty target, zeros must be written too.
					dirty := blockdev.NewMemory(f.vm.Disks[d].Size)
					dirty.WriteAt(ctx, bytes.Repeat([]byte{0xAA}, int(dirty.Size())), 0)
					if err := f.j.Materialize(ctx, "vm1", p.ID, d, dirty, false); err != nil {
						t.Fatal(err)
					}
					dirty.ReadAt(ctx, img, 0)
					if !bytes.Equal(img, f.snaps[p.ID][d]) {
						t.Fatalf("point %d disk %d on a dirty target differs from ground truth", p.ID, d)
					}
					// The overlay shows the same disk; its writes stay in
					// its scratch.
					ov, err := f.j.OpenOverlay(ctx, "vm1", p.ID, d, blockdev.NewMemory(f.vm.Disks[d].Size))
					if err != nil {
						t.Fatal(err)
					}
					ov.ReadAt(ctx, img, 0)
					if !bytes.Equal(img, f.snaps[p.ID][d]) {
						t.Fatalf("point %d disk %d through the overlay differs from ground truth", p.ID, d)
					}
					ov.WriteAt(ctx, []byte("test VM scribbles here"), 4096+100)
					part := make([]byte, 8192)
					ov.ReadAt(ctx, part, 4096)
					want := append([]byte(nil), f.snaps[p.ID][d][4096:4096+8192]...)
					copy(want[100:], "test VM scribbles here")
					if !bytes.Equal(part, want) {
						t.Fatal("overlay write not merged into its block")
					}
				}
			}
			// Chunk hashes at the head equal hashes of the truth.
			for d := range f.vm.Disks {
				sums, seq, err := f.j.ChunkHashes(ctx, "vm1", d, 64<<10, nil)
				if err != nil || seq != f.seq {
					t.Fatalf("chunk hashes: seq %d, %v", seq, err)
				}
				img := make([]byte, f.truth[d].Size())
				f.truth[d].ReadAt(ctx, img, 0)
				for c := range sums {
					if want := xxhash.Sum64(img[c*64<<10 : (c+1)*64<<10]); sums[c] != want {
						t.Fatalf("disk %d chunk %d: hash %x, want %x", d, c, sums[c], want)
					}
				}
				// The second level (4 KiB blocks of chosen chunks), served
				// from what the first pass kept.
				blocks := []uint64{17, 3, 100, 0}
				bsums, _, err := f.j.ChunkHashes(ctx, "vm1", d, bs, blocks)
				if err != nil {
					t.Fatal(err)
				}
				for i, b := range blocks {
					if want := xxhash.Sum64(img[b*bs : (b+1)*bs]); bsums[i] != want {
						t.Fatalf("disk %d block %d: hash %x, want %x", d, b, bsums[i], want)
					}
				}
			}
		})
	}
}

func TestAppendRules(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, journal.CodecZstd, 1<<20)
	// A marker before the initial drain ended is refused.
	if err := f.j.Append(ctx, []journal.Record{f.marker()}); !errors.Is(err, journal.ErrInconsistent) {
		t.Fatalf("marker before drain end: %v", err)
	}
	f.seq--
	f.append(f.rec(journal.KindDrainBegin), f.rec(journal.KindDrainEnd))
	// A gap is refused and nothing of the batch is stored.
	good := f.write(0, 0, bytes.Repeat([]byte{1}, bs))
	f.seq++
	gap := f.write(0, bs, bytes.Repeat([]byte{2}, bs))
	if err := f.j.Append(ctx, []journal.Record{good, gap}); !errors.Is(err, journal.ErrSequence) {
		t.Fatalf("gap: %v", err)
	}
	vm, _ := f.j.VM(ctx, "vm1")
	if vm.LastSeq != 2 {
		t.Fatalf("last seq %d after refused batch, want 2", vm.LastSeq)
	}
	p, st, err := f.j.CutPoint(ctx, "vm1", "latest", time.Now())
	if err != nil || p.ID != 2 || st.To != 2 {
		t.Fatalf("cut point: %+v %+v %v", p, st, err)
	}
	if _, _, err := f.j.CutPoint(ctx, "nope", "latest", time.Now()); !errors.Is(err, journal.ErrNoVM) {
		t.Fatalf("unknown vm: %v", err)
	}
}

// TestCorruptionDetected flips a bit of a stored payload and checks that
// reads and Verify report it with its location instead of returning data.
func TestCorruptionDetected(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := dir + "/j.db"
	j, err := journal.Open(path, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	comp, _ := journal.NewCompressor(journal.CodecZstd)
	vm := journal.VM{Name: "vm1", Epoch: 1, BlockSize: bs, Disks: []ferry.Disk{{Name: "os", Size: 1 << 20}}}
	j.CreateVM(ctx, vm)
	data := bytes.Repeat([]byte("corrupt me please "), 1000)[:4*bs]
	codec, payload := comp.Encode(nil, data)
	recs := []journal.Record{
		{VM: "vm1", Seq: 1, Kind: journal.KindDrainBegin},
		{VM: "vm1", Seq: 2, Kind: journal.KindWrite, Offset: 8 * bs, Length: len(data), Sum: xxhash.Sum64(data), Codec: codec, Payload: payload},
		{VM: "vm1", Seq: 3, Kind: journal.KindDrainEnd},
	}
	if err := j.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	j.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("vm/vm1")).Bucket([]byte("data"))
		v := append([]byte(nil), b.Get([]byte{0, 0, 0, 0, 0, 0, 0, 2})...)
		v[len(v)/2] ^= 0x10
		return b.Put([]byte{0, 0, 0, 0, 0, 0, 0, 2}, v)
	})
	db.Close()
	j, _ = journal.Open(path, journal.Options{})
	defer j.Close()
	var ce *journal.CorruptError
	if _, err := j.Verify(ctx, "vm1", 3); !errors.As(err, &ce) || ce.Seq != 2 || ce.Offset != 8*bs {
		t.Fatalf("verify: %v", err)
	}
	err = j.Materialize(ctx, "vm1", 3, 0, blockdev.NewMemory(1<<20), true)
	if !errors.As(err, &ce) || !errors.Is(err, journal.ErrChecksum) {
		t.Fatalf("materialize of a corrupt point: %v", err)
	}
	if err := j.Check(ctx); err == nil {
		t.Fatal("check passed a corrupt journal")
	}
}

// TestBase: with the primary's disk attached as base, points read the
// base where no write covers, chunk hashes cover the base, and Apply turns
// the base into the point writing only the blocks that differ.
func TestBase(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, journal.CodecZstd, 256<<10)
	primary := blockdev.NewMemory(256 << 10)
	rng := rand.New(rand.NewPCG(3, 3))
	img := randomData(rng, 256<<10)
	for img[0] == 0 { // make sure the base is not all zeros
		img = randomData(rng, 256<<10)
	}
	primary.WriteAt(ctx, img, 0)
	f.truth[0].WriteAt(ctx, img, 0)
	if err := f.j.AttachBase(ctx, "vm1", []blockdev.Device{primary}); err != nil {
		t.Fatal(err)
	}
	begin := f.rec(journal.KindDrainBegin)
	same := f.write(0, 8*bs, img[8*bs:10*bs]) // rewrites what is there
	f.append(begin, same, f.write(0, 20*bs, bytes.Repeat([]byte{7}, 3*bs)), f.rec(journal.KindDrainEnd), f.marker())
	p, _, err := f.j.CutPoint(ctx, "vm1", "latest", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := blockdev.NewMemory(256 << 10)
	if err := f.j.Materialize(ctx, "vm1", p.ID, 0, got, true); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 256<<10)
	f.truth[0].ReadAt(ctx, want, 0)
	gotImg := make([]byte, 256<<10)
	got.ReadAt(ctx, gotImg, 0)
	if !bytes.Equal(gotImg, want) {
		t.Fatal("point over a base differs from the truth")
	}
	sums, _, err := f.j.ChunkHashes(ctx, "vm1", 0, 16<<10, []uint64{5, 0, 1})
	if err != nil || len(sums) != 3 || sums[0] != xxhash.Sum64(want[5*16<<10:6*16<<10]) || sums[1] != xxhash.Sum64(want[:16<<10]) {
		t.Fatalf("chunk hashes over a base: %v", err)
	}
	st, err := f.j.Apply(ctx, "vm1", p.ID, 0, primary, true)
	if err != nil || st.Written != 3*bs || st.Read != 5*bs {
		t.Fatalf("apply: %+v %v (want 3 blocks written of 5 read)", st, err)
	}
	primary.ReadAt(ctx, gotImg, 0)
	if !bytes.Equal(gotImg, want) {
		t.Fatal("primary after apply differs from the point")
	}
}
