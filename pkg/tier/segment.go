package tier

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
)

// A segment is a run of one VM's records, in order and without a gap, as
// the journal appended them: each write's payload encoded by its codec
// (not encrypted: the object store seals the whole object when it has a
// key) with the xxhash64 of its decoded bytes. The object's framing
// (pkg/objstore) checks every byte and binds the object to its name; the
// decoder still checks every length against what is left, so that a
// segment that is damaged past the framing cannot make it read wild.
//
//	"FSEG" version(1) count(uvarint)
//	per record: kind(1) seq(uvarint) disk(uvarint) offset(uvarint)
//	  length(uvarint) sum(8) codec(1) consistency(1) drain(1)
//	  time(varint, Unix ns, 0: none) tag(uvarint n, n bytes)
//	  payload(uvarint n, n bytes) blocksums(uvarint n, 8n bytes)
const (
	segMagic   = "FSEG"
	segVersion = 1
	// maxRecordField bounds a payload or a tag in a segment (a write is at
	// most a few MiB; the bound is far above and far below what would
	// exhaust memory).
	maxRecordField = 64 << 20
)

// ErrSegment: a segment that does not decode.
var ErrSegment = errors.New("tier: bad segment")

// EncodeSegment appends the records (of one VM, in order) to dst.
func EncodeSegment(dst []byte, recs []journal.Record) []byte {
	dst = append(dst, segMagic...)
	dst = append(dst, segVersion)
	dst = binary.AppendUvarint(dst, uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		dst = append(dst, byte(r.Kind))
		dst = binary.AppendUvarint(dst, uint64(r.Seq))
		dst = binary.AppendUvarint(dst, uint64(r.Disk))
		dst = binary.AppendUvarint(dst, uint64(r.Offset))
		dst = binary.AppendUvarint(dst, uint64(r.Length))
		dst = binary.BigEndian.AppendUint64(dst, r.Sum)
		dst = append(dst, byte(r.Codec), byte(r.Consistency), r.DrainReason)
		var ns int64
		if !r.Time.IsZero() {
			ns = r.Time.UnixNano()
		}
		dst = binary.AppendVarint(dst, ns)
		dst = binary.AppendUvarint(dst, uint64(len(r.Tag)))
		dst = append(dst, r.Tag...)
		dst = binary.AppendUvarint(dst, uint64(len(r.Payload)))
		dst = append(dst, r.Payload...)
		dst = binary.AppendUvarint(dst, uint64(len(r.BlockSums)))
		for _, s := range r.BlockSums {
			dst = binary.BigEndian.AppendUint64(dst, s)
		}
	}
	return dst
}

type segReader struct {
	b   []byte
	err error
}

func (d *segReader) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrSegment, what)
	}
}

func (d *segReader) uvarint(what string) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *segReader) varint(what string) int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *segReader) bytes(n uint64, what string) []byte {
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail(what)
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *segReader) u8(what string) byte {
	b := d.bytes(1, what)
	if b == nil {
		return 0
	}
	return b[0]
}

// DecodeSegment decodes a segment of vm's records. Payloads point into b.
// The records must follow each other without a gap.
func DecodeSegment(vm ferry.VMID, b []byte) ([]journal.Record, error) {
	d := &segReader{b: b}
	if string(d.bytes(uint64(len(segMagic)), "magic")) != segMagic {
		return nil, fmt.Errorf("%w: not a segment", ErrSegment)
	}
	if v := d.u8("version"); d.err == nil && v != segVersion {
		return nil, fmt.Errorf("%w: version %d", ErrSegment, v)
	}
	n := d.uvarint("count")
	// Each record takes at least 20 bytes: a count beyond that is a lie.
	if d.err == nil && n > uint64(len(d.b))/20 {
		d.fail("count")
	}
	if d.err != nil {
		return nil, d.err
	}
	recs := make([]journal.Record, 0, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		r := journal.Record{VM: vm}
		r.Kind = journal.Kind(d.u8("kind"))
		r.Seq = ferry.Seq(d.uvarint("seq"))
		disk := d.uvarint("disk")
		off := d.uvarint("offset")
		length := d.uvarint("length")
		if disk > 1<<16 || off > 1<<62 || length > maxRecordField {
			d.fail("write geometry")
		}
		r.Disk, r.Offset, r.Length = int(disk), int64(off), int(length)
		if s := d.bytes(8, "sum"); s != nil {
			r.Sum = binary.BigEndian.Uint64(s)
		}
		r.Codec = journal.Codec(d.u8("codec"))
		r.Consistency = ferry.Consistency(d.u8("consistency"))
		r.DrainReason = d.u8("drain")
		if ns := d.varint("time"); ns != 0 {
			r.Time = time.Unix(0, ns).UTC()
		}
		r.Tag = string(d.bytes(min(d.uvarint("tag"), maxRecordField+1), "tag"))
		if p := d.bytes(min(d.uvarint("payload"), maxRecordField+1), "payload"); len(p) > 0 {
			r.Payload = p
		}
		if ns := d.uvarint("block sums"); ns > 0 {
			if ns > uint64(len(d.b))/8 {
				d.fail("block sums")
			}
			if raw := d.bytes(ns*8, "block sums"); raw != nil {
				r.BlockSums = make([]uint64, ns)
				for k := range r.BlockSums {
					r.BlockSums[k] = binary.BigEndian.Uint64(raw[8*k:])
				}
			}
		}
		if d.err == nil && len(recs) > 0 && r.Seq != recs[len(recs)-1].Seq+1 {
			d.fail(fmt.Sprintf("record %d follows %d", r.Seq, recs[len(recs)-1].Seq))
		}
		recs = append(recs, r)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("bytes after the last record")
	}
	if d.err != nil {
		return nil, d.err
	}
	return recs, nil
}
