package tier_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/objstore"
	"github.com/ferrydr/ferry/pkg/tier"
)

const vm = ferry.VMID("web-1")

var storeKey = bytes.Repeat([]byte{9}, 32)

// stream writes a VM's records into a journal, as ingest would, and keeps
// the ground truth of every marker.
type stream struct {
	t     *testing.T
	j     *journal.Journal
	comp  *journal.Compressor
	rng   *rand.Rand
	seq   ferry.Seq
	truth *blockdev.Memory
	snaps map[ferry.Seq][]byte
}

// diskSize is not a whole number of the base images' 1 MiB runs.
const diskSize = 1<<20 + 12<<10

func openJournal(t *testing.T, key []byte) *journal.Journal {
	t.Helper()
	j, err := journal.Open(filepath.Join(t.TempDir(), "journal.db"), journal.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		journaltest.MustCheck(t, j)
		j.Close()
	})
	return j
}

func newStream(t *testing.T, j *journal.Journal, seed uint64) *stream {
	comp, err := journal.NewCompressor(journal.CodecZstd)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.CreateVM(context.Background(), journal.VM{Name: vm, Epoch: 3, BlockSize: blockdev.BlockSize,
		Disks: []ferry.Disk{{Name: "os", Size: diskSize}}}); err != nil {
		t.Fatal(err)
	}
	return &stream{t: t, j: j, comp: comp, rng: rand.New(rand.NewPCG(seed, seed)), truth: blockdev.NewMemory(diskSize), snaps: map[ferry.Seq][]byte{}}
}

func (s *stream) rec(kind journal.Kind) journal.Record {
	s.seq++
	return journal.Record{VM: vm, Seq: s.seq, Kind: kind}
}

func (s *stream) write() journal.Record {
	n := (1 + s.rng.IntN(8)) * blockdev.BlockSize
	off := int64(s.rng.IntN(diskSize/blockdev.BlockSize-8)) * blockdev.BlockSize
	data := make([]byte, n)
	if s.rng.IntN(4) > 0 {
		for i := range data {
			data[i] = byte(s.rng.Uint32() >> uint(i%3))
		}
	}
	r := s.rec(journal.KindWrite)
	r.Disk, r.Offset, r.Length, r.Sum = 0, off, n, xxhash.Sum64(data)
	r.Codec, r.Payload = s.comp.Encode(nil, data)
	r.BlockSums = ferry.BlockSums(nil, data)
	s.truth.WriteAt(context.Background(), data, off)
	return r
}

func (s *stream) marker(c ferry.Consistency, tag string) journal.Record {
	r := s.rec(journal.KindMarker)
	r.Consistency, r.Tag, r.Time = c, tag, time.Unix(1_800_000_000, int64(s.seq)).UTC()
	img := make([]byte, diskSize)
	s.truth.ReadAt(context.Background(), img, 0)
	s.snaps[r.Seq] = img
	return r
}

// batch makes n writes and a marker, appended to the journal.
func (s *stream) batch(n int) []journal.Record {
	s.t.Helper()
	var recs []journal.Record
	first := s.seq == 0
	if first {
		recs = append(recs, s.rec(journal.KindDrainBegin))
	}
	for range n {
		recs = append(recs, s.write())
	}
	if first {
		recs = append(recs, s.rec(journal.KindDrainEnd))
	}
	c := ferry.Crash
	if s.rng.IntN(3) == 0 {
		c = ferry.App
	}
	recs = append(recs, s.marker(c, fmt.Sprintf("m%d", s.seq+1)))
	if err := s.j.Append(context.Background(), recs); err != nil {
		s.t.Fatal(err)
	}
	return recs
}

