// Package guest builds the tiny Linux guest that Ferry's real-machine drills
// and tests boot under libvirt: the distribution's kernel and initrd, a
// static busybox and an ext4 root file system made with mkfs.ext4 -d on the
// disk Ferry protects. Its init runs a workload that appends
// sequence-numbered, checksummed records to a file with fsync and prints the
// number of every fsynced record on the serial console, answers on port 22
// with an SSH banner, and answers the QEMU guest agent's freeze and thaw
// commands on a virtio-serial channel, so that libvirt's fsfreeze reaches a
// real kernel.
//
// The package also reads what a recovered disk holds: a file system check
// by e2fsck, the records by debugfs (nothing is mounted), and the console's
// reports.
package guest

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Kernel is a bootable kernel with its initrd and modules.
type Kernel struct {
	Version string
	Path    string // vmlinuz
	Initrd  string
	Modules string // /lib/modules/VERSION
}

// ErrMissing is returned when a part of the guest is not installed.
var ErrMissing = errors.New("guest part missing")

// FindKernel returns the newest kernel under /boot that has an initrd and
// modules (linux-image-amd64).
func FindKernel() (Kernel, error) {
	paths, _ := filepath.Glob("/boot/vmlinuz-*")
	var ks []Kernel
	for _, p := range paths {
		v := strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
		if strings.HasSuffix(v, ".new") || strings.HasSuffix(v, ".dpkg-bak") || strings.HasSuffix(v, ".old") {
			continue
		}
		k := Kernel{Version: v, Path: p, Initrd: "/boot/initrd.img-" + v, Modules: "/lib/modules/" + v}
		if exists(k.Initrd) && exists(k.Modules) {
			ks = append(ks, k)
		}
	}
	if len(ks) == 0 {
		return Kernel{}, fmt.Errorf("%w: no kernel with initrd and modules under /boot (apt-get install linux-image-amd64)", ErrMissing)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i].Version < ks[j].Version })
	return ks[len(ks)-1], nil
}

// Busybox is where busybox-static installs its binary.
const Busybox = "/bin/busybox"

// Check reports what the guest needs and is not installed.
func Check() error {
	if _, err := FindKernel(); err != nil {
		return err
	}
	out, err := exec.Command("file", "-L", Busybox).CombinedOutput()
	if err != nil && !exists(Busybox) {
		return fmt.Errorf("%w: %s (apt-get install busybox-static)", ErrMissing, Busybox)
	}
	if err == nil && !bytes.Contains(out, []byte("statically linked")) && !bytes.Contains(out, []byte("static-pie")) {
		return fmt.Errorf("%w: %s is not statically linked (apt-get install busybox-static)", ErrMissing, Busybox)
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs", "dumpe2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s (apt-get install e2fsprogs)", ErrMissing, tool)
		}
	}
	return nil
}

// modules the init loads after the initrd handed over: the NIC and the
// virtio-serial channel (virtio_blk and ext4 come from the initrd).
var modules = []string{
	"kernel/net/core/failover.ko",
	"kernel/drivers/net/net_failover.ko",
	"kernel/drivers/net/virtio_net.ko",
	"kernel/drivers/char/virtio_console.ko",
	"kernel/drivers/input/evdev.ko",
	"kernel/drivers/acpi/button.ko",
}

// RecordFile is the workload's file on the guest's root file system.
const RecordFile = "/data/records"

// recordPad makes a record 256 bytes, so a few seconds of records span
// several blocks.
var recordPad = strings.Repeat("f", 256-8-1-32-1-1)

// Banner is the start of the line the guest answers on port 22.
const Banner = "SSH-2.0-FerryGuest_1.0"

const initScript = `#!/bin/sh
# Ferry's test guest: a workload of fsynced records, an SSH banner on port
# 22 and a QEMU guest agent that freezes and thaws the root file system.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -o remount,rw,noatime /
mkdir -p /run /tmp /data
hostname ferry-guest
for m in @MODULES@; do insmod /lib/ferry/$m 2>/dev/null; done
echo "ferry-guest: init up $(cut -d' ' -f1 /proc/uptime)s"
# The ACPI power button (libvirt's graceful shutdown) powers the guest off
# with its file system clean. QEMU's machine may have more than one power
# button device: every one is watched.
powerdown() {
	echo "ferry-guest: power button: shutting down"
	sync
	mount -o remount,ro /
	poweroff -f
}
for e in /sys/class/input/event*; do
	if [ "$(cat $e/device/name 2>/dev/null)" = "Power Button" ]; then
		(dd if=/dev/input/${e##*/} bs=24 count=1 >/dev/null 2>&1 && powerdown) &
	fi
done
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
	udhcpc -i eth0 -s /etc/udhcpc.sh -b -t 60 -T 1 >/dev/null 2>&1
fi
nc -ll -p 22 -e /bin/ssh-banner &
(
	for i in 1 2 3 4 5 6 7 8 9 10; do
		for p in /sys/class/virtio-ports/*; do
			if [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
				echo "ferry-guest: guest agent on /dev/${p##*/}"
				exec /bin/qga /dev/${p##*/}
			fi
		done
		sleep 1
	done
	echo "ferry-guest: no guest agent channel"
) &
n=1
if [ -s @RECORDS@ ]; then
	last=$(tail -n 1 @RECORDS@ | cut -c1-8)
	n=$(( $(echo $last | sed 's/^0*//') + 1 ))
fi
echo "ferry-guest: workload from record $n"
while true; do
	h=$(printf 'ferry-record-%d' $n | md5sum)
	# Reported only once both the append and the fsync succeeded (after a
	# shutdown began, the file system is read-only and both fail).
	if printf '%08d %s @PAD@\n' $n "${h%% *}" >> @RECORDS@ && sync @RECORDS@; then
		echo "ferry-fsynced $n"
		n=$((n + 1))
	else
		echo "ferry-guest: record $n not written"
		sleep 1
	fi
done
`

