package journal

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TestHostileBitFlipsInVMRecord: every bit flipped in a VM's stored state is
// refused with a checksum error, not read as other numbers.
func TestHostileBitFlipsInVMRecord(t *testing.T) {
	ctx := context.Background()
	j, err := Open(filepath.Join(t.TempDir(), "journal.db"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.CreateVM(ctx, VM{Name: "vm1", Epoch: 3, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: 1 << 20}}}); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	j.db.View(func(tx *bolt.Tx) error { raw = append(raw, tx.Bucket(bucketVMs).Get([]byte("vm1"))...); return nil })
	rng := rand.New(rand.NewPCG(7, 7))
	for range 200 {
		bit := rng.IntN(len(raw) * 8)
		flipped := append([]byte(nil), raw...)
		flipped[bit/8] ^= 1 << (bit % 8)
		j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketVMs).Put([]byte("vm1"), flipped) })
		if vm, err := j.VM(ctx, "vm1"); !errors.Is(err, ErrChecksum) {
			t.Fatalf("bit %d of the VM record flipped: %v (epoch %d)", bit, err, vm.Epoch)
		}
		if _, err := j.VMs(ctx); !errors.Is(err, ErrChecksum) {
			t.Fatalf("bit %d of the VM record flipped: VMs: %v", bit, err)
		}
	}
	j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketVMs).Put([]byte("vm1"), raw) })
	if vm, err := j.VM(ctx, "vm1"); err != nil || vm.Epoch != 3 {
		t.Fatalf("restored: %v %v", vm, err)
	}
}

// TestHostileFlippedEncryptedFlag: a record whose encrypted flag flips is refused
// (the metadata's checksum covers the flag), both ways.
func TestHostileFlippedEncryptedFlag(t *testing.T) {
	ctx := context.Background()
	j := sealedJournal(t, bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096))
	j.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(vmBucketName("vm1")).Bucket(bucketMeta)
		v := append([]byte(nil), meta.Get(seqKey(2))...)
		v[1] ^= codecEncrypted
		return meta.Put(seqKey(2), v)
	})
	if err := j.Materialize(ctx, "vm1", 5, 0, blockdev.NewMemory(64<<10), true); !errors.Is(err, ErrChecksum) {
		t.Fatalf("encrypted flag cleared: %v", err)
	}
}

// TestHostileBitFlipsInRetentionBase rolls a VM's base forward with retention,
// then flips bits in the base image file, in blocks retention wrote and in
// blocks it left zero: every point that reads a flipped block fails with a
// checksum error naming the place, and none serves wrong data.
func TestHostileBitFlipsInRetentionBase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	j, err := Open(filepath.Join(dir, "journal.db"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	const size = 256 << 10
	if err := j.CreateVM(ctx, VM{Name: "vm1", Epoch: 1, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: size}}}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	truth := make([]byte, size)
	seq := ferry.Seq(1)
	recs := []Record{{VM: "vm1", Seq: seq, Kind: KindDrainBegin}}
	// Blocks 0..31 written; 32..63 never: zeros in the base.
	for i := range 48 {
		blk := int64(rng.IntN(32))
		p := make([]byte, 4096)
		for k := range p {
			p[k] = byte(rng.Uint32())
		}
		copy(truth[blk*4096:], p)
		seq++
		recs = append(recs, Record{VM: "vm1", Seq: seq, Kind: KindWrite, Offset: blk * 4096, Length: 4096, Sum: xxhash.Sum64(p), Codec: CodecRaw, Payload: p})
		if i == 0 {
			seq++
			recs = append(recs, Record{VM: "vm1", Seq: seq, Kind: KindDrainEnd})
		}
	}
	seq++
	recs = append(recs, Record{VM: "vm1", Seq: seq, Kind: KindMarker, Consistency: ferry.Crash, Time: time.Now()})
	if err := j.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Process(ctx, "vm1", seq); err != nil {
		t.Fatal(err)
	}
	base, err := blockdev.CreateFile(filepath.Join(dir, "base.img"), size)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	if _, err := j.Trim(ctx, "vm1", seq, []blockdev.Device{base}); err != nil {
		t.Fatal(err)
	}
	point := seq
	read := func() ([]byte, error) {
		img := blockdev.NewMemory(size)
		err := j.Materialize(ctx, "vm1", point, 0, img, true)
		out := make([]byte, size)
		img.ReadAt(ctx, out, 0)
		return out, err
	}
	if got, err := read(); err != nil || !bytes.Equal(got, truth) {
		t.Fatalf("the point after retention: %v", err)
	}
	refused := 0
	for round := range 200 {
		off := int64(rng.IntN(size))
		if round%2 == 1 {
			off = 32*4096 + int64(rng.IntN(size-32*4096)) // a block retention left zero
		}
		var b [1]byte
		base.ReadAt(ctx, b[:], off)
		bit := byte(1) << rng.IntN(8)
		base.WriteAt(ctx, []byte{b[0] ^ bit}, off)
		if rep, err := j.Scrub(ctx, "vm1"); err != nil || len(rep.Corrupt) != 1 || rep.Corrupt[0].Offset != off/4096*4096 {
			t.Fatalf("round %d: scrub after a flip at %d: %v %+v", round, off, err, rep.Corrupt)
		}
		got, err := read()
		var ce *CorruptError
		switch {
		case errors.As(err, &ce) && errors.Is(err, ErrChecksum) && ce.Offset/4096 == off/4096:
			refused++
		case err == nil && bytes.Equal(got, truth):
			t.Fatalf("round %d: a flip at %d went unnoticed", round, off)
		default:
			t.Fatalf("round %d: flip at %d: %v", round, off, err)
		}
		base.WriteAt(ctx, b[:], off)
	}
	if got, err := read(); err != nil || !bytes.Equal(got, truth) {
		t.Fatalf("mended: %v", err)
	}
	if rep, err := j.Scrub(ctx, "vm1"); err != nil || rep.Err() != nil {
		t.Fatalf("scrub after mending: %v %v", err, rep.Err())
	}
	t.Logf("200 bits flipped in the retention base, %d reads refused with the flipped block named", refused)
}
