//go:build linux

package fault

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// PowerFS is a FUSE file system (one flat directory, kept in memory) that
// models what a disk keeps when the power goes: a write or a truncate
// reaches the medium only when the file is fsynced. A process (the real
// ferry-ps binary) runs on it unchanged, bbolt's mmap included; after it
// is killed, PowerLoss says what each file holds on the medium, with the
// oldest unsynced write torn if asked. That is what the process finds
// when the machine comes back.
type PowerFS struct {
	server *fuse.Server
	root   *pfsDir
}

// LyingFsync makes fsync succeed without making anything durable, like a
// disk that lies about its cache: a test of the harness itself, which
// must then find acknowledged data missing.
func (p *PowerFS) LyingFsync(on bool) { p.root.lying.Store(on) }

type pfsDir struct {
	fs.Inode
	lying atomic.Bool
	mu    sync.Mutex
	files map[string]*pfsFile
	init  map[string][]byte
}

type pfsFile struct {
	fs.Inode
	dir     *pfsDir
	mu      sync.Mutex
	durable []byte // on the medium
	current []byte // what reads see
	pending []pfsOp
}

// pfsOp is a write or, with data nil, a truncate to size.
type pfsOp struct {
	off  int64
	data []byte
	size int64
}

var (
	_ = (fs.NodeOnAdder)((*pfsDir)(nil))
	_ = (fs.NodeCreater)((*pfsDir)(nil))
	_ = (fs.NodeOpener)((*pfsFile)(nil))
	_ = (fs.NodeReader)((*pfsFile)(nil))
	_ = (fs.NodeWriter)((*pfsFile)(nil))
	_ = (fs.NodeFsyncer)((*pfsFile)(nil))
	_ = (fs.NodeGetattrer)((*pfsFile)(nil))
	_ = (fs.NodeSetattrer)((*pfsFile)(nil))
	_ = (fs.NodeFlusher)((*pfsFile)(nil))
)

// MountPowerFS mounts a PowerFS on dir holding files (name -> content,
// all of it on the medium). It needs /dev/fuse and the right to mount.
func MountPowerFS(dir string, files map[string][]byte) (*PowerFS, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("power-loss file system: %w", err)
	}
	root := &pfsDir{files: map[string]*pfsFile{}, init: files}
	server, err := fs.Mount(dir, root, &fs.Options{MountOptions: fuse.MountOptions{DirectMount: true, FsName: "ferry-powerfs", Name: "powerfs"}})
	if err != nil {
		return nil, fmt.Errorf("power-loss file system: %w", err)
	}
	return &PowerFS{server: server, root: root}, nil
}

// PowerLoss returns what each file holds on the medium: every write and
// truncate since its last fsync is gone, except, with tear, the first half
// (whole 512-byte sectors) of the oldest unsynced write. It also says how
// many writes and truncates were lost.
func (p *PowerFS) PowerLoss(tear bool) (map[string][]byte, int) {
	p.root.mu.Lock()
	defer p.root.mu.Unlock()
	out := map[string][]byte{}
	lost := 0
	names := make([]string, 0, len(p.root.files))
	for n := range p.root.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := p.root.files[n]
		f.mu.Lock()
		lost += len(f.pending)
		img := append([]byte(nil), f.durable...)
		if tear {
			for _, op := range f.pending {
				if op.data == nil {
					continue
				}
				if k := len(op.data) / 512 / 2 * 512; k > 0 {
					img = applyWrite(img, op.off, op.data[:k])
				}
				break
			}
		}
		f.mu.Unlock()
		out[n] = img
	}
	return out, lost
}

// Unmount detaches the file system and lets go of its files (take
// PowerLoss first); whoever still uses it gets errors.
func (p *PowerFS) Unmount() error {
	err := p.server.Unmount()
	p.root.mu.Lock()
	defer p.root.mu.Unlock()
	for _, f := range p.root.files {
		f.mu.Lock()
		f.durable, f.current, f.pending = nil, nil, nil
		f.mu.Unlock()
	}
	p.root.files, p.root.init = map[string]*pfsFile{}, nil
	return err
}

func (d *pfsDir) OnAdd(ctx context.Context) {
	for name, data := range d.init {
		f := &pfsFile{dir: d, durable: append([]byte(nil), data...), current: append([]byte(nil), data...)}
		d.files[name] = f
		d.AddChild(name, d.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG}), true)
	}
}

func (d *pfsDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := &pfsFile{dir: d}
	d.files[name] = f
	ch := d.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG})
	d.AddChild(name, ch, true)
	out.Attr.Mode = syscall.S_IFREG | 0o600
	return ch, nil, 0, 0
}

func (f *pfsFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, 0
}

func (f *pfsFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.current)) {
		return fuse.ReadResultData(nil), 0
	}
	n := copy(dest, f.current[off:])
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *pfsFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current = applyWrite(f.current, off, data)
	f.pending = append(f.pending, pfsOp{off: off, data: append([]byte(nil), data...)})
	return uint32(len(data)), 0
}

func (f *pfsFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dir.lying.Load() {
		return 0
	}
	for _, op := range f.pending {
		if op.data == nil {
			f.durable = resize(f.durable, op.size)
		} else {
			f.durable = applyWrite(f.durable, op.off, op.data)
		}
	}
	f.pending = nil
	return 0
}

func (f *pfsFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (f *pfsFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	out.Attr.Mode = syscall.S_IFREG | 0o600
	out.Attr.Size = uint64(len(f.current))
	return 0
}

func (f *pfsFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sz, ok := in.GetSize(); ok {
		f.current = resize(f.current, int64(sz))
		f.pending = append(f.pending, pfsOp{size: int64(sz)})
	}
	out.Attr.Mode = syscall.S_IFREG | 0o600
	out.Attr.Size = uint64(len(f.current))
	return 0
}

func applyWrite(b []byte, off int64, data []byte) []byte {
	if end := off + int64(len(data)); end > int64(len(b)) {
		b = resize(b, end)
	}
	copy(b[off:], data)
	return b
}

func resize(b []byte, size int64) []byte {
	if size <= int64(len(b)) {
		return b[:size]
	}
	if size <= int64(cap(b)) {
		n := b[:size]
		clear(n[len(b):])
		return n
	}
	n := make([]byte, size, size+size/4)
	copy(n, b)
	return n
}
