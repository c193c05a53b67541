package virt

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"
)

// KVM ioctls (linux/kvm.h).
const (
	kvmGetAPIVersion     = 0xAE00
	kvmGetSupportedCPUID = 0xC008AE05
)

// DomainType returns the domain type that runs guests on this host: "kvm"
// when /dev/kvm works, "qemu" (TCG, software emulation) when it is missing
// or cannot run a guest, with the reason.
//
// A KVM that only nested virtualization provides may open and answer, yet
// hang guests: such a KVM hands guests fewer CPU features than the host has
// (here SSE3 and SSE4 were missing), and is taken as unusable.
func DomainType() (string, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "qemu", fmt.Sprintf("no usable /dev/kvm (%v): software emulation (TCG)", err)
	}
	defer f.Close()
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 || v != 12 {
		return "qemu", fmt.Sprintf("/dev/kvm answers API version %d (%v): software emulation (TCG)", v, errno)
	}
	if runtime.GOARCH != "amd64" {
		return "kvm", "/dev/kvm works"
	}
	type entry struct {
		Function, Index, Flags, Eax, Ebx, Ecx, Edx uint32
		_                                          [3]uint32
	}
	const n = 128
	buf := make([]byte, 8+n*int(unsafe.Sizeof(entry{})))
	*(*uint32)(unsafe.Pointer(&buf[0])) = n
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), kvmGetSupportedCPUID, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return "qemu", fmt.Sprintf("/dev/kvm does not list its CPU features (%v): software emulation (TCG)", errno)
	}
	var ecx uint32
	count := *(*uint32)(unsafe.Pointer(&buf[0]))
	for i := 0; i < int(count) && i < n; i++ {
		e := (*entry)(unsafe.Pointer(&buf[8+i*int(unsafe.Sizeof(entry{}))]))
		if e.Function == 1 {
			ecx = e.Ecx
		}
	}
	features := []struct {
		name string
		host bool
		bit  uint
	}{{"sse3", cpu.X86.HasSSE3, 0}, {"ssse3", cpu.X86.HasSSSE3, 9}, {"sse4.1", cpu.X86.HasSSE41, 19}, {"sse4.2", cpu.X86.HasSSE42, 20}, {"popcnt", cpu.X86.HasPOPCNT, 23}}
	for _, ft := range features {
		if ft.host && ecx&(1<<ft.bit) == 0 {
			return "qemu", fmt.Sprintf("/dev/kvm hides the host's %s from guests (a nested KVM that does not run guests here): software emulation (TCG)", ft.name)
		}
	}
	return "kvm", "/dev/kvm works"
}
