package processserver_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestHostileNBDExports: export names cannot be guessed; a writable
// export stops at the scratch quota with ENOSPC and the point stays as it
// was; removal takes only a listed export's name (a path is refused and
// the file it names stays); a process server without TLS does not serve
// NBD on plain TCP unless told to.
func TestHostileNBDExports(t *testing.T) {
	ctx := context.Background()
	sockDir, err := os.MkdirTemp("", "ferry-ps-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "nbd.sock")
	const quota = 64 << 10
	ps := ferrytest.StartPS(t, func(c *processserver.Config) { c.NBDListen, c.ScratchQuota = "unix:"+sock, quota })
	cc := ferrytest.Dial(t, ps.Addr)
	rc := ferryv1.NewRecoveryClient(cc)
	if err := exchange(t, ferryv1.NewReplicationClient(cc), hello("vm1", 1, 1<<20),
		batch(drain(1, true), write(2, 0, 0, page(7)), drain(3, false), marker(4))); err != nil {
		t.Fatal(err)
	}
	if err := ps.ProcessAll(ctx); err != nil {
		t.Fatal(err)
	}
	cow, err := ps.ExportNBD(ctx, "vm1", "latest", "os", true)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := ps.ExportNBD(ctx, "vm1", "latest", "os", false)
	if err != nil {
		t.Fatal(err)
	}
	ro2, err := ps.ExportNBD(ctx, "vm1", "latest", "os", false)
	if err != nil {
		t.Fatal(err)
	}
	random := regexp.MustCompile(`-[0-9a-f]{24}$`)
	if !random.MatchString(cow.Name) || !random.MatchString(ro.Name) || ro.Name == ro2.Name {
		t.Fatalf("export names %q, %q, %q: want 96 random bits each", cow.Name, ro.Name, ro2.Name)
	}
	for _, guess := range []string{"vm1-os-1-cow", "vm1-os-1-ro", strings.TrimSuffix(cow.Name, cow.Name[len(cow.Name)-4:]), ""} {
		if cl, err := nbd.Dial("unix:"+sock, guess); err == nil {
			cl.Close()
			t.Fatalf("a guessed export name %q opened", guess)
		}
	}

	// Writing past the quota: ENOSPC, after exactly the quota's blocks.
	cl, err := nbd.Dial("unix:"+sock, cow.Name)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0xee}, 16<<10)
	var written int
	for off := int64(0); off < 1<<20; off += int64(len(chunk)) {
		if err = cl.WriteAt(chunk, off, false); err != nil {
			break
		}
		written += len(chunk)
	}
	cl.Close()
	if !errors.Is(err, syscall.ENOSPC) || written != quota {
		t.Fatalf("after %d bytes: %v; want ENOSPC after %d", written, err, quota)
	}
	list, err := rc.ListExports(ctx, &ferryv1.ListExportsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetExports()) != 3 || list.GetScratchUsed() != quota || list.GetScratchQuota() != quota {
		t.Fatalf("exports: %v", list)
	}
	rcl, err := nbd.Dial("unix:"+sock, ro.Name)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, bs)
	if err := rcl.ReadAt(got, 0); err != nil || !bytes.Equal(got, page(7)) {
		t.Fatalf("the point after writes to its copy-on-write export: %v", err)
	}
	rcl.Close()

	// Removal: a path is not an export name.
	victim := filepath.Join(filepath.Dir(ps.Dir), "victim.scratch")
	os.WriteFile(victim, []byte("keep"), 0o600)
	for _, name := range []string{"../../victim", "../victim", cow.Name + "/..", "nosuch"} {
		_, err := rc.UnexportNBD(ctx, &ferryv1.UnexportNBDRequest{Name: name})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("unexport %q: %v, want NotFound", name, err)
		}
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "keep" {
		t.Fatalf("the file outside the data directory: %q %v", b, err)
	}
	for _, e := range []string{cow.Name, ro.Name, ro2.Name} {
		if _, err := rc.UnexportNBD(ctx, &ferryv1.UnexportNBDRequest{Name: e}); err != nil {
			t.Fatal(err)
		}
	}
	if list, _ := rc.ListExports(ctx, &ferryv1.ListExportsRequest{}); len(list.GetExports()) != 0 || list.GetScratchUsed() != 0 {
		t.Fatalf("after unexport: %v", list)
	}
	if ents, _ := os.ReadDir(filepath.Join(ps.Dir, "nbd")); len(ents) != 0 {
		t.Fatalf("scratch files left: %v", ents)
	}

	// Plain TCP needs the explicit flag.
	srv, err := processserver.New(processserver.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", NBDListen: "127.0.0.1:0", Logger: ferrytest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Open(ctx); !errors.Is(err, nbd.ErrPlainTCP) {
		srv.Close(ctx)
		t.Fatalf("plain TCP NBD: %v, want ErrPlainTCP", err)
	}
}

