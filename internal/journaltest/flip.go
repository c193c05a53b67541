package journaltest

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
)

// Flip is one bit flipped in a value the journal stores: a record's
// metadata ("meta"), a write's payload ("data") or a point ("points").
type Flip struct {
	VM     ferry.VMID
	Bucket string
	Seq    ferry.Seq
	Byte   int
	Bit    uint8
}

func (f Flip) String() string {
	return fmt.Sprintf("vm %s %s %d byte %d bit %d", f.VM, f.Bucket, f.Seq, f.Byte, f.Bit)
}

// FlipBits flips one bit in each of n values of vm chosen at random among
// its stored records and points (the journal file must be closed), as rot
// at rest would. Unflip undoes it.
func FlipBits(path string, vm ferry.VMID, rng *rand.Rand, n int) ([]Flip, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	var flips []Flip
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("vm/" + string(vm)))
		if b == nil {
			return fmt.Errorf("vm %s: no bucket", vm)
		}
		type cand struct {
			bucket string
			key    []byte
		}
		var cands []cand
		for _, name := range []string{"meta", "data", "points"} {
			b.Bucket([]byte(name)).ForEach(func(k, _ []byte) error {
				cands = append(cands, cand{name, append([]byte(nil), k...)})
				return nil
			})
		}
		if len(cands) < n {
			return fmt.Errorf("vm %s: %d stored values, %d flips asked", vm, len(cands), n)
		}
		for _, i := range rng.Perm(len(cands))[:n] {
			c := cands[i]
			sub := b.Bucket([]byte(c.bucket))
			v := append([]byte(nil), sub.Get(c.key)...)
			f := Flip{VM: vm, Bucket: c.bucket, Seq: ferry.Seq(binary.BigEndian.Uint64(c.key)), Byte: rng.IntN(len(v)), Bit: uint8(rng.IntN(8))}
			v[f.Byte] ^= 1 << f.Bit
			if err := sub.Put(c.key, v); err != nil {
				return err
			}
			flips = append(flips, f)
		}
		return nil
	})
	return flips, err
}

// Unflip flips the same bits back.
func Unflip(path string, flips []Flip) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Update(func(tx *bolt.Tx) error {
		for _, f := range flips {
			sub := tx.Bucket([]byte("vm/" + string(f.VM))).Bucket([]byte(f.Bucket))
			key := binary.BigEndian.AppendUint64(nil, uint64(f.Seq))
			v := append([]byte(nil), sub.Get(key)...)
			v[f.Byte] ^= 1 << f.Bit
			if err := sub.Put(key, v); err != nil {
				return err
			}
		}
		return nil
	})
}
