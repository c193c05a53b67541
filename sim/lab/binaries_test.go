package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/virt"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim/guest"
)

// TestBinariesWithLibvirt runs what an operator runs: ferry-agent protects
// a running guest through its NBD front end with --libvirt-domain,
// ferry-ps fails it over with --compute libvirt, and ferryctl shows the
// probe's findings; a libvirt that cannot be reached stops ferry-ps with a
// clear error.
func TestBinariesWithLibvirt(t *testing.T) {
	needLibvirt(t)
	bin := ferrytest.BuildBinaries(t)
	dir := traversableTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := virt.Dial(ctx, "qemu:///system")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() }) // after the cleanup below
	id := fmt.Sprintf("ferry-b%04x", uint16(os.Getpid())^uint16(time.Now().UnixNano()))
	net := id + "-test"
	subnet := fmt.Sprintf("10.%d.%d", 100+os.Getpid()%150, time.Now().Nanosecond()%256)
	if err := conn.DefineNetwork(fmt.Sprintf(`<network><name>%s</name><bridge name='%s'/><ip address='%s.1' netmask='255.255.255.0'><dhcp><range start='%s.10' end='%s.200'/></dhcp></ip></network>`,
		net, strings.TrimPrefix(id, "ferry-"), subnet, subnet, subnet)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		doms, err := conn.Domains()
		if err != nil {
			t.Errorf("list domains to remove: %v", err)
		}
		for _, d := range doms {
			if strings.HasPrefix(d, id) {
				if err := conn.Undefine(d); err != nil {
					t.Errorf("remove domain %s: %v", d, err)
				}
			}
		}
		if err := conn.RemoveNetwork(net); err != nil {
			t.Errorf("remove network %s: %v", net, err)
		}
	})

	img, sock := filepath.Join(dir, "g-os.img"), filepath.Join(dir, "g.sock")
	k, err := guest.Build(img, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Define(virt.DomainSpec{Name: id, Type: "qemu", ConsoleLog: filepath.Join(dir, "console.log"), OSID: "http://debian.org/debian/12",
		Hardware: virt.Hardware{VCPUs: 1, MemoryMiB: 256, Firmware: virt.FirmwareKernel, Kernel: k.Path, Initrd: k.Initrd, Cmdline: guest.CmdLine,
			NICs: []virt.NIC{{Model: "virtio"}}, GuestAgent: true},
		Network: net, Disks: []virt.DiskSource{{Name: "os", NBDSocket: sock, NBDExport: "os"}}}); err != nil {
		t.Fatal(err)
	}

	// An unreachable libvirt: ferry-ps does not start, and says why.
	out, err := exec.Command(filepath.Join(bin, "ferry-ps"), "serve", "--insecure", "--data", filepath.Join(dir, "bad"), "--listen", ferrytest.FreeAddr(t),
		"--metrics", "", "--compute", "libvirt", "--libvirt-uri", "qemu+unix:///system?socket="+filepath.Join(dir, "none.sock")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "libvirt unreachable") {
		t.Fatalf("ferry-ps with an unreachable libvirt: %v\n%s", err, out)
	}

	addr := ferrytest.FreeAddr(t)
	ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), "serve", "--insecure", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "",
		"--compute", "libvirt", "--libvirt-dir", filepath.Join(dir, "libvirt"), "--libvirt-prefix", id+"-rec-", "--libvirt-shutdown-timeout", "10s",
		"--process-interval", "1s", "--probe-timeout", "2m")
	ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), "run", "--insecure", "--ps", addr, "--vm", "g", "--disk", "os="+img,
		"--state", filepath.Join(dir, "agent"), "--nbd-listen", "unix:"+sock, "--libvirt-domain", id, "--crash-interval", "2s")
	ferrytest.WaitFor(t, 30*time.Second, "the agent's socket", func() bool {
		st, err := os.Stat(sock)
		return err == nil && st.Mode().Perm() == 0o600
	})
	if err := conn.Start(id); err != nil {
		t.Fatal(err)
	}
	cc := ferrytest.Dial(t, addr)
	rc := ferryv1.NewRecoveryClient(cc)
	ferrytest.WaitFor(t, 3*time.Minute, "a recovery point after the guest booted", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		resp, err := rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "g"})
		return guest.LastFsynced(string(b)) > 20 && err == nil && len(resp.GetPoints()) > 0
	})
	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--insecure", "--ps", addr}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		return string(out) + stderr.String(), err
	}
	out2, err := ctl("failover", "--type", "test", "--vm", "g", "--point", "latest", "--network", net)
	if err != nil {
		t.Fatalf("test failover: %v\n%s", err, out2)
	}
	for _, want := range []string{"ok   vm running", "ok   address", "ok   ssh answers: " + guest.Banner, "copy-on-write overlays", "console:"} {
		if !strings.Contains(out2, want) {
			t.Errorf("ferryctl's job lacks %q:\n%s", want, out2)
		}
	}
	// The agent read the domain's hardware: the test domain has its memory,
	// kernel and guest agent channel, and a MAC of its own.
	x, err := conn.DomainXML(id+"-rec-g-test", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<memory unit='KiB'>262144</memory>", k.Path, "org.qemu.guest_agent.0", "protocol='nbd'"} {
		if !strings.Contains(x, want) {
			t.Errorf("the test domain lacks %q", want)
		}
	}
	primary, _ := conn.DomainXML(id, false)
	if mac := macOf(primary); mac == "" || strings.Contains(x, mac) {
		t.Errorf("the test domain has the primary's MAC %q", mac)
	}
	if out, err := ctl("cleanup-test", "--vm", "g"); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	if ok, _ := conn.Exists(id + "-rec-g-test"); ok {
		t.Error("the test domain is still defined after cleanup")
	}
}

func macOf(domainXML string) string {
	_, rest, ok := strings.Cut(domainXML, "<mac address='")
	if !ok {
		return ""
	}
	mac, _, _ := strings.Cut(rest, "'")
	return mac
}
