// Package journal is Ferry's store of replicated writes and recovery points,
// kept in one bbolt file. Per VM it holds the ordered stream of writes (the
// metadata of each record apart from its payload, so that indexes are built
// without reading data), the recovery points cut in that stream, and the
// VM's replication state. Every stored write carries the xxhash64 of its
// bytes, and every read checks it.
package journal

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

var (
	bucketVMs    = []byte("vms")
	bucketMeta   = []byte("meta")
	bucketData   = []byte("data")
	bucketPoints = []byte("points")
	bucketKeys   = []byte("keys")
)

func vmBucketName(vm ferry.VMID) []byte { return []byte("vm/" + string(vm)) }

// Options tune the bbolt file.
type Options struct {
	// InitialMmapSize avoids remapping while the file grows (default 1 GiB of
	// address space; it costs no memory until used).
	InitialMmapSize int
	// AllocSize is how much the file grows at once (default 64 MiB); each
	// growth is a truncate and an fsync.
	AllocSize int
	// NoSync skips fsync: for tests of logic only, never for real data.
	NoSync bool
	// Key, when set (32 bytes), encrypts every write payload appended from
	// now on with AES-256-GCM, bound to its VM, sequence, disk, offset and
	// length. Payloads stored before stay readable as they are.
	Key []byte
}

// Journal is one bbolt file holding the journals of many VMs. All methods
// are safe for concurrent use. Appends are serialized by bbolt; callers
// batch records (group commit) because every Append is one fsync.
type Journal struct {
	db   *bolt.DB
	path string

	mu     sync.Mutex
	failed error // sticky: set when a commit failed

	procMu sync.Mutex // serializes Process

	baseMu sync.RWMutex
	bases  map[ferry.VMID][]blockdev.Device

	hashMu    sync.Mutex
	hashCache *blockHashCache // block hashes of the last full chunk-hash pass

	seal *sealer // nil: payloads are stored in plain text
	cold Cold    // nil: no payload was sealed away
}

// Open opens or creates the journal file at path.
func Open(path string, opts Options) (*Journal, error) {
	var seal *sealer
	if opts.Key != nil {
		var err error
		if seal, err = newSealer(opts.Key); err != nil {
			return nil, err
		}
	}
	if opts.InitialMmapSize == 0 {
		opts.InitialMmapSize = 1 << 30
	}
	if opts.AllocSize == 0 {
		opts.AllocSize = 64 << 20
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         2 * time.Second,
		FreelistType:    bolt.FreelistMapType,
		NoFreelistSync:  true,
		InitialMmapSize: opts.InitialMmapSize,
		NoSync:          opts.NoSync,
	})
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	db.AllocSize = opts.AllocSize
	if err := db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketVMs); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketKeys); err != nil {
			return err
		}
		return checkKey(tx, seal)
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	return &Journal{db: db, path: path, bases: map[ferry.VMID][]blockdev.Device{}, seal: seal}, nil
}

// Close closes the file.
func (j *Journal) Close() error { return j.db.Close() }

// Path is the journal file's path.
func (j *Journal) Path() string { return j.path }

// Size is the journal file's size in bytes.
func (j *Journal) Size() int64 {
	fi, err := os.Stat(j.path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Err returns the sticky error of a failed commit, or nil.
func (j *Journal) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.failed
}

// update runs fn in a read-write transaction. A failed commit makes the
// journal refuse every later update: after an fsync error the file's state
// is unknown, so nothing may be acknowledged from it again.
func (j *Journal) update(fn func(tx *bolt.Tx) error) error {
	if err := j.Err(); err != nil {
		return err
	}
	tx, err := j.db.Begin(true)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		j.mu.Lock()
		j.failed = fmt.Errorf("%w: %w", ErrFailed, err)
		j.mu.Unlock()
		return j.failed
	}
	return nil
}

// CreateVM registers a new VM with its disks and epoch.
func (j *Journal) CreateVM(ctx context.Context, vm VM) error {
	vm.BaseSeq = 0
	return j.createVM(vm)
}

