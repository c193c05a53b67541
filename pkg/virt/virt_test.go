package virt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"
)

func TestHardwareRoundTrip(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd, data := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd"), filepath.Join(dir, "data.img")
	for _, p := range []string{kernel, initrd, data} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := Hardware{Source: "libvirt:web", VCPUs: 2, MemoryMiB: 768, Arch: "x86_64", Machine: "pc", Firmware: FirmwareKernel,
		Kernel: kernel, Initrd: initrd, Cmdline: "root=/dev/vda console=ttyS0",
		Disks: []Disk{{Name: "os", Target: "vda", Bus: "virtio"}, {Name: "data", Target: "sdb", Bus: "sata"}},
		NICs:  []NIC{{Model: "e1000", MAC: "52:54:00:12:34:56", Network: "site"}}, GuestAgent: true}
	spec := DomainSpec{Name: "web", Type: "qemu", Hardware: want, Network: "site", ConsoleLog: filepath.Join(dir, "console.log"),
		OSID:  "http://debian.org/debian/12",
		Disks: []DiskSource{{Name: "os", NBDSocket: filepath.Join(dir, "nbd.sock"), NBDExport: "os"}, {Name: "data", File: data}}}
	if err := spec.Check(); err != nil {
		t.Fatal(err)
	}
	x, err := spec.XML()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"<acpi></acpi>", "protocol=\"nbd\"", "org.qemu.guest_agent.0", "append=\"off\""} {
		if !strings.Contains(x, s) {
			t.Errorf("domain XML lacks %s:\n%s", s, x)
		}
	}
	names := map[string]string{"nbd:os": "os", filepath.Clean(data): "data"}
	got, osFamily, err := ReadHardware(x, func(src string) string { return names[src] }, []string{"os", "data"})
	if err != nil {
		t.Fatal(err)
	}
	if osFamily != "linux" {
		t.Errorf("os family %q, want linux", osFamily)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hardware read back differs:\n got %+v\nwant %+v", got, want)
	}
	// A replicated disk the domain does not boot with is an error.
	if _, _, err := ReadHardware(x, func(src string) string { return names[src] }, []string{"os", "logs"}); err == nil || !strings.Contains(err.Error(), "logs") {
		t.Errorf("a missing disk: err %v, want one naming logs", err)
	}
}

func TestSpecCheckRefusesMissingFiles(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]DomainSpec{
		"kernel":    {Name: "a", Hardware: Hardware{Firmware: FirmwareKernel, Kernel: filepath.Join(dir, "nope")}, Disks: []DiskSource{{Name: "os", NBDSocket: "s"}}},
		"initrd":    {Name: "a", Hardware: Hardware{Firmware: FirmwareKernel, Kernel: "/dev/null", Initrd: filepath.Join(dir, "nope")}, Disks: []DiskSource{{Name: "os", NBDSocket: "s"}}},
		"no kernel": {Name: "a", Hardware: Hardware{Firmware: FirmwareKernel}, Disks: []DiskSource{{Name: "os", NBDSocket: "s"}}},
		"disk":      {Name: "a", Disks: []DiskSource{{Name: "os", File: filepath.Join(dir, "nope.img")}}},
	}
	for what, spec := range cases {
		if err := spec.Check(); !errors.Is(err, ErrMissingFile) {
			t.Errorf("%s missing: err %v, want ErrMissingFile", what, err)
		}
	}
	if err := (DomainSpec{Name: "a"}).Check(); err == nil {
		t.Error("a domain without disks passed the check")
	}
}

func TestParseDACLabel(t *testing.T) {
	uid, gid, err := parseDACLabel("+64055:+107")
	if err != nil || uid != 64055 || gid != 107 {
		t.Fatalf("got %d %d %v", uid, gid, err)
	}
	for _, bad := range []string{"", "64055", "+a:+b", "+1:"} {
		if _, _, err := parseDACLabel(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestToMiB(t *testing.T) {
	for _, c := range []struct {
		v    uint
		unit string
		want uint64
	}{{262144, "KiB", 256}, {262144, "", 256}, {512, "MiB", 512}, {2, "GiB", 2048}, {1 << 30, "b", 1024}} {
		if got := toMiB(c.v, c.unit); got != c.want {
			t.Errorf("%d %s: %d MiB, want %d", c.v, c.unit, got, c.want)
		}
	}
}

func TestDialUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, "qemu+unix:///system?socket="+filepath.Join(t.TempDir(), "none.sock"))
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err %v, want ErrUnreachable", err)
	}
	if _, err := Dial(ctx, "not a uri"); err == nil {
		t.Fatal("a bad URI was accepted")
	}
}

// TestDomainDefaults: a machine described by hand (no hardware recorded)
// still gets a bootable domain, and reading a domain skips what is not a
// replicated disk (a CD-ROM).
func TestDomainDefaults(t *testing.T) {
	spec := DomainSpec{Name: "bare", Network: "rec", Disks: []DiskSource{{Name: "os", NBDSocket: "/run/s.sock", NBDExport: "os"}, {Name: "data", NBDSocket: "/run/s.sock", NBDExport: "data"}}}
	x, err := spec.XML()
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	if d.Type != "qemu" || d.OS.Type.Arch != "x86_64" || d.VCPU.Value != 1 || d.Memory.Value != 512 {
		t.Errorf("defaults: type %s arch %s vcpus %d memory %d", d.Type, d.OS.Type.Arch, d.VCPU.Value, d.Memory.Value)
	}
	if len(d.Devices.Interfaces) != 1 || d.Devices.Interfaces[0].Model.Type != "virtio" {
		t.Errorf("NIC: %+v", d.Devices.Interfaces)
	}
	if got := []string{d.Devices.Disks[0].Target.Dev, d.Devices.Disks[1].Target.Dev}; got[0] != "vda" || got[1] != "vdb" {
		t.Errorf("disk targets %v, want vda vdb", got)
	}
	d.Devices.Disks = append(d.Devices.Disks, libvirtxml.DomainDisk{Device: "cdrom",
		Source: &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{Protocol: "nbd", Name: "os"}},
		Target: &libvirtxml.DomainDiskTarget{Dev: "sda", Bus: "sata"}})
	x, _ = d.Marshal()
	hw, osFamily, err := ReadHardware(x, func(src string) string { return strings.TrimPrefix(src, "nbd:") }, []string{"os", "data"})
	if err != nil {
		t.Fatal(err)
	}
	if len(hw.Disks) != 2 || osFamily != "" {
		t.Errorf("read %d disks (the CD-ROM is not one), os %q", len(hw.Disks), osFamily)
	}
	if x, _ := (DomainSpec{Name: "kvm", Type: "kvm", Disks: spec.Disks}).XML(); !strings.Contains(x, `type="kvm"`) {
		t.Error("a kvm domain type was not kept")
	}
}
