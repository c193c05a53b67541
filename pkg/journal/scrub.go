package journal

import (
	"context"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// ScrubReport is what Scrub found in one VM's journal.
type ScrubReport struct {
	Records int64 // records read
	Writes  int64 // writes whose payload was decoded and checked
	Bytes   int64
	Points  int64 // points read
	// Corrupt lists every record that failed its check, oldest first.
	Corrupt []Corruption
	// BadPoints are points whose own stored entry failed its check.
	BadPoints []ferry.Seq
}

// Corruption is one record that failed verification, with the points that
// read it and therefore cannot be used.
type Corruption struct {
	Seq ferry.Seq
	// Disk, Offset and Length locate the write; Disk is -1 when the
	// record's metadata itself is corrupt (its location is unknown).
	Disk   int
	Offset int64
	Length int
	Err    error
	// Points are the IDs of the points that read the corrupt data: every
	// point from Seq on until a later write covers the same range.
	Points []ferry.Seq
}

// Scrub re-reads every record of the VM, decodes every payload, checks
// every xxhash and every stored checksum, and reports each corruption with
// its location and the points it makes unusable. Unlike Verify it does not
// stop at the first one.
func (j *Journal) Scrub(ctx context.Context, name ferry.VMID) (ScrubReport, error) {
	var rep ScrubReport
	err := j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		b := tx.Bucket(vmBucketName(name))
		data := b.Bucket(bucketData)
		var pointIDs []ferry.Seq
		if err := b.Bucket(bucketPoints).ForEach(func(k, v []byte) error {
			rep.Points++
			pointIDs = append(pointIDs, keySeq(k))
			if _, err := decodePoint(name, keySeq(k), v); err != nil {
				rep.BadPoints = append(rep.BadPoints, keySeq(k))
			}
			return nil
		}); err != nil {
			return err
		}
		// open are the corruptions some of whose blocks no later write has
		// covered yet: each point passed meanwhile reads them. uncovered
		// counts those blocks, per block in left.
		var open []int
		left := map[int][]bool{}
		uncovered := map[int]int{}
		nextPoint := 0
		var buf []byte
		c := b.Bucket(bucketMeta).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			seq := keySeq(k)
			for nextPoint < len(pointIDs) && pointIDs[nextPoint] < seq {
				for _, i := range open {
					rep.Corrupt[i].Points = append(rep.Corrupt[i].Points, pointIDs[nextPoint])
				}
				nextPoint++
			}
			rep.Records++
			if rep.Records%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			r, err := decodeMeta(name, seq, v)
			if err != nil {
				rep.Corrupt = append(rep.Corrupt, Corruption{Seq: seq, Disk: -1, Err: err})
				open = append(open, len(rep.Corrupt)-1) // location unknown: never covered
				continue
			}
			if r.Kind != KindWrite {
				continue
			}
			// Later writes covering every block of an open corruption end
			// it: no point after them reads it.
			kept := open[:0]
			for _, i := range open {
				cr := rep.Corrupt[i]
				if cr.Disk == r.Disk && cr.Disk >= 0 {
					lo := max(r.Offset, cr.Offset)
					hi := min(r.Offset+int64(r.Length), cr.Offset+int64(cr.Length))
					for off := lo; off < hi; off += blockdev.BlockSize {
						if b := (off - cr.Offset) / blockdev.BlockSize; left[i][b] {
							left[i][b] = false
							uncovered[i]--
						}
					}
					if uncovered[i] == 0 {
						continue
					}
				}
				kept = append(kept, i)
			}
			open = kept
			var payload []byte
			if r.Codec != CodecZero {
				payload, err = j.payloads().get(ctx, data, vm.ColdSeq, &r, k)
			}
			if err == nil {
				var out []byte
				if out, err = decode(buf, r.Codec, payload, r.Length, r.Sum); err == nil && r.Codec != CodecRaw {
					buf = out
				}
			}
			if err != nil {
				rep.Corrupt = append(rep.Corrupt, Corruption{Seq: seq, Disk: r.Disk, Offset: r.Offset, Length: r.Length,
					Err: &CorruptError{VM: name, Seq: seq, Disk: r.Disk, Offset: r.Offset, Err: err}})
				i := len(rep.Corrupt) - 1
				open = append(open, i)
				n := (r.Length + blockdev.BlockSize - 1) / blockdev.BlockSize
				left[i] = slices.Repeat([]bool{true}, n)
				uncovered[i] = n
				continue
			}
			rep.Writes++
			rep.Bytes += int64(r.Length)
		}
		for ; nextPoint < len(pointIDs); nextPoint++ {
			for _, i := range open {
				rep.Corrupt[i].Points = append(rep.Corrupt[i].Points, pointIDs[nextPoint])
			}
		}
		return j.scrubBase(ctx, tx, name, pointIDs, &rep)
	})
	return rep, err
}

// scrubBase checks every block of the VM's base against the sums
// retention recorded. A corrupt block is reported at the base's sequence,
// with every point (each may read it where no record covers it).
func (j *Journal) scrubBase(ctx context.Context, tx *bolt.Tx, name ferry.VMID, points []ferry.Seq, rep *ScrubReport) error {
	base := j.Base(name)
	if base == nil {
		return nil
	}
	vm, err := getVM(tx, name)
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for disk, dev := range base {
		for off := int64(0); off < dev.Size(); off += chunk {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := buf[:min(chunk, dev.Size()-off)]
			if _, err := dev.ReadAt(ctx, p, off); err != nil {
				return fmt.Errorf("vm %s: read base of disk %d at %d: %w", name, disk, off, err)
			}
			for i := int64(0); i < int64(len(p)); i += blockdev.BlockSize {
				blk := p[i:min(i+blockdev.BlockSize, int64(len(p)))]
				if err := checkBase(tx, vm, disk, off+i, blk); err != nil {
					rep.Corrupt = append(rep.Corrupt, Corruption{Seq: vm.BaseSeq, Disk: disk, Offset: off + i, Length: len(blk), Err: err,
						Points: slices.Clone(points)})
				}
			}
		}
	}
	return nil
}

// Err summarizes the report: nil when nothing was corrupt.
func (r ScrubReport) Err() error {
	var errs []error
	for _, c := range r.Corrupt {
		errs = append(errs, c.Err)
	}
	for _, id := range r.BadPoints {
		errs = append(errs, fmt.Errorf("point %d: %w: stored point", id, ErrChecksum))
	}
	return errors.Join(errs...)
}
