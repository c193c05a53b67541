package journal

import (
	"context"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
)

// Cold holds the payloads the journal sealed away from its file (an
// object store's segments, read through a bounded cache): a record's
// metadata stays in the journal, its payload is read from Cold once the
// VM's ColdSeq covers it. Payloads come back as their codec encoded them
// (not encrypted: the cold store protects its own), and are checked
// against the record's xxhash as every payload is.
type Cold interface {
	Payload(ctx context.Context, vm ferry.VMID, seq ferry.Seq) ([]byte, error)
}

// ErrCold: a payload sealed away could not be read from the cold store.
var ErrCold = errors.New("payload sealed away to the object store could not be read")

// SetCold makes c the store of the payloads sealed away (SealPayloads).
// Call it once, before the journal is used.
func (j *Journal) SetCold(c Cold) { j.cold = c }

// payloads reads records' payloads: from the journal's file, or from the
// cold store for the records of a VM sealed away.
type payloads struct {
	seal *sealer
	cold Cold
}

func (j *Journal) payloads() payloads { return payloads{seal: j.seal, cold: j.cold} }

// get returns the payload of r (key k), encoded by its codec and not
// encrypted. coldSeq is r's VM's ColdSeq. A payload of bbolt's memory is
// valid in the transaction only.
func (p payloads) get(ctx context.Context, data *bolt.Bucket, coldSeq ferry.Seq, r *Record, k []byte) ([]byte, error) {
	if r.Codec == CodecZero {
		return nil, nil // a write of zeros stores no payload
	}
	stored := data.Get(k)
	if stored != nil {
		return p.seal.open(r, stored)
	}
	if r.Seq > coldSeq {
		return nil, fmt.Errorf("%w: payload missing", ErrChecksum)
	}
	if p.cold == nil {
		return nil, fmt.Errorf("%w: record %d was sealed away and the journal has no cold store", ErrCold, r.Seq)
	}
	b, err := p.cold.Payload(ctx, r.VM, r.Seq)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCold, err)
	}
	return b, nil
}

// SealStats says what SealPayloads did.
type SealStats struct {
	Records int
	Bytes   int64 // payload bytes dropped from the journal's file
}

// SealPayloads drops from the journal's file the payloads of the VM's
// records up to upTo, which the cold store holds (the caller made sure of
// it): their metadata stays, and reads of them go to the cold store. Only
// processed records are sealed away.
func (j *Journal) SealPayloads(ctx context.Context, name ferry.VMID, upTo ferry.Seq) (SealStats, error) {
	var st SealStats
	err := j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		if upTo > vm.ProcessedSeq {
			return fmt.Errorf("seal vm %s to %d: %w: processed only up to %d", name, upTo, ErrInvalid, vm.ProcessedSeq)
		}
		if upTo <= vm.ColdSeq {
			return nil
		}
		data := tx.Bucket(vmBucketName(name)).Bucket(bucketData)
		var keys [][]byte
		c := data.Cursor()
		for k, v := c.Seek(seqKey(max(vm.ColdSeq, vm.BaseSeq) + 1)); k != nil && keySeq(k) <= upTo; k, v = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
			st.Bytes += int64(len(v))
		}
		for _, k := range keys {
			if err := data.Delete(k); err != nil {
				return err
			}
		}
		st.Records = len(keys)
		vm.ColdSeq, vm.ColdBytes = upTo, vm.ColdBytes+uint64(st.Bytes)
		return putVM(tx, vm)
	})
	return st, err
}
