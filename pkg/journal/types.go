package journal

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
)

// Kind is the kind of a stream record.
type Kind uint8

const (
	KindWrite      Kind = 1
	KindMarker     Kind = 2
	KindDrainBegin Kind = 3
	KindDrainEnd   Kind = 4
)

// VM is what the journal keeps about one protected VM.
type VM struct {
	Name      ferry.VMID   `json:"name"`
	Disks     []ferry.Disk `json:"disks"`
	Epoch     ferry.Epoch  `json:"epoch"`
	BlockSize int          `json:"block_size"`
	// LastSeq is the highest durable sequence; 0 before the first record.
	LastSeq ferry.Seq `json:"last_seq"`
	// BaseSeq is the last record folded into the VM's base by retention:
	// records run from BaseSeq+1 to LastSeq.
	BaseSeq ferry.Seq `json:"base_seq,omitempty"`
	// BaseChecked: the base was made by retention from nothing, so every
	// non-zero block of it has a recorded sum.
	BaseChecked bool `json:"base_checked,omitempty"`
	// Consistent is false while a drain is open, and before the first one
	// (the initial replication) has ended.
	Consistent bool `json:"consistent"`
	// ProcessedSeq is the last record processed: markers up to it have
	// become recovery points, and the data up to it has been verified.
	ProcessedSeq   ferry.Seq `json:"processed_seq"`
	ProcessedBytes uint64    `json:"processed_bytes"`
	// ProcessedConsistent says whether the stream is write-ordered at
	// ProcessedSeq.
	ProcessedConsistent bool      `json:"processed_consistent"`
	Points              int       `json:"points"`
	LatestPoint         time.Time `json:"latest_point"`
	LogicalBytes        uint64    `json:"logical_bytes"`
	StoredBytes         uint64    `json:"stored_bytes"`
	Created             time.Time `json:"created"`
	// HashIndex: the VM's hash index holds the sum of every block of its
	// disks as of LastSeq (see hashindex.go).
	HashIndex bool `json:"hash_index,omitempty"`
	// ColdSeq: the payloads of the records up to it were sealed away to
	// the cold store (SealPayloads); ColdBytes is how many bytes of
	// StoredBytes that was.
	ColdSeq   ferry.Seq `json:"cold_seq,omitempty"`
	ColdBytes uint64    `json:"cold_bytes,omitempty"`
}