const bannerScript = `#!/bin/sh
echo "@BANNER@ $(hostname)"
sleep 1
`

const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$router" ] && ip route replace default via "${router%% *}"
	echo "ferry-guest: address $ip" > /dev/console
	;;
deconfig)
	ip addr flush dev "$interface"
	;;
esac
`

// qgaScript answers the QEMU guest agent protocol's commands that libvirt
// sends for a file system freeze: guest-sync, guest-ping,
// guest-fsfreeze-freeze, -thaw and -status. Freezing flushes the ext4
// journal, so a point cut while frozen needs no journal replay.
const qgaScript = `#!/bin/sh
port=$1
state=thawed
exec 3<>"$port"
while true; do
	# The port reads end-of-file while the host side is not connected.
	IFS= read -r line <&3 || { sleep 0.2; continue; }
	case "$line" in
	*guest-sync*)
		id=$(echo "$line" | sed -n 's/.*"id"[^0-9]*\([0-9]*\).*/\1/p')
		printf '{"return": %s}\n' "$id" >&3 ;;
	*guest-ping*)
		printf '{"return": {}}\n' >&3 ;;
	*guest-fsfreeze-freeze*)
		if fsfreeze --freeze /; then state=frozen; printf '{"return": 1}\n' >&3
		else printf '{"error": {"class": "GenericError", "desc": "fsfreeze --freeze / failed"}}\n' >&3; fi
		echo "ferry-guest: frozen" > /dev/console ;;
	*guest-fsfreeze-thaw*)
		fsfreeze --unfreeze / 2>/dev/null; state=thawed; printf '{"return": 1}\n' >&3
		echo "ferry-guest: thawed" > /dev/console ;;
	*guest-fsfreeze-status*)
		printf '{"return": "%s"}\n' "$state" >&3 ;;
	*)
		printf '{"error": {"class": "CommandNotFound", "desc": "not supported by the Ferry test guest"}}\n' >&3 ;;
	esac