// TestHostileHugeDisk: a disk larger than the server accepts is refused at
// hello and nothing is registered; one at the limit (64 TiB) with a single
// block written is hashed, exported and served over NBD in memory that
// follows what is stored, not the declared size.
func TestHostileHugeDisk(t *testing.T) {
	ctx := context.Background()
	sockDir, err := os.MkdirTemp("", "ferry-ps-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "nbd.sock")
	ps := ferrytest.StartPS(t, func(c *processserver.Config) { c.NBDListen = "unix:" + sock })
	cc := ferrytest.Dial(t, ps.Addr)
	repl := ferryv1.NewReplicationClient(cc)
	err = exchange(t, repl, hello("pib", 1, 1<<50))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "larger than this server accepts") {
		t.Fatalf("a 1 PiB disk: %v", err)
	}
	if _, err := ps.Journal().VM(ctx, "pib"); err == nil {
		t.Fatal("the refused VM was registered")
	}

	const size = ingest.DefaultMaxDiskBytes
	last := uint64(size - bs)
	if err := exchange(t, repl, hello("big", 1, size), batch(drain(1, true), write(2, 0, last, page(9)), drain(3, false), marker(4))); err != nil {
		t.Fatal(err)
	}
	if err := ps.ProcessAll(ctx); err != nil {
		t.Fatal(err)
	}
	allocated := func(what string, limit uint64, fn func()) {
		t.Helper()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		fn()
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > limit {
			t.Fatalf("%s of a 64 TiB disk with one block allocated %d MiB, want at most %d", what, got>>20, limit>>20)
		} else {
			t.Logf("%s of a 64 TiB disk with one block: %d MiB allocated (client and server)", what, got>>20)
		}
	}
	allocated("chunk hashes", 256<<20, func() {
		stream, err := repl.BlockHashes(ctx, &ferryv1.BlockHashesRequest{Vm: "big", Disk: "os", ChunkSize: 16 << 20, Epoch: 1})
		if err != nil {
			t.Fatal(err)
		}
		var n, differ uint64
		zero := ferry.ZeroSum(16 << 20)
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg.GetFirstChunk() != n {
				t.Fatalf("hashes from chunk %d, want %d", msg.GetFirstChunk(), n)
			}
			for i, h := range msg.GetHashes() {
				if h != zero {
					differ++
					if n+uint64(i) != uint64(size>>24)-1 {
						t.Fatalf("chunk %d is not zero", n+uint64(i))
					}
				}
			}
			n += uint64(len(msg.GetHashes()))
		}
		if n != size>>24 || differ != 1 {
			t.Fatalf("%d hashes, %d not zero", n, differ)
		}
	})
	rc := ferryv1.NewRecoveryClient(cc)
	allocated("export", 32<<20, func() {
		stream, err := rc.ExportPoint(ctx, &ferryv1.ExportPointRequest{Vm: "big", Point: "latest", Disk: "os"})
		if err != nil {
			t.Fatal(err)
		}
		var data int
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(msg.GetData()) > 0 && (msg.GetOffset() != last || !bytes.Equal(msg.GetData(), page(9))) {
				t.Fatalf("export sent %d bytes at %d", len(msg.GetData()), msg.GetOffset())
			}
			data += len(msg.GetData())
		}
		if data != bs {
			t.Fatalf("export sent %d bytes, want one block", data)
		}
	})
	allocated("NBD read", 32<<20, func() {
		e, err := ps.ExportNBD(ctx, "big", "latest", "os", false)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := nbd.Dial("unix:"+sock, e.Name)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		got := make([]byte, bs)
		if err := cl.ReadAt(got, int64(last)); err != nil || !bytes.Equal(got, page(9)) {
			t.Fatalf("last block over NBD: %v", err)
		}
		if err := cl.ReadAt(got, 1<<40); err != nil || !bytes.Equal(got, make([]byte, bs)) {
			t.Fatalf("a block in the middle: %v", err)
		}
	})
}