// CreateVMAt registers a VM whose history up to vm.BaseSeq is a base the
// caller attaches next (AttachBase): a process server rebuilding the VM
// from an object store's base image. Its stream continues at BaseSeq+1,
// processed and write-ordered up to there (a base is cut at a point); its
// base has no recorded sums and it has no hash index.
func (j *Journal) CreateVMAt(ctx context.Context, vm VM) error {
	if vm.BaseSeq == 0 {
		return fmt.Errorf("create vm %s: %w: no base sequence", vm.Name, ErrInvalid)
	}
	return j.createVM(vm)
}

func (j *Journal) createVM(vm VM) error {
	if vm.Name == "" {
		return fmt.Errorf("create vm: %w: empty name", ErrInvalid)
	}
	if len(vm.Disks) == 0 {
		return fmt.Errorf("create vm %s: %w: no disks", vm.Name, ErrInvalid)
	}
	vm.LastSeq, vm.Consistent, vm.Points = 0, false, 0
	vm.ProcessedSeq, vm.ProcessedConsistent, vm.ColdSeq, vm.BaseChecked = 0, false, 0, false
	// A new VM's disks are zeros until written: its index starts complete.
	vm.HashIndex = indexable(&vm)
	if vm.BaseSeq > 0 {
		vm.LastSeq, vm.ProcessedSeq = vm.BaseSeq, vm.BaseSeq
		vm.Consistent, vm.ProcessedConsistent, vm.HashIndex = true, true, false
	}
	if vm.Created.IsZero() {
		vm.Created = time.Now().UTC()
	}
	return j.update(func(tx *bolt.Tx) error {
		vms := tx.Bucket(bucketVMs)
		if vms.Get([]byte(vm.Name)) != nil {
			return fmt.Errorf("create vm %s: %w", vm.Name, ErrVMExists)
		}
		b, err := tx.CreateBucket(vmBucketName(vm.Name))
		if err != nil {
			return fmt.Errorf("create vm %s: %w", vm.Name, err)
		}
		for _, name := range [][]byte{bucketMeta, bucketData, bucketPoints} {
			if _, err := b.CreateBucket(name); err != nil {
				return err
			}
		}
		return putVM(tx, &vm)
	})
}

// vmRecordV1 starts a VM record with a checksum: the JSON state, then the
// xxhash64 of the VM's name and that JSON. A record that starts with '{'
// is from before checksums and is read as it is.
const vmRecordV1 = 0x01

func putVM(tx *bolt.Tx, vm *VM) error {
	js, err := json.Marshal(vm)
	if err != nil {
		return err
	}
	buf := make([]byte, 0, 1+len(js)+8)
	buf = append(append(buf, vmRecordV1), js...)
	buf = binary.BigEndian.AppendUint64(buf, vmRecordSum(vm.Name, js))
	return tx.Bucket(bucketVMs).Put([]byte(vm.Name), buf)
}

func vmRecordSum(name ferry.VMID, js []byte) uint64 {
	d := xxhash.New()
	d.WriteString(string(name))
	d.Write([]byte{0})
	d.Write(js)
	return d.Sum64()
}

// decodeVM checks and decodes a stored VM record.
func decodeVM(name ferry.VMID, buf []byte) (*VM, error) {
	js := buf
	if len(buf) > 0 && buf[0] == vmRecordV1 {
		if len(buf) < 1+8 {
			return nil, &CorruptError{VM: name, Disk: -1, Err: fmt.Errorf("%w: VM record of %d bytes", ErrChecksum, len(buf))}
		}
		js = buf[1 : len(buf)-8]
		if binary.BigEndian.Uint64(buf[len(buf)-8:]) != vmRecordSum(name, js) {
			return nil, &CorruptError{VM: name, Disk: -1, Err: fmt.Errorf("%w: VM record", ErrChecksum)}
		}
	}
	vm := new(VM)
	if err := json.Unmarshal(js, vm); err != nil {
		return nil, &CorruptError{VM: name, Disk: -1, Err: fmt.Errorf("%w: VM record: %w", ErrChecksum, err)}
	}
	return vm, nil
}