done
`

// Build writes the guest's root file system into a new ext4 image of
// sizeMiB at image, staging its files in a directory beside it.
func Build(image string, sizeMiB int) (Kernel, error) {
	if err := Check(); err != nil {
		return Kernel{}, err
	}
	k, err := FindKernel()
	if err != nil {
		return Kernel{}, err
	}
	root, err := os.MkdirTemp(filepath.Dir(image), "guest-root-")
	if err != nil {
		return k, err
	}
	defer os.RemoveAll(root)
	for _, d := range []string{"bin", "dev", "proc", "sys", "run", "tmp", "data", "etc", "lib/ferry", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return k, err
		}
	}
	if err := copyFile(Busybox, filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return k, err
	}
	list, err := exec.Command(Busybox, "--list").Output()
	if err != nil {
		return k, fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil && !os.IsExist(err) {
			return k, err
		}
	}
	var names []string
	for _, m := range modules {
		name := filepath.Base(m)
		if err := copyFile(filepath.Join(k.Modules, m), filepath.Join(root, "lib/ferry", name), 0o644); err != nil {
			return k, fmt.Errorf("%w: module %s of kernel %s: %w", ErrMissing, m, k.Version, err)
		}
		names = append(names, name)
	}
	init := strings.NewReplacer("@MODULES@", strings.Join(names, " "), "@RECORDS@", RecordFile, "@PAD@", recordPad).Replace(initScript)
	files := map[string]string{
		"sbin-init":         init,
		"bin/ssh-banner":    strings.ReplaceAll(bannerScript, "@BANNER@", Banner),
		"etc/udhcpc.sh":     udhcpcScript,
		"bin/qga":           qgaScript,
		"etc/hostname":      "ferry-guest\n",
		"etc/ferry-guest":   "Ferry's test guest, kernel " + k.Version + "\n",
		"data/.placeholder": "",
	}
	if err := os.MkdirAll(filepath.Join(root, "sbin"), 0o755); err != nil {
		return k, err
	}
	for name, body := range files {
		path := filepath.Join(root, name)
		if name == "sbin-init" {
			path = filepath.Join(root, "sbin/init")
		}
		if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
			return k, err
		}
	}
	if err := os.Remove(filepath.Join(root, "data/.placeholder")); err != nil {
		return k, err
	}
	f, err := os.Create(image)
	if err != nil {
		return k, err
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	f.Close()
	if err != nil {
		return k, err
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "ferry-root", "-d", root, image).CombinedOutput(); err != nil {
		return k, fmt.Errorf("mkfs.ext4 -d: %v: %s", err, out)
	}
	return k, nil
}

// CmdLine is the kernel command line that boots the guest from its first
// virtio disk with the serial console.
const CmdLine = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 loglevel=4"

// FsckResult is what e2fsck found on a copy of a disk.
type FsckResult struct {
	// NeededRecovery: the journal held transactions to replay (a crash
	// point); a point cut while the file system was frozen has none.
	NeededRecovery bool
	// Clean: after journal replay, a forced read-only check found nothing
	// to fix.
	Clean  bool
	Output string
}

// Fsck checks the ext4 file system in image: it copies it, replays the
// journal of the copy and runs a forced read-only check (e2fsck -fn) on
// it. The copy is left at image+".fsck" for Records.
func Fsck(image string) (FsckResult, error) {
	var r FsckResult
	head, err := exec.Command("dumpe2fs", "-h", image).CombinedOutput()
	if err != nil {
		return r, fmt.Errorf("dumpe2fs -h %s: %v: %s", image, err, firstLines(head, 3))
	}
	for _, line := range strings.Split(string(head), "\n") {
		if strings.HasPrefix(line, "Filesystem features:") && strings.Contains(line, "needs_recovery") {
			r.NeededRecovery = true
		}
	}
	cp := image + ".fsck"
	if err := copyFile(image, cp, 0o600); err != nil {
		return r, err
	}
	if r.NeededRecovery {
		out, err := exec.Command("e2fsck", "-E", "journal_only", "-y", cp).CombinedOutput()
		if code := exitCode(err); code > 1 {
			return r, fmt.Errorf("e2fsck journal replay: exit %d: %s", code, firstLines(out, 5))
		}
	}
	out, err := exec.Command("e2fsck", "-fn", cp).CombinedOutput()
	r.Output = string(out)
	switch code := exitCode(err); code {
	case 0:
		r.Clean = true
	case 1, 4:
		r.Clean = false
	default:
		return r, fmt.Errorf("e2fsck -fn: exit %d: %s", code, firstLines(out, 5))
	}
	return r, nil
}

// Records is what the workload file of a disk holds.
type Records struct {
	// Last is the number of the last record of the unbroken prefix 1..Last
	// (every record complete and its checksum right).
	Last int
	// Torn is the number of bytes after that prefix: the tail of a write
	// the crash cut (at most one record's worth is allowed).
	Torn int
}

// ReadRecords reads the workload's file from the ext4 image (the copy
// Fsck left, after journal replay) with debugfs and checks it: records
// numbered from 1 without a gap, each with its checksum, and at most a torn
// record at the end.
func ReadRecords(image string) (Records, error) {
	var r Records
	out, err := exec.Command("debugfs", "-R", "cat "+RecordFile, image).Output()
	if err != nil {
		return r, fmt.Errorf("debugfs cat %s: %w", RecordFile, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 4096), 1<<20)
	pos := 0
	for sc.Scan() {
		line := sc.Text()
		n, ok := parseRecord(line)
		if !ok || n != r.Last+1 {
			break
		}
		r.Last = n
		pos += len(line) + 1
	}
	if pos > len(out) {
		pos = len(out) // the last line had no newline
	}
	r.Torn = len(out) - pos
	if r.Torn > 256 {
		return r, fmt.Errorf("%s: records 1..%d are whole, then %d bytes that are not the next record (%q...)",
			RecordFile, r.Last, r.Torn, firstBytes(out[pos:], 40))
	}
	return r, nil
}

func parseRecord(line string) (int, bool) {
	f := strings.Fields(line)
	if len(f) != 3 || len(f[0]) != 8 || f[2] != recordPad {
		return 0, false
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, false
	}
	sum := md5.Sum([]byte(fmt.Sprintf("ferry-record-%d", n)))
	return n, f[1] == hex.EncodeToString(sum[:])
}

var fsyncedRE = regexp.MustCompile(`ferry-fsynced (\d+)`)

// LastFsynced is the highest record number the console reports fsynced.
func LastFsynced(console string) int {
	last := 0
	for _, m := range fsyncedRE.FindAllStringSubmatch(console, -1) {
		if n, _ := strconv.Atoi(m[1]); n > last {
			last = n
		}
	}
	return last
}

func copyFile(from, to string, mode os.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(strings.TrimSpace(string(b)), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, " / ")
}

func firstBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
