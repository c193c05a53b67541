package ferry

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
)

// VMID names a protected VM.
type VMID string

// DiskID names one disk of a VM.
type DiskID string

// Seq numbers the records of one VM's stream, from 1, without gaps.
type Seq uint64

// Epoch numbers the replication directions of a VM; it grows on every
// failover and failback so that an agent of an older direction is refused.
type Epoch uint64

// Consistency is the kind of a recovery point.
type Consistency uint8

const (
	// Crash is a cut in write order: what a disk holds after a power loss.
	Crash Consistency = 1
	// App is a cut taken while the application was quiesced.
	App Consistency = 2
)

func (c Consistency) String() string {
	switch c {
	case Crash:
		return "crash-consistent"
	case App:
		return "app-consistent"
	}
	return fmt.Sprintf("consistency(%d)", uint8(c))
}

// Disk is one disk of a VM.
type Disk struct {
	Name DiskID `json:"name"`
	Size int64  `json:"size"`
}

// Point is a recovery point: the state of a VM's disks after every write
// with a sequence up to and including ID, and none after it.
type Point struct {
	VM          VMID
	ID          Seq
	Consistency Consistency
	Tag         string
	Time        time.Time
}

// ZeroSum returns the xxhash64 of n zero bytes: the hash of a block or
// chunk that was never written.
func ZeroSum(n int) uint64 {
	d := xxhash.New()
	var z [4096]byte
	for n > 0 {
		c := min(n, len(z))
		d.Write(z[:c])
		n -= c
	}
	return d.Sum64()
}

// BlockSize is the unit Ferry hashes, tracks and replicates: every
// replicated write covers whole 4 KiB blocks.
const BlockSize = 4096

// FoldSums returns a chunk's hash from its blocks' xxhash64 sums: the
// xxhash64 of the sums, little-endian, in order. Both ends of a resync
// compute it, the agent from the disk's blocks and the receiver from the
// sums it kept as writes arrived.
func FoldSums(sums []uint64) uint64 {
	var buf [8 * 16]byte
	d := xxhash.New()
	for len(sums) > 0 {
		n := min(len(sums), 16)
		for i, s := range sums[:n] {
			binary.LittleEndian.PutUint64(buf[8*i:], s)
		}
		d.Write(buf[:8*n])
		sums = sums[n:]
	}
	return d.Sum64()
}

// BlockSums returns the xxhash64 of each BlockSize block of p (the last
// one may be short).
func BlockSums(dst []uint64, p []byte) []uint64 {
	for off := 0; off < len(p); off += BlockSize {
		dst = append(dst, xxhash.Sum64(p[off:min(off+BlockSize, len(p))]))
	}
	return dst
}

// Range is a byte range of one of a VM's disks (by index).
type Range struct {
	Disk           int
	Offset, Length int64
}
