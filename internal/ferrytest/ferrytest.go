// Package ferrytest starts real Ferry components for tests: a process
// server on loopback with its journal in a temporary directory, agents
// connected to it, and helpers that compare disks byte for byte.
package ferrytest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/processserver/client"
)

// Logger returns a logger that writes to the test log when FERRY_TEST_LOG
// is set and discards otherwise.
func Logger(tb testing.TB) *slog.Logger {
	if os.Getenv("FERRY_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// PS is a process server under test that can be stopped and started again
// on the same address and data directory.
type PS struct {
	tb   testing.TB
	tune []func(*processserver.Config)
	Dir  string
	Addr string
	*processserver.Server
}

// StartPS starts a process server on a free loopback port. At cleanup it
// is closed and its journal's invariants are checked. tune, when given,
// adjusts the configuration.
func StartPS(tb testing.TB, tune ...func(*processserver.Config)) *PS {
	tb.Helper()
	p := &PS{tb: tb, Dir: filepath.Join(tb.TempDir(), "ps"), Addr: "127.0.0.1:0", tune: tune}
	p.Start()
	tb.Cleanup(func() {
		if p.Server != nil {
			journaltest.MustCheck(tb, p.Journal())
			p.Stop()
		}
	})
	return p
}

// Start (re)starts the server on its address.
func (p *PS) Start() {
	p.tb.Helper()
	cfg := processserver.Config{DataDir: p.Dir, Listen: p.Addr, Logger: Logger(p.tb)}
	for _, f := range p.tune {
		f(&cfg)
	}
	srv, err := processserver.New(cfg)
	if err != nil {
		p.tb.Fatal(err)
	}
	if err := srv.Open(context.Background()); err != nil {
		p.tb.Fatal(err)
	}
	p.Server, p.Addr = srv, srv.Addr()
}

// Stop closes the server; Start brings it back.
func (p *PS) Stop() {
	p.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Server.Close(ctx); err != nil {
		p.tb.Fatal(err)
	}
	p.Server = nil
}

// Dial returns a client connection to addr, closed at cleanup.
func Dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// Image reads a whole device.
func Image(tb testing.TB, d blockdev.Device) []byte {
	tb.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(context.Background(), b, 0); err != nil {
		tb.Fatal(err)
	}
	return b
}

// Diff describes where two images differ, or returns "" when they are equal.
func Diff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("size %d, want %d", len(got), len(want))
	}
	if bytes.Equal(got, want) {
		return ""
	}
	first, n := -1, 0
	for i := 0; i < len(got); i += blockdev.BlockSize {
		if !bytes.Equal(got[i:i+blockdev.BlockSize], want[i:i+blockdev.BlockSize]) {
			if first < 0 {
				first = i
			}
			n++
		}
	}
	return fmt.Sprintf("%d blocks differ, first at offset %d", n, first)
}

// Export reads one disk of a point from a process server over gRPC into
// memory and returns the point's ID and the image.
func Export(tb testing.TB, cc grpc.ClientConnInterface, vm, point, disk string) (uint64, []byte) {
	tb.Helper()
	var mem *blockdev.Memory
	res, err := client.ExportDisk(context.Background(), cc, vm, point, disk, func(size int64) (blockdev.Device, error) {
		mem = blockdev.NewMemory(size)
		return mem, nil
	})
	if err != nil {
		tb.Fatalf("export vm %s point %s disk %s: %v", vm, point, disk, err)
	}
	return res.PointID, Image(tb, mem)
}

// WaitFor polls cond every few milliseconds until it holds, failing the
// test after timeout. For conditions that no event announces (another
// process's progress).
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-t.C
	}
}
