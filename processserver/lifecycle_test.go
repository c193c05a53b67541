package processserver_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/processserver"
)

// TestFailedOpenClosesWhatItOpened: an Open that fails late (its listen
// address is taken) closes the journal and the control store it opened,
// so the next Open of the same data directory goes ahead instead of
// waiting on bbolt's file lock.
func TestFailedOpenClosesWhatItOpened(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, bad := range []processserver.Config{
		{DataDir: dir, Listen: taken.Addr().String()},
		{DataDir: dir, Listen: "127.0.0.1:0", NBDListen: "127.0.0.1:0"}, // plain-TCP NBD without TLS is refused
		{DataDir: dir, Listen: "127.0.0.1:0", MetricsListen: taken.Addr().String()},
	} {
		bad.Logger = ferrytest.Logger(t)
		s, err := processserver.New(bad)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Open(ctx); err == nil {
			t.Fatalf("open with %+v succeeded", bad)
		}
	}
	s, err := processserver.New(processserver.Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: ferrytest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() { opened <- s.Open(ctx) }()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the data directory is still locked by a failed open")
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
