package processserver_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const bs = 4096

func hello(vm string, epoch uint64, sizes ...uint64) *ferryv1.AgentMessage {
	h := &ferryv1.Hello{Vm: vm, Epoch: epoch, BlockSize: bs}
	for i, s := range sizes {
		h.Disks = append(h.Disks, &ferryv1.DiskInfo{Name: []string{"os", "data"}[i], SizeBytes: s})
	}
	return &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Hello{Hello: h}}
}

func batch(recs ...*ferryv1.Record) *ferryv1.AgentMessage {
	return &ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Batch{Batch: &ferryv1.Batch{Records: recs}}}
}

func write(seq uint64, disk uint32, off uint64, data []byte) *ferryv1.Record {
	return wire.Seal(&ferryv1.Record{Seq: seq, Body: &ferryv1.Record_Write{Write: &ferryv1.Write{
		Disk: disk, Offset: off, Length: uint32(len(data)), Data: data, Xxhash: xxhash.Sum64(data)}}})
}

func drain(seq uint64, begin bool) *ferryv1.Record {
	return wire.Seal(&ferryv1.Record{Seq: seq, Body: &ferryv1.Record_Drain{Drain: &ferryv1.Drain{Begin: begin}}})
}

func marker(seq uint64) *ferryv1.Record {
	return wire.Seal(&ferryv1.Record{Seq: seq, Body: &ferryv1.Record_Marker{Marker: &ferryv1.Marker{Consistency: ferryv1.Consistency_CONSISTENCY_CRASH}}})
}

// exchange opens a stream, sends msgs and returns how it ended: nil if the
// server accepted everything (and the stream closed cleanly), else its error.
func exchange(t *testing.T, c ferryv1.ReplicationClient, msgs ...*ferryv1.AgentMessage) error {
	t.Helper()
	stream, err := c.Replicate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			break // the server ended the stream; Recv says why
		}
	}
	stream.CloseSend()
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// damaged seals r, then changes it as a flipped bit in transit would.
func damaged(r *ferryv1.Record, change func(*ferryv1.Record)) *ferryv1.Record {
	wire.Seal(r)
	change(r)
	return r
}

func page(b byte) []byte { return bytes.Repeat([]byte{b}, bs) }

