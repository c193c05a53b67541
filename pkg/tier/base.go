package tier

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
)

// Retention in the bucket. When the process server's retention has folded
// a VM's oldest records into its base images, ShipBase puts those images
// into the bucket (vms/VM/base/SEQ/diskN, then vms/VM/base/SEQ/manifest,
// which makes the base count) and deletes what the base makes unnecessary:
// the segments that end at or before SEQ and the older bases. A restore
// starts from the newest base and replays the segments after it.
//
// A base image is its disk's non-zero 4 KiB blocks, as runs:
//
//	"FBAS" version(1) size(8)
//	per run: offset(8) length(4) bytes
//	end: offset 2^64-1, length 0

// Bases is where a process server keeps VMs' base images.
type Bases interface {
	// Create makes new base images of vm's disks, all zeros (dropping
	// any it had).
	Create(vm journal.VM) ([]blockdev.Device, error)
	// Drop removes vm's base images, if it has any.
	Drop(vm ferry.VMID) error
}

const (
	baseMagic   = "FBAS"
	baseVersion = 1
	baseEnd     = ^uint64(0)
	// baseRun bounds one run of a base image (bytes read at once).
	baseRun = 1 << 20
)

func basePrefix(vm ferry.VMID) string { return "vms/" + string(vm) + "/base/" }

func baseDir(vm ferry.VMID, seq ferry.Seq) string {
	return fmt.Sprintf("%s%016x/", basePrefix(vm), uint64(seq))
}

type baseManifest struct {
	Seq   ferry.Seq `json:"seq"`
	Sizes []int64   `json:"sizes"`
	// Bytes of the images' runs (their non-zero blocks).
	Bytes int64 `json:"bytes"`
}

// latestBase is the sequence of the VM's newest complete base in the
// bucket (0: none) and its manifest.
func (t *Tier) latestBase(ctx context.Context, vm ferry.VMID) (baseManifest, error) {
	names, err := t.st.List(ctx, basePrefix(vm))
	if err != nil {
		return baseManifest{}, err
	}
	var best ferry.Seq
	for _, n := range names {
		rest, ok := strings.CutSuffix(strings.TrimPrefix(n, basePrefix(vm)), "/manifest")
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(rest, 16, 64)
		if err == nil && ferry.Seq(seq) > best {
			best = ferry.Seq(seq)
		}
	}
	if best == 0 {
		return baseManifest{}, nil
	}
	b, err := t.st.Get(ctx, baseDir(vm, best)+"manifest")
	if err != nil {
		return baseManifest{}, err
	}
	var m baseManifest
	if err := json.Unmarshal(b, &m); err != nil || m.Seq != best {
		return baseManifest{}, fmt.Errorf("tier: vm %s: base %d: bad manifest (%v)", vm, best, err)
	}
	return m, nil
}

// BaseStats says what ShipBase did.
type BaseStats struct {
	Seq ferry.Seq
	// Bytes of non-zero blocks put; Deleted objects (segments and older
	// bases).
	Bytes   int64
	Deleted int
	// Waiting: the segments a new base would free are still smaller than
	// the bucket's base: none was shipped.
	Waiting bool
}

// ShipBase puts the VM's base images into the bucket when the journal's
// base is newer than the bucket's, then deletes the segments and bases it
// makes unnecessary. The VM's records up to the base must be in the bucket
// (they are: they were acknowledged).
//
// A base is put whole, so it is put only once the segments it frees weigh
// at least as much as the bucket's current base: the bytes put for bases
// never exceed the bytes of records they let go of, and the bucket holds
// at most about one base's worth of history beyond the retention window.
func (t *Tier) ShipBase(ctx context.Context, j *journal.Journal, vm ferry.VMID) (BaseStats, error) {
	var st BaseStats
	cur, err := j.VM(ctx, vm)
	if err != nil {
		return st, err
	}
	devs := j.Base(vm)
	if cur.BaseSeq == 0 || devs == nil {
		return st, nil
	}
	have, err := t.latestBase(ctx, vm)
	if err != nil || have.Seq >= cur.BaseSeq {
		return st, err
	}
	end, err := t.End(ctx, vm)
	if err != nil {
		return st, err
	}
	if end < cur.BaseSeq {
		return st, fmt.Errorf("tier: vm %s: base at %d, the bucket's records end at %d", vm, cur.BaseSeq, end)
	}
	objs, err := t.st.ListObjects(ctx, segPrefix(vm))
	if err != nil {
		return st, err
	}
	var freed int64
	for _, o := range objs {
		if s, ok := parseSeg(vm, o.Name); ok && s.last <= cur.BaseSeq {
			freed += o.Size
		}
	}
	if have.Seq > 0 && freed < have.Bytes {
		st.Waiting = true
		return st, nil
	}
	st.Seq = cur.BaseSeq
	dir := baseDir(vm, cur.BaseSeq)
	if st.Bytes, err = t.putBase(ctx, vm, cur.BaseSeq, devs); err != nil {
		return st, err
	}
	// What the base holds is in the bucket now: the segments that end
	// before it and the older bases go.
	for _, o := range objs {
		if s, ok := parseSeg(vm, o.Name); ok && s.last <= cur.BaseSeq {
			if err := t.st.Delete(ctx, o.Name); err != nil {
				return st, err
			}
			st.Deleted++
		}
	}
	bases, err := t.st.List(ctx, basePrefix(vm))
	if err != nil {
		return st, err
	}
	for _, n := range bases {
		if !strings.HasPrefix(n, dir) {
			if err := t.st.Delete(ctx, n); err != nil {
				return st, err
			}
			st.Deleted++
		}
	}
	t.mu.Lock()
	delete(t.index, vm)
	t.mu.Unlock()
	return st, nil
}

