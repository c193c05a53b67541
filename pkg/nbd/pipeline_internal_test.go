package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// slowDevice is a memory disk that logs the writes and syncs it completes,
// in order, and holds writes whose data starts with slow for a while.
type slowDevice struct {
	*blockdev.Memory
	slow byte
	mu   sync.Mutex
	log  []string
}

func (d *slowDevice) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if p[0] == d.slow {
		time.Sleep(50 * time.Millisecond)
	}
	n, err := d.Memory.WriteAt(ctx, p, off)
	d.mu.Lock()
	d.log = append(d.log, string(rune('0'+p[0])))
	d.mu.Unlock()
	return n, err
}

func (d *slowDevice) Sync(ctx context.Context) error {
	d.mu.Lock()
	d.log = append(d.log, "sync")
	d.mu.Unlock()
	return nil
}

// TestPipelinedRequestsKeepTheirOrder sends requests without waiting for
// answers, as qemu and fio do: a write that overlaps a slow earlier write
// lands after it, a write elsewhere does not wait for it (it is answered
// first), a flush is carried out after every write sent before it, and a
// read after them sees them.
func TestPipelinedRequestsKeepTheirOrder(t *testing.T) {
	dev := &slowDevice{Memory: blockdev.NewMemory(4 << 20), slow: 1}
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)), Access{})
	defer srv.Close()
	srv.Add(Export{Name: "disk", Device: dev})
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	cl, err := Dial("unix:"+sock, "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.c.Close()

	// The requests go out in one write, as a client with a queue sends
	// them: the server reads them all before the first is done.
	var reqs []byte
	send := func(typ uint16, handle uint64, off int64, n int, fill byte) {
		req := binary.BigEndian.AppendUint32(nil, magicRequest)
		req = binary.BigEndian.AppendUint16(req, 0)
		req = binary.BigEndian.AppendUint16(req, typ)
		req = binary.BigEndian.AppendUint64(req, handle)
		req = binary.BigEndian.AppendUint64(req, uint64(off))
		req = binary.BigEndian.AppendUint32(req, uint32(n))
		if typ == cmdWrite {
			req = append(req, bytes.Repeat([]byte{fill}, n)...)
		}
		reqs = append(reqs, req...)
	}
	send(cmdWrite, 1, 0, 8192, 1)     // slow, blocks 0 and 1
	send(cmdWrite, 2, 4096, 4096, 2)  // block 1 again: after write 1
	send(cmdWrite, 3, 1<<20, 4096, 3) // elsewhere: need not wait
	send(cmdFlush, 4, 0, 0, 0)        // after writes 1, 2 and 3
	send(cmdRead, 5, 0, 8192, 0)      // sees writes 1 and 2
	if _, err := cl.c.Write(reqs); err != nil {
		t.Fatal(err)
	}
	var answered []uint64
	var read []byte
	for range 5 {
		var hdr [16]byte
		if _, err := io.ReadFull(cl.c, hdr[:]); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint32(hdr[0:]) != magicReply || binary.BigEndian.Uint32(hdr[4:]) != 0 {
			t.Fatalf("reply %x", hdr)
		}
		h := binary.BigEndian.Uint64(hdr[8:])
		answered = append(answered, h)
		if h == 5 {
			read = make([]byte, 8192)
			if _, err := io.ReadFull(cl.c, read); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := append(bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)...)
	if !bytes.Equal(read, want) {
		t.Fatalf("read after the writes: %x... %x..., want block 0 of write 1 and block 1 of write 2", read[:4], read[4096:4100])
	}
	dev.mu.Lock()
	log := slices.Clone(dev.log)
	dev.mu.Unlock()
	if !slices.Equal(log, []string{"3", "1", "2", "sync"}) {
		t.Fatalf("the device saw %v, want the write elsewhere first, the overlapping writes in the client's order, then the flush", log)
	}
	if answered[0] != 3 {
		t.Fatalf("answers in order %v: the write elsewhere waited for the slow one", answered)
	}
}