// TestBadInputRefused sends malformed hellos and records; each must end
// the stream with a specific error and leave the journal as it was.
func TestBadInputRefused(t *testing.T) {
	ps := ferrytest.StartPS(t)
	cc := ferrytest.Dial(t, ps.Addr)
	c := ferryv1.NewReplicationClient(cc)
	const size = 1 << 20
	// vm1: consistent, three records. vm2: epoch 2. vm3: initial drain open.
	if err := exchange(t, c, hello("vm1", 1, size, size), batch(drain(1, true), write(2, 0, 0, page(7)), drain(3, false))); err != nil {
		t.Fatal(err)
	}
	if err := exchange(t, c, hello("vm2", 2, size)); err != nil {
		t.Fatal(err)
	}
	if err := exchange(t, c, hello("vm3", 1, size), batch(drain(1, true))); err != nil {
		t.Fatal(err)
	}
	ok := hello("vm1", 1, size, size)
	good := write(4, 0, bs, page(1))
	bad := func(mut func(w *ferryv1.Write)) *ferryv1.Record {
		r := write(5, 0, 2*bs, page(2))
		mut(r.GetWrite())
		return wire.Seal(r)
	}
	huge := make([]byte, 9<<20)
	cases := []struct {
		name string
		msgs []*ferryv1.AgentMessage
		code codes.Code
		want string
	}{
		{"batch before hello", []*ferryv1.AgentMessage{batch(good)}, codes.InvalidArgument, "must be a hello"},
		{"empty vm name", []*ferryv1.AgentMessage{hello("", 1, size)}, codes.InvalidArgument, "vm name"},
		{"vm name with slash", []*ferryv1.AgentMessage{hello("a/b", 1, size)}, codes.InvalidArgument, "vm name"},
		{"wrong block size", []*ferryv1.AgentMessage{{Msg: &ferryv1.AgentMessage_Hello{Hello: &ferryv1.Hello{Vm: "x", Epoch: 1, BlockSize: 512, Disks: []*ferryv1.DiskInfo{{Name: "os", SizeBytes: size}}}}}}, codes.InvalidArgument, "block size 512"},
		{"no disks", []*ferryv1.AgentMessage{hello("x", 1)}, codes.InvalidArgument, "0 disks"},
		{"disk listed twice", []*ferryv1.AgentMessage{{Msg: &ferryv1.AgentMessage_Hello{Hello: &ferryv1.Hello{Vm: "x", Epoch: 1, BlockSize: bs, Disks: []*ferryv1.DiskInfo{{Name: "os", SizeBytes: size}, {Name: "os", SizeBytes: size}}}}}}, codes.InvalidArgument, "listed twice"},
		{"disk size not whole blocks", []*ferryv1.AgentMessage{hello("x", 1, size+1)}, codes.InvalidArgument, "not a positive multiple"},
		{"epoch zero", []*ferryv1.AgentMessage{hello("x", 0, size)}, codes.InvalidArgument, "epoch 0"},
		{"wrong disk size", []*ferryv1.AgentMessage{hello("vm1", 1, size, 2*size)}, codes.FailedPrecondition, "disk data of vm vm1 is now 2097152 bytes; its replica and recovery points are 1048576 bytes"},
		{"wrong disk count", []*ferryv1.AgentMessage{hello("vm1", 1, size)}, codes.FailedPrecondition, "agent has 1 disks, replica has 2"},
		{"stale epoch", []*ferryv1.AgentMessage{hello("vm2", 1, size)}, codes.FailedPrecondition, "agent is at epoch 1, this receiver accepts epoch 2"},
		{"future epoch (waits for its reprotect)", []*ferryv1.AgentMessage{hello("vm1", 5, size, size)}, codes.Unavailable, "accepted once a reprotect raises the VM to epoch 5"},
		{"unaligned offset", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Offset = 100 }))}, codes.InvalidArgument, "offset 100 is not aligned"},
		{"offset past the end", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Offset = size }))}, codes.InvalidArgument, "run past the end"},
		{"offset overflow", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Offset = 1<<64 - bs }))}, codes.InvalidArgument, "run past the end"},
		{"unaligned length", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Length = 100; w.Data = w.Data[:100] }))}, codes.InvalidArgument, "length 100 is not a positive multiple"},
		{"zero length", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Length = 0; w.Data = nil }))}, codes.InvalidArgument, "length 0"},
		{"length differs from data", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Length = 2 * bs }))}, codes.InvalidArgument, "length says 8192 bytes, data has 4096"},
		{"bad checksum", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Xxhash ^= 1 }))}, codes.DataLoss, "data hashes to"},
		{"corrupted data", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Data[9] ^= 0x40 }))}, codes.DataLoss, "data hashes to"},
		{"record check wrong", []*ferryv1.AgentMessage{ok, batch(good, damaged(write(5, 0, 2*bs, page(2)), func(r *ferryv1.Record) { r.GetWrite().Offset += bs }))}, codes.DataLoss, "damaged in transit"},
		{"sequence damaged", []*ferryv1.AgentMessage{ok, batch(good, damaged(write(5, 0, 2*bs, page(2)), func(r *ferryv1.Record) { r.Seq ^= 1 << 20 }))}, codes.DataLoss, "damaged in transit"},
		{"marker tag damaged", []*ferryv1.AgentMessage{ok, batch(good, damaged(marker(5), func(r *ferryv1.Record) { r.GetMarker().Tag = "x" }))}, codes.DataLoss, "damaged in transit"},
		{"record without a check", []*ferryv1.AgentMessage{ok, batch(good, damaged(write(5, 0, 2*bs, page(2)), func(r *ferryv1.Record) { r.Check = 0 }))}, codes.InvalidArgument, "without a check"},
		{"zero write with data", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Zero = true }))}, codes.InvalidArgument, "zero write carries"},
		{"zero write with wrong hash", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Zero, w.Data = true, nil }))}, codes.DataLoss, "zero write of 4096 bytes carries xxhash"},
		{"unknown disk", []*ferryv1.AgentMessage{ok, batch(good, bad(func(w *ferryv1.Write) { w.Disk = 7 }))}, codes.InvalidArgument, "unknown disk index 7 (the VM has 2 disks)"},
		{"sequence gap", []*ferryv1.AgentMessage{ok, batch(good, write(6, 0, 0, page(3)))}, codes.InvalidArgument, "sequence 6 does not follow 4 (expected 5)"},
		{"sequence repeated", []*ferryv1.AgentMessage{ok, batch(good, write(4, 0, 0, page(3)))}, codes.InvalidArgument, "sequence 4 does not follow 4"},
		{"sequence behind the durable one", []*ferryv1.AgentMessage{ok, batch(write(2, 0, 0, page(3)))}, codes.InvalidArgument, "sequence 2 does not follow 3"},
		{"write above the size limit", []*ferryv1.AgentMessage{ok, batch(good, write(5, 0, 0, make([]byte, 2<<20)))}, codes.ResourceExhausted, "exceeds the limit"},
		{"oversize message", []*ferryv1.AgentMessage{ok, batch(good, write(5, 0, 0, huge))}, codes.ResourceExhausted, "larger than max"},
		{"marker inside a drain", []*ferryv1.AgentMessage{hello("vm3", 1, size), batch(write(2, 0, 0, page(1)), marker(3))}, codes.InvalidArgument, "marker inside a drain"},
		{"marker of unknown consistency", []*ferryv1.AgentMessage{ok, batch(good, wire.Seal(&ferryv1.Record{Seq: 5, Body: &ferryv1.Record_Marker{Marker: &ferryv1.Marker{}}}))}, codes.InvalidArgument, "unknown consistency"},
		{"record without body", []*ferryv1.AgentMessage{ok, batch(good, wire.Seal(&ferryv1.Record{Seq: 5}))}, codes.InvalidArgument, "without a body"},
		{"empty batch", []*ferryv1.AgentMessage{ok, batch()}, codes.InvalidArgument, "empty batch"},
		{"second hello", []*ferryv1.AgentMessage{ok, ok}, codes.InvalidArgument, "second hello"},
		{"empty message", []*ferryv1.AgentMessage{ok, {}}, codes.InvalidArgument, "empty message"},
	}
	ctx := context.Background()
	before, err := ps.Journal().VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := exchange(t, c, tc.msgs...)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != tc.code || !strings.Contains(st.Message(), tc.want) {
				t.Fatalf("got %v, want %v containing %q", err, tc.code, tc.want)
			}
			after, err := ps.Journal().VMs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before) {
				t.Fatalf("%d VMs registered after a refused stream, %d before", len(after), len(before))
			}
			for i := range after {
				a, b := after[i], before[i]
				if a.LastSeq != b.LastSeq || a.StoredBytes != b.StoredBytes || a.Points != b.Points {
					t.Fatalf("vm %s changed: seq %d->%d, stored %d->%d, points %d->%d", a.Name, b.LastSeq, a.LastSeq, b.StoredBytes, a.StoredBytes, b.Points, a.Points)
				}
			}
		})
	}
	if len(cases) < 25 {
		t.Fatalf("only %d hostile cases", len(cases))
	}
	// The VM still accepts a well-formed continuation.
	if err := exchange(t, c, ok, batch(good, marker(5))); err != nil {
		t.Fatal(err)
	}
	if err := ps.ProcessAll(ctx); err != nil {
		t.Fatal(err)
	}
	if vm, _ := ps.Journal().VM(ctx, "vm1"); vm.LastSeq != 5 || vm.Points != 1 {
		t.Fatalf("after a good batch: seq %d, points %d", vm.LastSeq, vm.Points)
	}
}
