package mastertarget_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/mastertarget"
)

// TestFailedOpenClosesWhatItOpened: an Open that fails once its journal
// and targets store are open (a listen address taken) closes them, so the
// next Open of the same directory goes ahead.
func TestFailedOpenClosesWhatItOpened(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	primary := &mastertarget.FilePrimary{Disks: map[string]string{}}
	for _, listen := range [][2]string{{taken.Addr().String(), ""}, {"127.0.0.1:0", taken.Addr().String()}} {
		mt, err := mastertarget.New(mastertarget.Config{DataDir: dir, Listen: listen[0], MetricsListen: listen[1], Primary: primary, Logger: ferrytest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := mt.Open(ctx); err == nil {
			t.Fatalf("open with listen %v succeeded", listen)
		}
	}
	mt, err := mastertarget.New(mastertarget.Config{DataDir: dir, Listen: "127.0.0.1:0", Primary: primary, Logger: ferrytest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() { opened <- mt.Open(ctx) }()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the data directory is still locked by a failed open")
	}
	if err := mt.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
