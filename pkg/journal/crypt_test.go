package journal_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
)

// TestEncryptionAtRest: with a key, every payload is stored encrypted
// (the plaintext does not appear in the file), points read back exactly;
// without the key the data cannot be read, with a wrong key it does not
// authenticate, and a payload moved to another record is refused.
func TestEncryptionAtRest(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "journal.db")
	key := bytes.Repeat([]byte{7}, 32)
	j, err := journal.Open(path, journal.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	vm := journal.VM{Name: "vm1", Epoch: 1, BlockSize: bs, Disks: []ferry.Disk{{Name: "os", Size: 64 << 10}}}
	if err := j.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	canary := []byte("FERRY-CANARY-the-payload-must-never-appear-in-the-file")
	rng := rand.New(rand.NewPCG(1, 1))
	a := make([]byte, bs)
	for i := range a {
		a[i] = byte(rng.Uint32())
	}
	copy(a[100:], canary) // random around it: stored raw, not compressed
	b := bytes.Repeat([]byte("compressible "), bs/13+1)[:bs]
	copy(b[200:], canary)
	comp, _ := journal.NewCompressor(journal.CodecZstd)
	rec := func(seq ferry.Seq, kind journal.Kind, off int64, data []byte) journal.Record {
		r := journal.Record{VM: "vm1", Seq: seq, Kind: kind}
		if data != nil {
			r.Offset, r.Length, r.Sum = off, len(data), xxhash.Sum64(data)
			r.Codec, r.Payload = comp.Encode(nil, data)
		}
		if kind == journal.KindMarker {
			r.Consistency, r.Time = ferry.Crash, time.Now()
		}
		return r
	}
	recs := []journal.Record{rec(1, journal.KindDrainBegin, 0, nil), rec(2, journal.KindWrite, 0, a), rec(3, journal.KindWrite, bs, b),
		rec(4, journal.KindDrainEnd, 0, nil), rec(5, journal.KindMarker, 0, nil)}
	if err := j.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Process(ctx, "vm1", 5); err != nil {
		t.Fatal(err)
	}
	read := func(j *journal.Journal) ([]byte, error) {
		img := blockdev.NewMemory(64 << 10)
		err := j.Materialize(ctx, "vm1", 5, 0, img, true)
		out := make([]byte, img.Size())
		img.ReadAt(ctx, out, 0)
		return out, err
	}
	got, err := read(j)
	if err != nil || !bytes.Equal(got[:bs], a) || !bytes.Equal(got[bs:2*bs], b) {
		t.Fatalf("read back with the key: %v", err)
	}
	if err := j.Check(ctx); err != nil {
		t.Fatal(err)
	}
	j.Close()
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, canary) {
		t.Fatal("the plaintext canary is in the journal file")
	}
	// The journal is bound to its key: without it, or with another, it
	// does not open (nothing is written in plain text beside the
	// encrypted data, nothing is written under a key nobody can read
	// with).
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"no key", nil}, {"wrong key", bytes.Repeat([]byte{8}, 32)}} {
		j, err := journal.Open(path, journal.Options{Key: tc.key})
		if !errors.Is(err, journal.ErrKey) {
			if j != nil {
				j.Close()
			}
			t.Fatalf("%s: %v, want ErrKey", tc.name, err)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, raw) {
		t.Fatal("a refused open changed the journal file")
	}
	// Swap the two stored payloads: each fails to authenticate where it
	// does not belong.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		data := tx.Bucket([]byte("vm/vm1")).Bucket([]byte("data"))
		k2, k3 := []byte{0, 0, 0, 0, 0, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 3}
		v2, v3 := append([]byte(nil), data.Get(k2)...), append([]byte(nil), data.Get(k3)...)
		data.Put(k2, v3)
		return data.Put(k3, v2)
	})
	db.Close()
	j, err = journal.Open(path, journal.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, err := read(j); !errors.Is(err, journal.ErrChecksum) {
		t.Fatalf("payloads swapped between records: %v", err)
	}
}