func getVM(tx *bolt.Tx, name ferry.VMID) (*VM, error) {
	buf := tx.Bucket(bucketVMs).Get([]byte(name))
	if buf == nil {
		return nil, fmt.Errorf("vm %s: %w", name, ErrNoVM)
	}
	return decodeVM(name, buf)
}

// getVMDisk is getVM for a read of one of its disks, by index.
func getVMDisk(tx *bolt.Tx, name ferry.VMID, disk int) (*VM, error) {
	vm, err := getVM(tx, name)
	if err != nil {
		return nil, err
	}
	if disk < 0 || disk >= len(vm.Disks) {
		return nil, fmt.Errorf("vm %s: %w: index %d", name, ErrNoDisk, disk)
	}
	return vm, nil
}

// VM returns the state of one VM.
func (j *Journal) VM(ctx context.Context, name ferry.VMID) (VM, error) {
	var vm *VM
	err := j.db.View(func(tx *bolt.Tx) (err error) {
		vm, err = getVM(tx, name)
		return err
	})
	if err != nil {
		return VM{}, err
	}
	return *vm, nil
}

// VMs returns the state of every VM, by name.
func (j *Journal) VMs(ctx context.Context) ([]VM, error) {
	var out []VM
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			vm, err := decodeVM(ferry.VMID(k), v)
			if err != nil {
				return err
			}
			out = append(out, *vm)
			return nil
		})
	})
	return out, err
}

// Append stores records of one or more VMs in one transaction and returns
// once they are durable. Each VM's records must continue its stream without
// a gap; a marker must not fall inside a drain. Either every record is
// stored or none is.
func (j *Journal) Append(ctx context.Context, recs []Record) error {
	return j.update(func(tx *bolt.Tx) error {
		vms := map[ferry.VMID]*VM{}
		for i := range recs {
			r := &recs[i]
			vm := vms[r.VM]
			if vm == nil {
				var err error
				if vm, err = getVM(tx, r.VM); err != nil {
					return fmt.Errorf("append: %w", err)
				}
				vms[r.VM] = vm
			}
			if err := appendRecord(tx, vm, r, j.seal); err != nil {
				return fmt.Errorf("append: %w", err)
			}
		}
		for _, vm := range vms {
			if err := putVM(tx, vm); err != nil {
				return err
			}
		}
		return nil
	})
}

// check applies the journal's rules for one record to the VM's state
// without storing anything: the sequence must follow, a write must lie on
// one of the VM's disks, a marker must not fall inside a drain.
func (vm *VM) check(r *Record) error {
	if r.Seq != vm.LastSeq+1 {
		return fmt.Errorf("vm %s: record %d: %w %d", vm.Name, r.Seq, ErrSequence, vm.LastSeq)
	}
	switch r.Kind {
	case KindWrite:
		if r.Disk < 0 || r.Disk >= len(vm.Disks) {
			return fmt.Errorf("vm %s: record %d: %w: disk %d", vm.Name, r.Seq, ErrInvalid, r.Disk)
		}
		if r.Offset < 0 || r.Length <= 0 || r.Offset+int64(r.Length) > vm.Disks[r.Disk].Size {
			return fmt.Errorf("vm %s: record %d: %w: %d bytes at %d beyond disk", vm.Name, r.Seq, ErrInvalid, r.Length, r.Offset)
		}
		if r.Codec != CodecZero && r.Codec != CodecRaw && r.Codec != CodecZstd && r.Codec != CodecS2 {
			return fmt.Errorf("vm %s: record %d: %w: codec %d", vm.Name, r.Seq, ErrInvalid, r.Codec)
		}
	case KindMarker:
		if !vm.Consistent {
			return fmt.Errorf("vm %s: marker %d: %w", vm.Name, r.Seq, ErrInconsistent)
		}
		if r.Consistency != ferry.Crash && r.Consistency != ferry.App {
			return fmt.Errorf("vm %s: marker %d: %w: consistency %d", vm.Name, r.Seq, ErrInvalid, r.Consistency)
		}
	case KindDrainBegin:
		vm.Consistent = false
	case KindDrainEnd:
		vm.Consistent = true
	default:
		return fmt.Errorf("vm %s: record %d: %w: kind %d", vm.Name, r.Seq, ErrInvalid, r.Kind)
	}
	vm.LastSeq = r.Seq
	return nil
}

