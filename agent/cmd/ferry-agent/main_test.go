package main_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// scribble writes random bytes at random, unaligned places of the file,
// as another program on the machine would.
func scribble(t *testing.T, path string, rng *rand.Rand, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	for i := 0; i < n; i++ {
		buf := make([]byte, 1+rng.IntN(20000))
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, rng.Int64N(fi.Size()-int64(len(buf)))); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestScanModeBinary runs ferry-ps and ferry-agent as processes, writes the
// protected file from this process, and checks with ferryctl that a later
// point equals the file; then kills the agent with SIGKILL, changes the
// file and checks the restarted agent resyncs to an equal point.
func TestScanModeBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	f, _ := os.Create(img)
	f.Truncate(16 << 20)
	f.Close()
	rng := rand.New(rand.NewPCG(5, 5))
	scribble(t, img, rng, 20)

	addr := ferrytest.FreeAddr(t)
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), "serve", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "", "--insecure")
	agentArgs := []string{"run", "--insecure", "--ps", addr, "--vm", "files1", "--disk", "os=" + img, "--state", filepath.Join(dir, "agent"),
		"--scan-interval", "100ms", "--crash-interval", "1s"}
	ag := ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), agentArgs...)
	cc := ferrytest.Dial(t, addr)
	rc := ferryv1.NewRecoveryClient(cc)

	// pointsAfter counts the points cut after t.
	pointsAfter := func(at time.Time) (n int, newest uint64) {
		resp, err := rc.ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: "files1"})
		if err != nil {
			return 0, 0
		}
		for _, p := range resp.GetPoints() {
			if time.Unix(0, p.GetTimeUnixNano()).After(at) {
				n++
				newest = p.GetId()
			}
		}
		return n, newest
	}
	// checkConverges waits for two points cut after the file was written
	// (the second comes from a scan that began after the write) and checks
	// the newest, exported by ferryctl, equals the file.
	checkConverges := func(what string) {
		t.Helper()
		at := time.Now()
		var id uint64
		ferrytest.WaitFor(t, 60*time.Second, "two points after "+what, func() bool {
			n, newest := pointsAfter(at)
			id = newest
			return n >= 2
		})
		out := filepath.Join(dir, "export.img")
		cmd := exec.Command(filepath.Join(bin, "ferryctl"), "--insecure", "--ps", addr, "export", "--vm", "files1", "--disk", "os", "--point", fmt.Sprint(id), "--out", out, "--force")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ferryctl export: %v\n%s", err, b)
		}
		got, _ := os.ReadFile(out)
		want, _ := os.ReadFile(img)
		if d := ferrytest.Diff(got, want); d != "" {
			t.Fatalf("%s: point %d differs from the file: %s", what, id, d)
		}
	}
	checkConverges("initial replication")
	scribble(t, img, rng, 50)
	checkConverges("writes by another process")

	// SIGKILL: the agent's state says it did not stop cleanly, so the next
	// run compares hashes with the process server instead of trusting its
	// scan table.
	ag.Kill()
	scribble(t, img, rng, 50)
	ag = ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), agentArgs...)
	checkConverges("restart after SIGKILL")
	ag.Stop(t)
	if !strings.Contains(ag.Log(), "resyncing by hash") {
		t.Fatalf("restarted agent did not resync by hash:\n%s", ag.Log())
	}
	ps.Stop(t)
}
