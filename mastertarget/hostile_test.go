package mastertarget_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/mastertarget"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestHostilePrepareReprotect: VM and disk names that are paths, and
// disks larger than the master target accepts, are refused before any file
// is made; a file outside the alternate directory stays as it was.
func TestHostilePrepareReprotect(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	alt := filepath.Join(dir, "mt", "alternate")
	victim := filepath.Join(dir, "victim.img")
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	mt, err := mastertarget.New(mastertarget.Config{DataDir: filepath.Join(dir, "mt"), Listen: "127.0.0.1:0", MetricsListen: "",
		Primary: &mastertarget.FilePrimary{AlternateDir: alt}, ProcessInterval: -1, Logger: ferrytest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := mt.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer mt.Close(ctx)
	cc, err := grpc.NewClient(mt.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := ferryv1.NewMasterTargetClient(cc)
	disk := func(name string, size uint64) []*ferryv1.DiskInfo {
		return []*ferryv1.DiskInfo{{Name: name, SizeBytes: size}}
	}
	for _, tc := range []struct {
		name  string
		vm    string
		disks []*ferryv1.DiskInfo
	}{
		{"vm name up two levels", "../../victim", disk("os", 1<<20)},
		{"vm name up one level", "..", disk("os", 1<<20)},
		{"absolute vm name", "/tmp/x", disk("os", 1<<20)},
		{"disk name up a level", "web", disk("../../victim", 1<<20)},
		{"disk name with a slash", "web", disk("a/b", 1<<20)},
		{"disk listed twice", "web", append(disk("os", 1<<20), disk("os", 1<<20)...)},
		{"1 PiB disk", "web", disk("os", 1<<50)},
		{"disk of 100 bytes", "web", disk("os", 100)},
	} {
		_, err := c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: tc.vm, Disks: tc.disks, Epoch: 2, Location: string(ferry.LocationAlternate)})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
		}
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "keep me" {
		t.Fatalf("the file outside the alternate directory: %q %v", b, err)
	}
	if ents, _ := os.ReadDir(alt); len(ents) != 0 {
		t.Fatalf("refused requests left %d entries in the alternate directory", len(ents))
	}
	// A plain request still works, and its disk is private to its owner.
	resp, err := c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: "web", Disks: disk("os", 1<<20), Epoch: 2, Location: string(ferry.LocationAlternate)})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(resp.GetTargets()[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("alternate disk %s: %v %v", resp.GetTargets()[0], fi.Mode().Perm(), err)
	}
}