// CheckRecords reports whether Append would accept recs for a VM in the
// given state, without storing anything.
func CheckRecords(vm VM, recs []Record) error {
	for i := range recs {
		if err := vm.check(&recs[i]); err != nil {
			return err
		}
	}
	return nil
}

func appendRecord(tx *bolt.Tx, vm *VM, r *Record, seal *sealer) error {
	if err := vm.check(r); err != nil {
		return err
	}
	b := tx.Bucket(vmBucketName(vm.Name))
	key := seqKey(r.Seq)
	switch r.Kind {
	case KindWrite:
		stored := r.Payload
		if r.Codec != CodecZero {
			if seal != nil {
				var err error
				if stored, err = seal.seal(r, r.Payload); err != nil {
					return err
				}
				r.Encrypted = true
			}
			if err := b.Bucket(bucketData).Put(key, stored); err != nil {
				return err
			}
		}
		vm.LogicalBytes += uint64(r.Length)
		vm.StoredBytes += uint64(len(stored))
		if err := indexWrite(tx, vm, r); err != nil {
			return err
		}
	}
	return b.Bucket(bucketMeta).Put(key, encodeMeta(r))
}

func putPoint(b *bolt.Bucket, vm *VM, p *ferry.Point) error {
	if p.Time.IsZero() {
		p.Time = time.Now().UTC()
	}
	pts := b.Bucket(bucketPoints)
	if pts.Get(seqKey(p.ID)) == nil {
		vm.Points++
	}
	if err := pts.Put(seqKey(p.ID), encodePoint(p)); err != nil {
		return err
	}
	if p.Time.After(vm.LatestPoint) {
		vm.LatestPoint = p.Time
	}
	return nil
}

// CutPoint processes everything received for the VM, then makes a
// crash-consistent point at its last durable record, so that the point holds
// everything received ("latest"). It returns the existing point if one is
// already there. It fails with ErrInconsistent inside a drain.
func (j *Journal) CutPoint(ctx context.Context, name ferry.VMID, tag string, at time.Time) (ferry.Point, ProcessStats, error) {
	st, err := j.Process(ctx, name, ^ferry.Seq(0))
	if err != nil {
		return ferry.Point{}, st, err
	}
	var p ferry.Point
	err = j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		// Records may have arrived since Process returned: the point is cut
		// where processing ended, and must be write-ordered there.
		if !vm.ProcessedConsistent {
			return fmt.Errorf("vm %s: cut point: %w", name, ErrInconsistent)
		}
		b := tx.Bucket(vmBucketName(name))
		if v := b.Bucket(bucketPoints).Get(seqKey(vm.ProcessedSeq)); v != nil {
			p, err = decodePoint(name, vm.ProcessedSeq, v)
			return err
		}
		p = ferry.Point{VM: name, ID: vm.ProcessedSeq, Consistency: ferry.Crash, Tag: tag, Time: at.UTC()}
		if err := putPoint(b, vm, &p); err != nil {
			return err
		}
		return putVM(tx, vm)
	})
	return p, st, err
}

// DeleteVM removes a VM and everything the journal holds of it.
func (j *Journal) DeleteVM(ctx context.Context, name ferry.VMID) error {
	j.baseMu.Lock()
	delete(j.bases, name)
	j.baseMu.Unlock()
	return j.update(func(tx *bolt.Tx) error {
		if _, err := getVM(tx, name); err != nil {
			return err
		}
		if err := tx.DeleteBucket(vmBucketName(name)); err != nil {
			return err
		}
		return tx.Bucket(bucketVMs).Delete([]byte(name))
	})
}

