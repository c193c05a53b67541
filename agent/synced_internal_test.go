package agent

import (
	"context"
	"testing"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TestSyncedWaitsForTheStream: Synced is what tests and the failover's
// shutdown wait on before they cut "latest", so it must not hold while a
// drain's end is still to be sent (the stream is not write-ordered yet)
// or while records taken from the queue sit unacknowledged in the batch
// being built. Both are moments of the replication goroutine, set here
// directly.
func TestSyncedWaitsForTheStream(t *testing.T) {
	a, err := New(Config{VM: "vm1", StateDir: t.TempDir(), Target: "127.0.0.1:1", Logger: ferrytest.Logger(t),
		Disks: []Disk{{Name: "disk0", Device: blockdev.NewMemory(1 << 20)}}})
	if err != nil {
		t.Fatal(err)
	}
	// A stream that caught up: everything issued is acknowledged.
	a.connected.Store(true)
	a.need.Store(int32(needNone))
	a.issued.Store(41)
	a.acked = 41
	if !a.Synced() {
		t.Fatal("not synced with everything acknowledged")
	}
	a.drainOpen.Store(true)
	if a.Synced() {
		t.Fatal("synced while a drain's end is not sent")
	}
	a.drainOpen.Store(false)
	a.issued.Store(42) // popped and given a sequence, not in the window yet
	if a.Synced() {
		t.Fatal("synced with a record issued and not acknowledged")
	}
	a.acked = 42
	if !a.Synced() {
		t.Fatal("not synced once the record is acknowledged")
	}
	if _, err := a.Disk(0).WriteAt(context.Background(), make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if a.Synced() {
		t.Fatal("synced with a write in the queue")
	}
}
