package journal

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
)

// TestFailureIsSticky: after one commit failed (its fsync or its write),
// the file's state is unknown, so the journal refuses every later write
// even once the storage works again: nothing may be acknowledged from it
// until it is opened anew (which checks it).
func TestFailureIsSticky(t *testing.T) {
	ctx := context.Background()
	j, err := Open(filepath.Join(t.TempDir(), "journal.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.CreateVM(ctx, VM{Name: "vm1", Epoch: 1, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: 64 << 10}}}); err != nil {
		t.Fatal(err)
	}
	seq := ferry.Seq(0)
	write := func() error {
		seq++
		data := make([]byte, 4096)
		data[0] = byte(seq)
		return j.Append(ctx, []Record{{VM: "vm1", Seq: seq, Kind: KindWrite, Length: 4096, Sum: xxhash.Sum64(data), Codec: CodecRaw, Payload: data}})
	}
	if err := j.Append(ctx, []Record{{VM: "vm1", Seq: 1, Kind: KindDrainBegin}}); err != nil {
		t.Fatal(err)
	}
	seq = 1
	if err := write(); err != nil {
		t.Fatal(err)
	}
	// Swap the file under bbolt for a read-only one: the next commit's
	// writes fail for real (EBADF) inside bbolt.
	fd := fdOf(t, j.path)
	saved, err := syscall.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(saved)
	ro, err := os.Open(j.path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := syscall.Dup3(int(ro.Fd()), fd, 0); err != nil {
		t.Fatal(err)
	}
	if err := write(); !errors.Is(err, ErrFailed) {
		t.Fatalf("append on a failing file: %v, want %v", err, ErrFailed)
	}
	// The storage works again; the journal still refuses.
	if err := syscall.Dup3(saved, fd, 0); err != nil {
		t.Fatal(err)
	}
	seq-- // the failed append's sequence was never stored
	if err := write(); !errors.Is(err, ErrFailed) {
		t.Fatalf("append after a failed commit: %v, want %v (sticky)", err, ErrFailed)
	}
	if err := j.CreateVM(ctx, VM{Name: "vm2", Epoch: 1, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: 64 << 10}}}); !errors.Is(err, ErrFailed) {
		t.Fatalf("another update after a failed commit: %v, want %v", err, ErrFailed)
	}
	if !errors.Is(j.Err(), ErrFailed) {
		t.Fatalf("Err() = %v after a failed commit", j.Err())
	}
}

// fdOf finds the descriptor this process holds open on path (bbolt's).
func fdOf(t *testing.T, path string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("needs /proc: ", err)
	}
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == path {
			fd, _ := strconv.Atoi(e.Name())
			return fd
		}
	}
	t.Fatalf("no descriptor open on %s", path)
	return -1
}