// BumpEpoch raises the VM's epoch by one and returns it: streams of the
// older epoch are refused from then on.
func (j *Journal) BumpEpoch(ctx context.Context, name ferry.VMID) (ferry.Epoch, error) {
	var e ferry.Epoch
	err := j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		vm.Epoch++
		e = vm.Epoch
		return putVM(tx, vm)
	})
	return e, err
}

// DeletePoints removes every recovery point of the VM (a committed
// failover keeps none).
func (j *Journal) DeletePoints(ctx context.Context, name ferry.VMID) error {
	return j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		b := tx.Bucket(vmBucketName(name))
		if err := b.DeleteBucket(bucketPoints); err != nil {
			return err
		}
		if _, err := b.CreateBucket(bucketPoints); err != nil {
			return err
		}
		vm.Points, vm.LatestPoint = 0, time.Time{}
		return putVM(tx, vm)
	})
}

// SetConsistency changes the consistency recorded for the VM's points ids
// (a policy keeping fewer app-consistent points records the others as
// crash-consistent). IDs that are not points are an error; nothing changes
// then.
func (j *Journal) SetConsistency(ctx context.Context, name ferry.VMID, ids []ferry.Seq, c ferry.Consistency) error {
	return j.update(func(tx *bolt.Tx) error {
		if _, err := getVM(tx, name); err != nil {
			return err
		}
		pts := tx.Bucket(vmBucketName(name)).Bucket(bucketPoints)
		for _, id := range ids {
			v := pts.Get(seqKey(id))
			if v == nil {
				return fmt.Errorf("vm %s: point %d: %w", name, id, ErrNoPoint)
			}
			p, err := decodePoint(name, id, v)
			if err != nil {
				return err
			}
			p.Consistency = c
			if err := pts.Put(seqKey(id), encodePoint(&p)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Points returns the VM's recovery points, oldest first.
func (j *Journal) Points(ctx context.Context, name ferry.VMID) ([]ferry.Point, error) {
	var out []ferry.Point
	err := j.db.View(func(tx *bolt.Tx) error {
		if _, err := getVM(tx, name); err != nil {
			return err
		}
		return tx.Bucket(vmBucketName(name)).Bucket(bucketPoints).ForEach(func(k, v []byte) error {
			p, err := decodePoint(name, keySeq(k), v)
			out = append(out, p)
			return err
		})
	})
	return out, err
}

// Point returns one recovery point.
func (j *Journal) Point(ctx context.Context, name ferry.VMID, id ferry.Seq) (ferry.Point, error) {
	var p ferry.Point
	err := j.db.View(func(tx *bolt.Tx) error {
		if _, err := getVM(tx, name); err != nil {
			return err
		}
		v := tx.Bucket(vmBucketName(name)).Bucket(bucketPoints).Get(seqKey(id))
		if v == nil {
			return fmt.Errorf("vm %s: point %d: %w", name, id, ErrNoPoint)
		}
		var err error
		p, err = decodePoint(name, id, v)
		return err
	})
	return p, err
}

// LatestPoint returns the VM's newest recovery point.
func (j *Journal) LatestPoint(ctx context.Context, name ferry.VMID) (ferry.Point, error) {
	var p ferry.Point
	err := j.db.View(func(tx *bolt.Tx) error {
		if _, err := getVM(tx, name); err != nil {
			return err
		}
		k, v := tx.Bucket(vmBucketName(name)).Bucket(bucketPoints).Cursor().Last()
		if k == nil {
			return fmt.Errorf("vm %s: %w: the VM has no recovery point yet", name, ErrNoPoint)
		}
		var err error
		p, err = decodePoint(name, keySeq(k), v)
		return err
	})
	return p, err
}

var errStop = errors.New("stop")