// DiskIndex returns the index of the named disk.
func (v *VM) DiskIndex(name ferry.DiskID) (int, error) {
	for i, d := range v.Disks {
		if d.Name == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("vm %s: %w %q", v.Name, ErrNoDisk, name)
}

// Record is one entry of a VM's stream as the journal stores it.
type Record struct {
	VM   ferry.VMID
	Seq  ferry.Seq
	Kind Kind

	// Writes.
	Disk    int
	Offset  int64
	Length  int
	Sum     uint64 // xxhash64 of the Length decoded bytes
	Codec   Codec
	Payload []byte // encoded by Codec; must stay unchanged until Append returns
	// BlockSums are the xxhash64 of each 4 KiB block of the write (none
	// for a zero write), for the VM's hash index; a write without them
	// ends the index.
	BlockSums []uint64
	// Encrypted: the stored payload is sealed (the journal's key).
	Encrypted bool

	// Markers.
	Consistency ferry.Consistency
	Tag         string
	Time        time.Time

	// Drains.
	DrainReason uint8
}

// Stored metadata ends its fixed part with an xxhash64 of the VM's name,
// the sequence and the metadata itself (with those 8 bytes zero), so a
// flipped bit in an offset, a length or a tag is found on read instead of
// placing verified data in the wrong spot; and the metadata cannot be
// read under another key.
// codecEncrypted marks, in the stored codec byte, a payload encrypted at
// rest.
const codecEncrypted = 0x80

const (
	metaFixed  = 42
	metaSum    = 34
	pointFixed = 17
	pointSum   = 9
)

func storedSum(vm ferry.VMID, seq ferry.Seq, b []byte, at int) uint64 {
	// b may be bbolt's read-only memory: hash around the sum's bytes.
	var zero [8]byte
	d := xxhash.New()
	d.WriteString(string(vm))
	d.Write(seqKey(seq))
	d.Write(b[:at])
	d.Write(zero[:])
	d.Write(b[at+8:])
	return d.Sum64()
}

func encodeMeta(r *Record) []byte {
	b := make([]byte, metaFixed, metaFixed+len(r.Tag))
	b[0] = byte(r.Kind)
	b[1] = byte(r.Codec)
	if r.Encrypted {
		b[1] |= codecEncrypted
	}
	binary.BigEndian.PutUint16(b[2:], uint16(r.Disk))
	binary.BigEndian.PutUint64(b[4:], uint64(r.Offset))
	binary.BigEndian.PutUint32(b[12:], uint32(r.Length))
	binary.BigEndian.PutUint64(b[16:], r.Sum)
	if !r.Time.IsZero() {
		binary.BigEndian.PutUint64(b[24:], uint64(r.Time.UnixNano()))
	}
	b[32] = byte(r.Consistency)
	b[33] = r.DrainReason
	b = append(b, r.Tag...)
	binary.BigEndian.PutUint64(b[metaSum:], storedSum(r.VM, r.Seq, b, metaSum))
	return b
}

func decodeMeta(vm ferry.VMID, seq ferry.Seq, b []byte) (Record, error) {
	if len(b) < metaFixed {
		return Record{}, &CorruptError{VM: vm, Seq: seq, Disk: -1, Err: fmt.Errorf("%w: metadata is %d bytes", ErrChecksum, len(b))}
	}
	if binary.BigEndian.Uint64(b[metaSum:]) != storedSum(vm, seq, b, metaSum) {
		return Record{}, &CorruptError{VM: vm, Seq: seq, Disk: -1, Err: fmt.Errorf("%w: record metadata", ErrChecksum)}
	}
	r := Record{
		VM:          vm,
		Seq:         seq,
		Kind:        Kind(b[0]),
		Codec:       Codec(b[1] &^ codecEncrypted),
		Encrypted:   b[1]&codecEncrypted != 0,
		Disk:        int(binary.BigEndian.Uint16(b[2:])),
		Offset:      int64(binary.BigEndian.Uint64(b[4:])),
		Length:      int(binary.BigEndian.Uint32(b[12:])),
		Sum:         binary.BigEndian.Uint64(b[16:]),
		Consistency: ferry.Consistency(b[32]),
		DrainReason: b[33],
		Tag:         string(b[metaFixed:]),
	}
	if ns := int64(binary.BigEndian.Uint64(b[24:])); ns != 0 {
		r.Time = time.Unix(0, ns).UTC()
	}
	return r, nil
}

func encodePoint(p *ferry.Point) []byte {
	b := make([]byte, pointFixed, pointFixed+len(p.Tag))
	b[0] = byte(p.Consistency)
	binary.BigEndian.PutUint64(b[1:], uint64(p.Time.UnixNano()))
	b = append(b, p.Tag...)
	binary.BigEndian.PutUint64(b[pointSum:], storedSum(p.VM, p.ID, b, pointSum))
	return b
}

func decodePoint(vm ferry.VMID, id ferry.Seq, b []byte) (ferry.Point, error) {
	if len(b) < pointFixed || binary.BigEndian.Uint64(b[pointSum:]) != storedSum(vm, id, b, pointSum) {
		return ferry.Point{}, fmt.Errorf("vm %s: point %d: %w: stored point", vm, id, ErrChecksum)
	}
	return ferry.Point{
		VM:          vm,
		ID:          id,
		Consistency: ferry.Consistency(b[0]),
		Time:        time.Unix(0, int64(binary.BigEndian.Uint64(b[1:]))).UTC(),
		Tag:         string(b[pointFixed:]),
	}, nil
}

func seqKey(s ferry.Seq) []byte { return binary.BigEndian.AppendUint64(nil, uint64(s)) }

func keySeq(k []byte) ferry.Seq { return ferry.Seq(binary.BigEndian.Uint64(k)) }