func openStore(t *testing.T, srv *ferrytest.S3, bucket string) *objstore.Store {
	t.Helper()
	cfg := objstore.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: bucket, Prefix: "site-b", Key: storeKey}
	if err := objstore.CreateBucket(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	st, err := objstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func term(n uint64) func(ferry.VMID) uint64 { return func(ferry.VMID) uint64 { return n } }

// samePoints checks that j holds exactly want's points and that each of
// them reads back, byte for byte, as the ground truth at its marker (or
// as src reads it, for a point that is not at a marker).
func samePoints(t *testing.T, j, src *journal.Journal, s *stream, want []ferry.Point) {
	t.Helper()
	ctx := context.Background()
	got, err := j.Points(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d points, want %d", len(got), len(want))
	}
	for i, p := range got {
		w := want[i]
		if p.ID != w.ID || p.Consistency != w.Consistency || p.Tag != w.Tag || !p.Time.Equal(w.Time) {
			t.Fatalf("point %d: %+v, want %+v", i, p, w)
		}
		truth, ok := s.snaps[p.ID]
		if !ok {
			truth = image(t, src, p.ID)
		}
		if img := image(t, j, p.ID); !bytes.Equal(img, truth) {
			t.Fatalf("point %d: the restored disk differs from the ground truth", p.ID)
		}
	}
}

func image(t *testing.T, j *journal.Journal, id ferry.Seq) []byte {
	t.Helper()
	img := make([]byte, diskSize)
	if err := j.ReadPoint(context.Background(), vm, id, 0, func(e journal.Extent) error {
		copy(img[e.Offset:], e.Data)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestShipAndRestore: group commits shipped as they are made, a state
// shipped midway, more records after it; another journal (with its own
// key) is rebuilt from the bucket alone with every point as it was (the
// one cut without a marker and the one made crash-consistent too) and
// every point's disk equal to the ground truth byte for byte.
func TestShipAndRestore(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "ship")
	src := openJournal(t, bytes.Repeat([]byte{1}, 32))
	s := newStream(t, src, 1)
	tr := tier.New(tier.Config{Store: st})
	for range 6 {
		if err := tr.Ship(ctx, src, term(5), s.batch(1+s.rng.IntN(20))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	// A point without a marker ("latest") and a consistency changed.
	tail := []journal.Record{s.write()}
	if err := src.Append(ctx, tail); err != nil {
		t.Fatal(err)
	}
	if err := tr.Ship(ctx, src, term(5), tail); err != nil {
		t.Fatal(err)
	}
	cut, _, err := src.CutPoint(ctx, vm, "latest", time.Unix(1_800_000_500, 0))
	if err != nil {
		t.Fatal(err)
	}
	pts, _ := src.Points(ctx, vm)
	if err := src.SetConsistency(ctx, vm, []ferry.Seq{pts[0].ID}, ferry.Crash); err != nil {
		t.Fatal(err)
	}
	state, err := tier.StateOf(ctx, src, vm, 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}
	// Records after the state: their marker becomes a point on restore.
	if err := tr.Ship(ctx, src, term(5), s.batch(7)); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	if end, err := tr.End(ctx, vm); err != nil || end != s.seq {
		t.Fatalf("end %d %v, want %d", end, err, s.seq)
	}
	names, err := tr.VMs(ctx)
	if err != nil || len(names) != 1 || names[0] != vm {
		t.Fatalf("vms %v %v", names, err)
	}

	dst := openJournal(t, bytes.Repeat([]byte{2}, 32))
	rs, err := tier.New(tier.Config{Store: st}).Restore(ctx, dst, vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Kept || rs.End != s.seq || rs.Segments != 8 || rs.Records != int(s.seq) {
		t.Fatalf("restore %+v, want %d records in 8 segments", rs, s.seq)
	}
	want, _ := src.Points(ctx, vm)
	samePoints(t, dst, src, s, want)
	if _, ok := s.snaps[cut.ID]; ok {
		t.Fatal("the cut point fell on a marker: it tests nothing")
	}
	got, _ := dst.VM(ctx, vm)
	if got.Epoch != 3 || got.LastSeq != s.seq || !got.Consistent || !got.HashIndex {
		t.Fatalf("restored vm %+v", got)
	}
	// Restored again: the journal's copy is whole and is kept.
	rs, err = tier.New(tier.Config{Store: st}).Restore(ctx, dst, vm, nil)
	if err != nil || !rs.Kept {
		t.Fatalf("restore again: %+v %v", rs, err)
	}
}

// TestCatchUp: a group commit the bucket did not take stays in the
// journal unacknowledged; the next shipment (or CatchUp, before an agent
// is told its durable sequence) puts it there first, so the bucket's
// chain has no gap.
func TestCatchUp(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "catchup")
	src := openJournal(t, nil)
	s := newStream(t, src, 2)
	tr := tier.New(tier.Config{Store: st})
	if err := tr.Ship(ctx, src, term(1), s.batch(5)); err != nil {
		t.Fatal(err)
	}
	shipped := s.seq
	s.batch(9) // journaled, not shipped: the put failed
	if end, _ := tr.End(ctx, vm); end != shipped {
		t.Fatalf("end %d, want %d", end, shipped)
	}
	if err := tr.Ship(ctx, src, term(1), s.batch(3)); err != nil {
		t.Fatal(err)
	}
	if end, _ := tr.End(ctx, vm); end != s.seq {
		t.Fatalf("end %d after the catch-up, want %d", end, s.seq)
	}
	// The journal ahead again; CatchUp alone.
	s.batch(2)
	if err := tr.CatchUp(ctx, src, 1, vm); err != nil {
		t.Fatal(err)
	}
	// Records shipped twice are not shipped again.
	if err := tr.Ship(ctx, src, term(1), s.batch(1)[1:]); err != nil {
		t.Fatal(err)
	}
	if end, _ := tr.End(ctx, vm); end != s.seq {
		t.Fatalf("end %d, want %d", end, s.seq)
	}
	if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	state, _ := tier.StateOf(ctx, src, vm, 1)
	if err := tr.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}
	dst := openJournal(t, nil)
	if _, err := tier.New(tier.Config{Store: st}).Restore(ctx, dst, vm, nil); err != nil {
		t.Fatal(err)
	}
	want, _ := src.Points(ctx, vm)
	samePoints(t, dst, src, s, want)
}

// TestNewerOwnerWins: a process server cut off from etcd goes on shipping
// for a moment after another took its VM over from the bucket; the chain
// follows the newer owner's segments, and what the old one wrote past the
// takeover is not restored.
func TestNewerOwnerWins(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "terms")
	old := openJournal(t, nil)
	s := newStream(t, old, 3)
	oldTier := tier.New(tier.Config{Store: st})
	for range 3 {
		if err := oldTier.Ship(ctx, old, term(10), s.batch(4)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := old.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	state, _ := tier.StateOf(ctx, old, vm, 10)
	if err := oldTier.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}
	takeover := s.seq

	// The new owner restores and goes on with its agent.
	nw := openJournal(t, nil)
	newTier := tier.New(tier.Config{Store: st})
	if _, err := newTier.Restore(ctx, nw, vm, nil); err != nil {
		t.Fatal(err)
	}
	ns := &stream{t: t, j: nw, comp: s.comp, rng: rand.New(rand.NewPCG(33, 33)), seq: s.seq, truth: blockdev.NewMemory(diskSize), snaps: map[ferry.Seq][]byte{}}
	img := make([]byte, diskSize)
	s.truth.ReadAt(ctx, img, 0)
	ns.truth.WriteAt(ctx, img, 0)
	for id, snap := range s.snaps {
		ns.snaps[id] = snap
	}
	// The old owner, cut off, writes on from the same sequence.
	if err := oldTier.Ship(ctx, old, term(10), s.batch(6)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := newTier.Ship(ctx, nw, term(20), ns.batch(2)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nw.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	if ns.seq == s.seq {
		t.Fatal("both owners ended at the same sequence: the test cannot tell them apart")
	}
	dst := openJournal(t, nil)
	rs, err := tier.New(tier.Config{Store: st}).Restore(ctx, dst, vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rs.End != ns.seq {
		t.Fatalf("restored up to %d, want the new owner's %d (the old one wrote to %d after %d)", rs.End, ns.seq, s.seq, takeover)
	}
	want, _ := nw.Points(ctx, vm)
	samePoints(t, dst, nw, ns, want)
}

// TestRestoreDropsWhatWasNotShipped: a journal ahead of the bucket (its
// last group commit never reached the bucket, so no agent was told it was
// durable) is rebuilt to the bucket's end; a VM the bucket does not know
// is left alone.
func TestRestoreDropsWhatWasNotShipped(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "ahead")
	j := openJournal(t, nil)
	s := newStream(t, j, 4)
	tr := tier.New(tier.Config{Store: st})
	if err := tr.Ship(ctx, j, term(1), s.batch(5)); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	state, _ := tier.StateOf(ctx, j, vm, 1)
	if err := tr.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}
	end := s.seq
	want, _ := j.Points(ctx, vm)
	s.batch(4) // never shipped
	if _, err := j.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	rs, err := tier.New(tier.Config{Store: st}).Restore(ctx, j, vm, nil)
	if err != nil || rs.Kept || rs.End != end {
		t.Fatalf("restore %+v %v, want rebuilt to %d", rs, err, end)
	}
	samePoints(t, j, j, s, want)

	other := openJournal(t, nil)
	os2 := newStream(t, other, 5)
	os2.batch(3)
	st2 := openStore(t, srv, "empty")
	rs, err = tier.New(tier.Config{Store: st2}).Restore(ctx, other, vm, nil)
	if err != nil || rs.Kept || rs.End != 0 {
		t.Fatalf("restore from an empty bucket %+v %v", rs, err)
	}
	if v, _ := other.VM(ctx, vm); v.LastSeq != os2.seq {
		t.Fatalf("a VM the bucket does not know was changed: %d records, want %d", v.LastSeq, os2.seq)
	}
}

// TestSealAndReadCold: the records older than a point are sealed: the
// small segments of their group commits merged into one, their payloads
// dropped from the journal's file; every point still reads back equal to
// its ground truth, those before the seal through the bucket (and the
// cache, bounded even below one segment). A VM restored elsewhere keeps
// them in the bucket only.
func TestSealAndReadCold(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "seal")
	tr := tier.New(tier.Config{Store: st, CacheBytes: 1})
	src := openJournal(t, bytes.Repeat([]byte{3}, 32))
	src.SetCold(tr)
	s := newStream(t, src, 6)
	for range 10 {
		if err := tr.Ship(ctx, src, term(2), s.batch(1+s.rng.IntN(12))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	pts, _ := src.Points(ctx, vm)
	upTo := pts[5].ID
	before, _ := src.VM(ctx, vm)
	if _, err := tr.Seal(ctx, src, 2, vm, s.seq+1); err == nil {
		t.Fatal("sealed beyond what the bucket holds")
	}
	if _, err := src.SealPayloads(ctx, vm, s.seq+1); !errors.Is(err, journal.ErrInvalid) {
		t.Fatalf("sealed beyond the processed records: %v", err)
	}
	ss, err := tr.Seal(ctx, src, 2, vm, upTo)
	if err != nil {
		t.Fatal(err)
	}
	if ss.Merged < 6 || ss.Into != 1 || ss.Records == 0 || ss.Bytes == 0 {
		t.Fatalf("seal %+v: want the first six or more segments merged into one and payloads dropped", ss)
	}
	names, _ := st.List(ctx, "vms/"+string(vm)+"/seg/")
	if len(names) != 10-ss.Merged+1 {
		t.Fatalf("%d segments in the bucket after merging %d into 1 of 10", len(names), ss.Merged)
	}
	after, _ := src.VM(ctx, vm)
	if after.ColdSeq != upTo || after.ColdBytes != uint64(ss.Bytes) || after.StoredBytes != before.StoredBytes {
		t.Fatalf("vm after the seal: cold to %d (%d bytes), stored %d; want %d, %d, %d", after.ColdSeq, after.ColdBytes, after.StoredBytes, upTo, ss.Bytes, before.StoredBytes)
	}
	samePoints(t, src, src, s, pts)
	if cs := tr.CacheStats(); cs.Misses == 0 || cs.Segments != 1 {
		t.Fatalf("cache %+v: want reads from the bucket and one segment kept", cs)
	}
	// Without the cold store a sealed payload cannot be read.
	path := filepath.Join(t.TempDir(), "copy.db")
	copyJournal(t, src, path)
	bare, err := journal.Open(path, journal.Options{Key: bytes.Repeat([]byte{3}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if _, err := bare.Verify(ctx, vm, upTo); !errors.Is(err, journal.ErrCold) {
		t.Fatalf("verify without the cold store: %v, want ErrCold", err)
	}

	// Restored elsewhere: the sealed part stays in the bucket.
	state, _ := tier.StateOf(ctx, src, vm, 2)
	if err := tr.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}
	dst := openJournal(t, nil)
	other := tier.New(tier.Config{Store: st})
	dst.SetCold(other)
	if _, err := other.Restore(ctx, dst, vm, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := dst.VM(ctx, vm); got.ColdSeq != upTo {
		t.Fatalf("restored with payloads sealed up to %d, want %d", got.ColdSeq, upTo)
	}
	samePoints(t, dst, src, s, pts)
}

func copyJournal(t *testing.T, j *journal.Journal, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := j.Snapshot(f); err != nil {
		t.Fatal(err)
	}
}

// memBases keeps base images in memory, as a process server keeps them in
// files.
type memBases struct {
	devs map[ferry.VMID][]*blockdev.Memory
}

func (b *memBases) Create(v journal.VM) ([]blockdev.Device, error) {
	var out []blockdev.Device
	b.devs[v.Name] = nil
	for _, d := range v.Disks {
		m := blockdev.NewMemory(d.Size)
		b.devs[v.Name] = append(b.devs[v.Name], m)
		out = append(out, m)
	}
	return out, nil
}

func (b *memBases) Drop(vm ferry.VMID) error { delete(b.devs, vm); return nil }

// TestBaseInTheBucket: retention folds the oldest records into the base
// images; shipped to the bucket, they let it delete the segments before
// them; sealing after a base follows the chain from it; a VM rebuilt
// elsewhere starts from the newest base image (inside a sealed segment)
// and every point kept reads as its ground truth. Without a place for
// bases the rebuild is refused.
func TestBaseInTheBucket(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "base")
	// Small sealed segments, so that a base can free some of them.
	tr := tier.New(tier.Config{Store: st, SealBytes: 1 << 20})
	src := openJournal(t, nil)
	src.SetCold(tr)
	s := newStream(t, src, 8)
	for range 9 {
		if err := tr.Ship(ctx, src, term(4), s.batch(1+s.rng.IntN(10))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	pts, _ := src.Points(ctx, vm)
	// The oldest records sealed (merged), then retention folds past them.
	if _, err := tr.Seal(ctx, src, 4, vm, pts[2].ID); err != nil {
		t.Fatal(err)
	}
	if bs, err := tr.ShipBase(ctx, src, vm); err != nil || bs.Seq != 0 {
		t.Fatalf("a base shipped before retention made one: %+v %v", bs, err)
	}
	base := []blockdev.Device{blockdev.NewMemory(diskSize)}
	if _, err := src.Trim(ctx, vm, pts[4].ID, base); err != nil {
		t.Fatal(err)
	}
	bs, err := tr.ShipBase(ctx, src, vm)
	if err != nil || bs.Seq != pts[4].ID || bs.Bytes == 0 || bs.Deleted < 2 {
		t.Fatalf("ship base: %+v %v", bs, err)
	}
	if again, err := tr.ShipBase(ctx, src, vm); err != nil || again.Seq != 0 || again.Waiting {
		t.Fatalf("the same base shipped twice (or waited): %+v %v", again, err)
	}
	noneBefore := func(b ferry.Seq) {
		t.Helper()
		segs, _ := st.List(ctx, "vms/"+string(vm)+"/seg/")
		for _, n := range segs {
			var first, last, tm uint64
			fmt.Sscanf(n[len("vms/"+string(vm)+"/seg/"):], "%x-%x-%x", &first, &last, &tm)
			if ferry.Seq(last) <= b {
				t.Fatalf("segment %s ends before the base at %d and was kept", n, b)
			}
		}
	}
	noneBefore(bs.Seq)
	shipBatches := func(n int) {
		t.Helper()
		for range n {
			if err := tr.Ship(ctx, src, term(4), s.batch(1+s.rng.IntN(10))); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
			t.Fatal(err)
		}
	}
	// A little more, folded: the segments a new base would free weigh
	// less than the base: it waits.
	shipBatches(3)
	kept, _ := src.Points(ctx, vm)
	if _, err := src.Trim(ctx, vm, kept[1].ID, base); err != nil {
		t.Fatal(err)
	}
	if w, err := tr.ShipBase(ctx, src, vm); err != nil || !w.Waiting || w.Seq != 0 {
		t.Fatalf("a base shipped to free less than it weighs: %+v %v", w, err)
	}
	// Much more, sealed in two merged segments (the chain starts at the
	// base now, and nothing after it is lost to a seal); retention then
	// folds into the middle of the second: the next base falls inside it
	// and frees the first.
	shipBatches(30)
	kept, _ = src.Points(ctx, vm)
	if _, err := tr.Seal(ctx, src, 4, vm, kept[len(kept)-12].ID); err != nil {
		t.Fatal(err)
	}
	shipBatches(10)
	kept, _ = src.Points(ctx, vm)
	if _, err := tr.Seal(ctx, src, 4, vm, kept[len(kept)-2].ID); err != nil {
		t.Fatal(err)
	}
	samePoints(t, src, src, s, kept)
	// A point inside a merged segment, far enough on to free more than
	// the first base weighs.
	var inside ferry.Seq
	segs, _ := st.List(ctx, "vms/"+string(vm)+"/seg/")
	for _, n := range segs {
		var first, last, tm uint64
		fmt.Sscanf(n[len("vms/"+string(vm)+"/seg/"):], "%x-%x-%x", &first, &last, &tm)
		for _, p := range kept[len(kept)/2 : len(kept)-2] {
			if uint64(p.ID) >= first && uint64(p.ID) < last {
				inside = p.ID
			}
		}
	}
	if inside == 0 {
		t.Fatal("no point inside a merged segment")
	}
	if _, err := src.Trim(ctx, vm, inside, base); err != nil {
		t.Fatal(err)
	}
	// What the second base will delete: the segments that end before it
	// and the first base's objects (its disk and its manifest).
	want := 2
	segs, _ = st.List(ctx, "vms/"+string(vm)+"/seg/")
	for _, n := range segs {
		var first, last, tm uint64
		fmt.Sscanf(n[len("vms/"+string(vm)+"/seg/"):], "%x-%x-%x", &first, &last, &tm)
		if ferry.Seq(last) <= inside {
			want++
		}
	}
	if bs, err = tr.ShipBase(ctx, src, vm); err != nil || bs.Seq != inside || bs.Deleted != want {
		t.Fatalf("ship the second base at %d: %+v %v (want %d objects deleted)", inside, bs, err, want)
	}
	noneBefore(bs.Seq)
	if objs, _ := st.List(ctx, "vms/"+string(vm)+"/base/"); len(objs) != 2 || !strings.HasPrefix(objs[0], fmt.Sprintf("vms/%s/base/%016x/", vm, inside)) {
		t.Fatalf("base objects after the second base: %v", objs)
	}
	kept, _ = src.Points(ctx, vm)
	state, _ := tier.StateOf(ctx, src, vm, 4)
	if err := tr.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}

	dst := openJournal(t, nil)
	other := tier.New(tier.Config{Store: st})
	dst.SetCold(other)
	if _, err := other.Restore(ctx, dst, vm, nil); err == nil {
		t.Fatal("restored a VM whose history starts at a base without a place for it")
	}
	dst2 := openJournal(t, nil)
	dst2.SetCold(other)
	bases := &memBases{devs: map[ferry.VMID][]*blockdev.Memory{}}
	rs, err := other.Restore(ctx, dst2, vm, bases)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Base != bs.Seq || rs.End != s.seq {
		t.Fatalf("restore %+v: want from the base at %d to %d", rs, bs.Seq, s.seq)
	}
	got, _ := dst2.VM(ctx, vm)
	if got.BaseSeq != bs.Seq || got.LastSeq != s.seq {
		t.Fatalf("restored vm %+v", got)
	}
	samePoints(t, dst2, src, s, kept)

	// Retention folds everything the bucket holds: a base at its very end
	// is shipped (or waits), never refused.
	last := kept[len(kept)-1].ID
	if last != s.seq {
		t.Fatalf("the newest point %d is not the last record %d", last, s.seq)
	}
	if _, err := src.Trim(ctx, vm, last, base); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.ShipBase(ctx, src, vm); err != nil {
		t.Fatalf("a base at the bucket's end: %v", err)
	}
}

// TestShipAfterRetention: a journal that served (and folded records into
// its base) before it shipped: the bucket starts at its base images, then
// its records, and a VM rebuilt from the bucket reads as it does.
func TestShipAfterRetention(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "late")
	src := openJournal(t, nil)
	s := newStream(t, src, 9)
	for range 6 {
		s.batch(1 + s.rng.IntN(10))
	}
	if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	pts, _ := src.Points(ctx, vm)
	if _, err := src.Trim(ctx, vm, pts[3].ID, []blockdev.Device{blockdev.NewMemory(diskSize)}); err != nil {
		t.Fatal(err)
	}
	tr := tier.New(tier.Config{Store: st})
	if err := tr.CatchUp(ctx, src, 1, vm); err != nil {
		t.Fatal(err)
	}
	if end, err := tr.End(ctx, vm); err != nil || end != s.seq {
		t.Fatalf("the bucket ends at %d (%v), want %d", end, err, s.seq)
	}
	state, _ := tier.StateOf(ctx, src, vm, 1)
	if err := tr.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}
	kept, _ := src.Points(ctx, vm)
	dst := openJournal(t, nil)
	rs, err := tier.New(tier.Config{Store: st}).Restore(ctx, dst, vm, &memBases{devs: map[ferry.VMID][]*blockdev.Memory{}})
	if err != nil || rs.Base != pts[3].ID {
		t.Fatalf("restore %+v %v: want from the base at %d", rs, err, pts[3].ID)
	}
	samePoints(t, dst, src, s, kept)
}

// TestCacheBound: reads of sealed records go through the cache: a cache
// smaller than one segment keeps only the newest and still answers
// (misses and hits counted); a default one keeps every segment read, within
// its bound.
func TestCacheBound(t *testing.T) {
	srv := ferrytest.StartS3(t)
	ctx := context.Background()
	st := openStore(t, srv, "cache")
	// Segments of an eighth of 64 KiB or more stay as they are: the sealed
	// records span many.
	small := tier.New(tier.Config{Store: st, CacheBytes: 1, SealBytes: 64 << 10})
	if m := tier.New(tier.Config{Store: st}).CacheStats().Max; m != tier.DefaultCacheBytes {
		t.Fatalf("default cache bound %d, want %d", m, tier.DefaultCacheBytes)
	}
	src := openJournal(t, nil)
	src.SetCold(small)
	s := newStream(t, src, 10)
	for range 12 {
		if err := small.Ship(ctx, src, term(1), s.batch(1+s.rng.IntN(10))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Process(ctx, vm, ^ferry.Seq(0)); err != nil {
		t.Fatal(err)
	}
	pts, _ := src.Points(ctx, vm)
	if _, err := small.Seal(ctx, src, 1, vm, pts[len(pts)-2].ID); err != nil {
		t.Fatal(err)
	}
	samePoints(t, src, src, s, pts)
	cs := small.CacheStats()
	if cs.Segments != 1 || cs.Misses < 2 || cs.Hits <= 0 {
		t.Fatalf("a cache of one byte: %+v (want one segment kept, misses, hits)", cs)
	}
	state, _ := tier.StateOf(ctx, src, vm, 1)
	if err := small.PutState(ctx, state); err != nil {
		t.Fatal(err)
	}
	big := tier.New(tier.Config{Store: st})
	dst := openJournal(t, nil)
	dst.SetCold(big)
	if _, err := big.Restore(ctx, dst, vm, nil); err != nil {
		t.Fatal(err)
	}
	samePoints(t, dst, src, s, pts)
	if cs := big.CacheStats(); cs.Segments < 2 || cs.Bytes > cs.Max || cs.Misses != int64(cs.Segments) {
		t.Fatalf("a default cache: %+v (want every segment read kept, each missed once)", cs)
	}
}