// TestHostileEncryptionKey: a process server whose journal is encrypted
// does not start without the key or with another one (it would store new
// data in plain text, or under a key nothing can read with), and the data
// is there with the right key.
func TestHostileEncryptionKey(t *testing.T) {
	ctx := context.Background()
	key := bytes.Repeat([]byte{1}, 32)
	ps := ferrytest.StartPS(t, func(c *processserver.Config) { c.EncryptionKey = key })
	cc := ferrytest.Dial(t, ps.Addr)
	if err := exchange(t, ferryv1.NewReplicationClient(cc), hello("vm1", 1, 1<<20),
		batch(drain(1, true), write(2, 0, 0, page(7)), drain(3, false), marker(4))); err != nil {
		t.Fatal(err)
	}
	dir := ps.Dir
	ps.Stop()
	for name, k := range map[string][]byte{"no key": nil, "another key": bytes.Repeat([]byte{2}, 32)} {
		srv, err := processserver.New(processserver.Config{DataDir: dir, Listen: "127.0.0.1:0", EncryptionKey: k, Logger: ferrytest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Open(ctx); !errors.Is(err, journal.ErrKey) {
			srv.Close(ctx)
			t.Fatalf("%s: %v, want ErrKey", name, err)
		}
	}
	ps.Start()
	if _, img := ferrytest.Export(t, ferrytest.Dial(t, ps.Addr), "vm1", "latest", "os"); !bytes.Equal(img[:bs], page(7)) {
		t.Fatal("the data after the refused starts")
	}
}

// TestHostileAgentMetadata: a marker stamped in the future gets the
// server's time (a point dated 2255 would hide the VM's RPO for good);
// tags with control characters are refused with nothing stored, and a
// group/ tag the server did not ask for does not make a multi-VM point; a protected disk that changed
// size stops replication with an event and a way out, once.
func TestHostileAgentMetadata(t *testing.T) {
	ctx := context.Background()
	ps := ferrytest.StartPS(t)
	cc := ferrytest.Dial(t, ps.Addr)
	repl := ferryv1.NewReplicationClient(cc)
	rc := ferryv1.NewRecoveryClient(cc)
	mark := func(seq uint64, tag string, at time.Time) *ferryv1.Record {
		return wire.Seal(&ferryv1.Record{Seq: seq, Body: &ferryv1.Record_Marker{Marker: &ferryv1.Marker{
			Consistency: ferryv1.Consistency_CONSISTENCY_CRASH, Tag: tag, TimeUnixNano: at.UnixNano()}}})
	}
	future := time.Date(2255, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := exchange(t, repl, hello("vm1", 1, 1<<20), batch(drain(1, true), write(2, 0, 0, page(7)), drain(3, false), mark(4, "late", future))); err != nil {
		t.Fatal(err)
	}
	if err := ps.ProcessAll(ctx); err != nil {
		t.Fatal(err)
	}
	pts, err := rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "vm1"})
	if err != nil || len(pts.GetPoints()) != 1 {
		t.Fatalf("points: %v %v", pts, err)
	}
	if at := time.Unix(0, pts.GetPoints()[0].GetTimeUnixNano()); at.After(time.Now().Add(time.Minute)) {
		t.Fatalf("a marker stamped %v made a point dated %v", future, at)
	}
	for _, tag := range []string{"evil\x1b]0;pwned\x07", "line\nbreak", "bidi\u202eoverride"} {
		err := exchange(t, repl, hello("vm1", 1, 1<<20), batch(write(5, 0, bs, page(8)), mark(6, tag, time.Now())))
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("tag %q: %v, want InvalidArgument", tag, err)
		}
	}
	if vm, _ := ps.Journal().VM(ctx, "vm1"); vm.LastSeq != 4 {
		t.Fatalf("refused batches stored records: last seq %d", vm.LastSeq)
	}
	// A multi-VM tag the server did not ask for is kept, not as one.
	if err := exchange(t, repl, hello("vm1", 1, 1<<20), batch(write(5, 0, bs, page(8)), mark(6, "group/erp/1", time.Now()))); err != nil {
		t.Fatal(err)
	}
	if err := ps.ProcessAll(ctx); err != nil {
		t.Fatal(err)
	}
	pts, _ = rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "vm1"})
	if tag := pts.GetPoints()[len(pts.GetPoints())-1].GetTag(); tag != "unasked:group/erp/1" {
		t.Fatalf("an agent's own group/ tag became %q", tag)
	}

	// The disk grew.
	for range 3 {
		err := exchange(t, repl, hello("vm1", 1, 2<<20))
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "new VM name") {
			t.Fatalf("a grown disk: %v", err)
		}
	}
	evs, _ := rc.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: "vm1"})
	resized := 0
	for _, e := range evs.GetEvents() {
		if e.GetKind() == "disk-resized" {
			resized++
		}
	}
	st, _ := rc.Status(ctx, &ferryv1.StatusRequest{Vm: "vm1"})
	if resized != 1 || !strings.Contains(st.GetVms()[0].GetDiskConflict(), "now 2097152 bytes") {
		t.Fatalf("%d disk-resized events, status %q", resized, st.GetVms()[0].GetDiskConflict())
	}
	// Back at its size, the conflict clears and replication goes on.
	if err := exchange(t, repl, hello("vm1", 1, 1<<20), batch(write(7, 0, bs, page(8)), mark(8, "ok", time.Now()))); err != nil {
		t.Fatal(err)
	}
	if st, _ := rc.Status(ctx, &ferryv1.StatusRequest{Vm: "vm1"}); st.GetVms()[0].GetDiskConflict() != "" {
		t.Fatalf("conflict after the size came back: %q", st.GetVms()[0].GetDiskConflict())
	}
}
