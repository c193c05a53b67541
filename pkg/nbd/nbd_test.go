package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
)

// TestRealClients serves memory disks over plain TCP (Insecure) and a Unix
// socket and uses qemu-io, qemu-img, nbdinfo and nbdcopy against them.
func TestRealClients(t *testing.T) {
	ferrytest.NeedNBDClients(t)
	ctx := context.Background()
	dir := t.TempDir()
	srv := nbd.NewServer(ferrytest.Logger(t), nbd.Access{Insecure: true})
	defer srv.Close()
	disk := blockdev.NewMemory(8 << 20)
	ro := blockdev.NewMemory(1 << 20)
	ro.WriteAt(ctx, bytes.Repeat([]byte("readonly"), 512), 0)
	srv.Add(nbd.Export{Name: "disk0", Device: disk})
	srv.Add(nbd.Export{Name: "point", Device: ro, ReadOnly: true})
	tcp, err := nbd.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	unix, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tcp)
	go srv.Serve(unix)
	uris := map[string]func(string) string{
		"tcp":  func(e string) string { return fmt.Sprintf("nbd://%s/%s", tcp.Addr(), e) },
		"unix": func(e string) string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", e, sock) },
	}
	for kind, uri := range uris {
		t.Run(kind, func(t *testing.T) {
			if kind == "unix" {
				list := ferrytest.Run(t, "nbdinfo", "--list", uri(""))
				if !strings.Contains(list, "disk0") || !strings.Contains(list, "point") {
					t.Fatalf("nbdinfo --list:\n%s", list)
				}
			} else if o, err := exec.Command("nbdinfo", "--list", uri("")).CombinedOutput(); err == nil || strings.Contains(string(o), "disk0") {
				// Over plain TCP nobody is authenticated: the names are
				// not told.
				t.Fatalf("nbdinfo --list over plain TCP was answered:\n%s", o)
			}
			// Aligned and unaligned writes, zeroes, a flush.
			ferrytest.Run(t, "qemu-io", "-f", "raw", uri("disk0"), "-c", "write -P 0xab 0 64k", "-c", "write -P 0xcd 1000 3000",
				"-c", "write -z 128k 64k", "-c", "write -P 0x11 -f 200k 8k", "-c", "flush")
			want := make([]byte, 8<<20)
			copy(want[0:64<<10], bytes.Repeat([]byte{0xab}, 64<<10))
			copy(want[1000:4000], bytes.Repeat([]byte{0xcd}, 3000))
			copy(want[200<<10:208<<10], bytes.Repeat([]byte{0x11}, 8<<10))
			if d := ferrytest.Diff(ferrytest.Image(t, disk), want); d != "" {
				t.Fatalf("disk after qemu-io: %s", d)
			}
			out := filepath.Join(dir, kind+".img")
			ferrytest.Run(t, "nbdcopy", uri("disk0"), out)
			got, _ := os.ReadFile(out)
			if d := ferrytest.Diff(got, want); d != "" {
				t.Fatalf("nbdcopy: %s", d)
			}
			ferrytest.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", out, uri("disk0"))
			// The read-only export refuses writes.
			if o, err := exec.Command("qemu-io", "-f", "raw", uri("point"), "-c", "write -P 1 0 4k").CombinedOutput(); err == nil && !strings.Contains(string(o), "denied") && !strings.Contains(string(o), "ermission") && !strings.Contains(string(o), "read-only") && !strings.Contains(string(o), "read only") {
				t.Fatalf("write to a read-only export:\n%s", o)
			}
			if got := ferrytest.Image(t, ro); !bytes.Equal(got[:4096], bytes.Repeat([]byte("readonly"), 512)) {
				t.Fatal("read-only export changed")
			}
			disk.WriteAt(ctx, make([]byte, 8<<20), 0)
		})
	}
}