// putBase puts base images at seq and, last, their manifest; it returns
// the bytes of their runs.
func (t *Tier) putBase(ctx context.Context, vm ferry.VMID, seq ferry.Seq, devs []blockdev.Device) (int64, error) {
	dir := baseDir(vm, seq)
	m := baseManifest{Seq: seq}
	for i, d := range devs {
		n, err := t.putImage(ctx, dir+fmt.Sprintf("disk%d", i), d)
		if err != nil {
			return 0, fmt.Errorf("tier: vm %s: base disk %d: %w", vm, i, err)
		}
		m.Bytes += n
		m.Sizes = append(m.Sizes, d.Size())
	}
	js, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	if err := t.st.Put(ctx, dir+"manifest", js); err != nil {
		return 0, err
	}
	return m.Bytes, nil
}

// putImage streams a disk's non-zero blocks into an object.
func (t *Tier) putImage(ctx context.Context, name string, d blockdev.Device) (int64, error) {
	w, err := t.st.Create(ctx, name)
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	fail := func(err error) (int64, error) {
		w.Abort()
		return 0, err
	}
	hdr := append([]byte(baseMagic), baseVersion)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(d.Size()))
	if _, err := bw.Write(hdr); err != nil {
		return fail(err)
	}
	var n int64
	buf := make([]byte, baseRun)
	for off := int64(0); off < d.Size(); off += baseRun {
		c := min(int64(baseRun), d.Size()-off)
		if _, err := d.ReadAt(ctx, buf[:c], off); err != nil {
			return fail(err)
		}
		for i := int64(0); i < c; {
			for i < c && blockdev.IsZero(buf[i:min(i+blockdev.BlockSize, c)]) {
				i += blockdev.BlockSize
			}
			k := i
			for k < c && !blockdev.IsZero(buf[k:min(k+blockdev.BlockSize, c)]) {
				k += blockdev.BlockSize
			}
			k = min(k, c)
			if k > i {
				var run [12]byte
				binary.BigEndian.PutUint64(run[:], uint64(off+i))
				binary.BigEndian.PutUint32(run[8:], uint32(k-i))
				if _, err := bw.Write(run[:]); err != nil {
					return fail(err)
				}
				if _, err := bw.Write(buf[i:k]); err != nil {
					return fail(err)
				}
				n += k - i
			}
			i = k
		}
	}
	var end [12]byte
	binary.BigEndian.PutUint64(end[:], baseEnd)
	if _, err := bw.Write(end[:]); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	return n, w.Close()
}

// errBaseImage: a base image object that does not decode.
var errBaseImage = errors.New("tier: bad base image")

// getImage writes a base image object into d (all zeros before).
func (t *Tier) getImage(ctx context.Context, name string, d blockdev.Device) error {
	r, err := t.st.Open(ctx, name)
	if err != nil {
		return err
	}
	defer r.Close()
	br := bufio.NewReaderSize(r, 1<<20)
	hdr := make([]byte, len(baseMagic)+9)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return fmt.Errorf("%w: %s: %w", errBaseImage, name, err)
	}
	if string(hdr[:4]) != baseMagic || hdr[4] != baseVersion || int64(binary.BigEndian.Uint64(hdr[5:])) != d.Size() {
		return fmt.Errorf("%w: %s: header", errBaseImage, name)
	}
	buf := make([]byte, baseRun)
	var run [12]byte
	for {
		if _, err := io.ReadFull(br, run[:]); err != nil {
			return fmt.Errorf("%w: %s: %w", errBaseImage, name, err)
		}
		off, n := binary.BigEndian.Uint64(run[:]), int64(binary.BigEndian.Uint32(run[8:]))
		if off == baseEnd && n == 0 {
			if _, err := br.ReadByte(); err != io.EOF {
				return fmt.Errorf("%w: %s: bytes after the end", errBaseImage, name)
			}
			return d.Sync(ctx)
		}
		if n <= 0 || n > baseRun || off > uint64(d.Size()) || int64(off)+n > d.Size() {
			return fmt.Errorf("%w: %s: run of %d bytes at %d", errBaseImage, name, n, off)
		}
		if _, err := io.ReadFull(br, buf[:n]); err != nil {
			return fmt.Errorf("%w: %s: %w", errBaseImage, name, err)
		}
		if _, err := d.WriteAt(ctx, buf[:n], int64(off)); err != nil {
			return err
		}
	}
}

// restoreBase makes new base images of vm from the bucket's base m and
// registers the VM at it.
func (t *Tier) restoreBase(ctx context.Context, j *journal.Journal, bases Bases, desc journal.VM, m baseManifest) error {
	if bases == nil {
		return fmt.Errorf("tier: vm %s: the bucket's history starts at a base image and there is nowhere to put it", desc.Name)
	}
	if len(m.Sizes) != len(desc.Disks) {
		return fmt.Errorf("tier: vm %s: base %d has %d disks, the VM %d", desc.Name, m.Seq, len(m.Sizes), len(desc.Disks))
	}
	desc.BaseSeq = m.Seq
	devs, err := bases.Create(desc)
	if err != nil {
		return err
	}
	for i, d := range devs {
		if err := t.getImage(ctx, baseDir(desc.Name, m.Seq)+fmt.Sprintf("disk%d", i), d); err != nil {
			return err
		}
	}
	if err := j.CreateVMAt(ctx, desc); err != nil {
		return err
	}
	return j.AttachBase(ctx, desc.Name, devs)
}
