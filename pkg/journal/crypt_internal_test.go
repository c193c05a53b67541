package journal

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// sealedJournal holds vm1 with two raw (uncompressed) 4 KiB writes, seq 2
// at offset 0 and seq 3 at offset 4096, and a point at seq 5.
func sealedJournal(t *testing.T, a, b []byte) *Journal {
	t.Helper()
	ctx := context.Background()
	j, err := Open(filepath.Join(t.TempDir(), "journal.db"), Options{Key: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	if err := j.CreateVM(ctx, VM{Name: "vm1", Epoch: 1, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: 64 << 10}}}); err != nil {
		t.Fatal(err)
	}
	w := func(seq ferry.Seq, off int64, p []byte) Record {
		return Record{VM: "vm1", Seq: seq, Kind: KindWrite, Offset: off, Length: len(p), Sum: xxhash.Sum64(p), Codec: CodecRaw, Payload: p}
	}
	recs := []Record{{VM: "vm1", Seq: 1, Kind: KindDrainBegin}, w(2, 0, a), w(3, 4096, b), {VM: "vm1", Seq: 4, Kind: KindDrainEnd},
		{VM: "vm1", Seq: 5, Kind: KindMarker, Consistency: ferry.Crash, Time: time.Now()}}
	if err := j.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Process(ctx, "vm1", 5); err != nil {
		t.Fatal(err)
	}
	return j
}

func stored(t *testing.T, j *Journal, seq ferry.Seq) []byte {
	t.Helper()
	var out []byte
	j.db.View(func(tx *bolt.Tx) error {
		out = append(out, tx.Bucket(vmBucketName("vm1")).Bucket(bucketData).Get(seqKey(seq))...)
		return nil
	})
	return out
}

// TestHostileSealUsesFreshNonces: the same payload stored twice gets two nonces
// and two ciphertexts. With a fixed nonce GCM's ciphertext is the
// plaintext XOR one keystream, whatever the associated data: equal
// payloads would show, and two payloads' XOR would leak.
func TestHostileSealUsesFreshNonces(t *testing.T) {
	p := bytes.Repeat([]byte("same payload "), 400)[:4096]
	j := sealedJournal(t, p, p)
	s2, s3 := stored(t, j, 2), stored(t, j, 3)
	if len(s2) != nonceSize+4096+16 || len(s3) != len(s2) {
		t.Fatalf("stored %d and %d bytes", len(s2), len(s3))
	}
	if bytes.Equal(s2[:nonceSize], s3[:nonceSize]) {
		t.Fatal("two records share a nonce")
	}
	if bytes.Equal(s2[nonceSize:nonceSize+4096], s3[nonceSize:nonceSize+4096]) {
		t.Fatal("equal payloads have equal ciphertexts")
	}
	if bytes.Contains(s2, p[:64]) {
		t.Fatal("the payload is stored in plain text")
	}
}

// TestHostileSealBindsRecordPlace: a payload copied, with its metadata's length,
// codec and checksum, into another record (another place on the disk) has
// the right checksum but does not authenticate there: the associated data
// names the record and its place. Without it the copy would read back as
// that disk's data.
func TestHostileSealBindsRecordPlace(t *testing.T) {
	ctx := context.Background()
	a, b := bytes.Repeat([]byte{0xaa}, 4096), bytes.Repeat([]byte{0xbb}, 4096)
	j := sealedJournal(t, a, b)
	if err := j.db.Update(func(tx *bolt.Tx) error {
		vb := tx.Bucket(vmBucketName("vm1"))
		r2, err := decodeMeta("vm1", 2, vb.Bucket(bucketMeta).Get(seqKey(2)))
		if err != nil {
			return err
		}
		r3, err := decodeMeta("vm1", 3, vb.Bucket(bucketMeta).Get(seqKey(3)))
		if err != nil {
			return err
		}
		r3.Sum, r3.Length, r3.Codec, r3.Encrypted = r2.Sum, r2.Length, r2.Codec, r2.Encrypted
		if err := vb.Bucket(bucketMeta).Put(seqKey(3), encodeMeta(&r3)); err != nil {
			return err
		}
		return vb.Bucket(bucketData).Put(seqKey(3), append([]byte(nil), vb.Bucket(bucketData).Get(seqKey(2))...))
	}); err != nil {
		t.Fatal(err)
	}
	img := blockdev.NewMemory(64 << 10)
	err := j.Materialize(ctx, "vm1", 5, 0, img, true)
	if !errors.Is(err, ErrChecksum) {
		got := make([]byte, 4096)
		img.ReadAt(ctx, got, 4096)
		t.Fatalf("a payload copied to another record: %v (offset 4096 reads %#x)", err, got[0])
	}
}
