package blockdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// File is a Device backed by a raw image file or a block device.
type File struct {
	f    *os.File
	size int64
}

// OpenFile opens an existing image file or block device for reading and
// writing (or only reading when readOnly is set). Its size is the file's
// size, or the device's capacity.
func OpenFile(path string, readOnly bool) (*File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open disk: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open disk %s: size: %w", path, err)
	}
	return &File{f: f, size: size}, nil
}

// CreateFile creates (or truncates) a sparse image file of the given size.
// Every byte reads as zero until written.
func CreateFile(path string, size int64) (*File, error) {
	return createFile(path, size, os.O_TRUNC)
}

// CreateNewFile is CreateFile for a path that must not exist yet: it never
// overwrites a file or follows a link planted in its place.
func CreateNewFile(path string, size int64) (*File, error) {
	return createFile(path, size, os.O_EXCL)
}

// createFile opens path for a disk of size bytes, readable by its owner
// only (a disk image is the machine's data), not following a symbolic
// link as the last element.
func createFile(path string, size int64, flag int) (*File, error) {
	if size < 0 {
		return nil, fmt.Errorf("create disk %s: negative size %d", path, size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|flag, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create disk: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("create disk %s: %w", path, err)
	}
	return &File{f: f, size: size}, nil
}

// Version returns the file's version when it is a regular file.
func (d *File) Version() (Version, bool, error) {
	fi, err := d.f.Stat()
	if err != nil {
		return Version{}, false, fmt.Errorf("disk version: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return Version{}, false, nil
	}
	return Version{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		Mtime: time.Unix(st.Mtim.Unix()), Ctime: time.Unix(st.Ctim.Unix())}, true, nil
}

func (d *File) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := checkRange("read", off, len(p), d.size); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}

func (d *File) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := checkRange("write", off, len(p), d.size); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

func (d *File) Size() int64 { return d.size }

func (d *File) Sync(ctx context.Context) error { return d.f.Sync() }

// Close closes the file.
func (d *File) Close() error { return d.f.Close() }

// Name is the path the file was opened with.
func (d *File) Name() string { return d.f.Name() }

// DataExtents walks the file's data with SEEK_DATA/SEEK_HOLE, so holes of a
// sparse image are skipped without reading them. Where the file system does
// not support it, the whole file is one extent.
func (d *File) DataExtents(ctx context.Context, fn func(off, length int64) error) error {
	fd := int(d.f.Fd())
	off := int64(0)
	for off < d.size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			if off == 0 {
				return fn(0, d.size)
			}
			return fmt.Errorf("seek data at %d: %w", off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole at %d: %w", data, err)
		}
		if hole > d.size {
			hole = d.size
		}
		if err := fn(data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}
