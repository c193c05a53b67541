package guest

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func record(n int) string {
	sum := md5.Sum([]byte(fmt.Sprintf("ferry-record-%d", n)))
	return fmt.Sprintf("%08d %s %s\n", n, hex.EncodeToString(sum[:]), recordPad)
}

// imageWith makes an ext4 image whose workload file holds body.
func imageWith(t *testing.T, body string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, RecordFile), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

func TestReadRecords(t *testing.T) {
	var whole strings.Builder
	for n := 1; n <= 40; n++ {
		whole.WriteString(record(n))
	}
	r41 := record(41)
	cases := []struct {
		name     string
		body     string
		last     int
		torn     int
		wantFail bool
	}{
		{name: "whole", body: whole.String(), last: 40},
		{name: "torn last record", body: whole.String() + r41[:100], last: 40, torn: 100},
		{name: "zeros after a crash", body: whole.String() + strings.Repeat("\x00", 200), last: 40, torn: 200},
		{name: "a gap", body: whole.String() + record(42) + record(43) + record(44), wantFail: true},
		{name: "a bad checksum", body: whole.String() + strings.Replace(r41, "0", "1", 1) + record(42) + record(43), wantFail: true},
		{name: "empty", body: "", last: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ReadRecords(imageWith(t, c.body))
			if c.wantFail {
				if err == nil {
					t.Fatalf("accepted: %+v", got)
				}
				return
			}
			if err != nil || got.Last != c.last || got.Torn != c.torn {
				t.Fatalf("got %+v, %v; want last %d, torn %d", got, err, c.last, c.torn)
			}
		})
	}
}

func TestFsckCleanImage(t *testing.T) {
	img := imageWith(t, record(1))
	r, err := Fsck(img)
	if err != nil {
		t.Fatal(err)
	}
	if r.NeededRecovery || !r.Clean {
		t.Fatalf("a fresh file system: %+v", r)
	}
	// Damage the superblock's magic: the check must not call it clean.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0, 0}, 1024+56)
	f.Close()
	if r, err := Fsck(img); err == nil && r.Clean {
		t.Fatalf("a file system without its superblock magic passed: %+v", r)
	}
}

func TestConsoleParsing(t *testing.T) {
	console := "boot\nferry-guest: address 10.1.2.3\nferry-fsynced 7\nferry-fsynced 9\r\nferry-fsynced 8"
	if n := LastFsynced(console); n != 9 {
		t.Errorf("last fsynced %d, want 9", n)
	}
}

func TestBuild(t *testing.T) {
	if err := Check(); err != nil {
		t.Skipf("the guest's parts are not installed: %v", err)
	}
	img := filepath.Join(t.TempDir(), "os.img")
	k, err := Build(img, 64)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Fsck(img)
	if err != nil || !r.Clean {
		t.Fatalf("built image: %+v %v", r, err)
	}
	out, err := exec.Command("debugfs", "-R", "cat /sbin/init", img).Output()
	if err != nil || !strings.Contains(string(out), "ferry-fsynced") {
		t.Fatalf("init script: %v", err)
	}
	for _, m := range modules {
		if out, err := exec.Command("debugfs", "-R", "stat /lib/ferry/"+filepath.Base(m), img).CombinedOutput(); err != nil || strings.Contains(string(out), "not found") {
			t.Errorf("module %s of %s missing from the image", m, k.Version)
		}
	}
}
