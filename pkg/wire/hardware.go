package wire

import (
	"github.com/ferrydr/ferry/pkg/virt"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Hardware converts a machine's virtual hardware; nil stays nil.
func Hardware(h *ferryv1.VirtualHardware) *virt.Hardware {
	if h == nil {
		return nil
	}
	out := &virt.Hardware{Source: h.GetSource(), VCPUs: h.GetVcpus(), MemoryMiB: h.GetMemoryMib(), Arch: h.GetArch(),
		Machine: h.GetMachine(), Firmware: h.GetFirmware(), Kernel: h.GetKernel(), Initrd: h.GetInitrd(),
		Cmdline: h.GetCmdline(), GuestAgent: h.GetGuestAgent()}
	for _, d := range h.GetDisks() {
		out.Disks = append(out.Disks, virt.Disk{Name: d.GetName(), Target: d.GetTarget(), Bus: d.GetBus()})
	}
	for _, n := range h.GetNics() {
		out.NICs = append(out.NICs, virt.NIC{Model: n.GetModel(), MAC: n.GetMac(), Network: n.GetNetwork()})
	}
	return out
}

// HardwareProto converts virtual hardware for the wire.
func HardwareProto(h *virt.Hardware) *ferryv1.VirtualHardware {
	if h == nil {
		return nil
	}
	out := &ferryv1.VirtualHardware{Source: h.Source, Vcpus: h.VCPUs, MemoryMib: h.MemoryMiB, Arch: h.Arch,
		Machine: h.Machine, Firmware: h.Firmware, Kernel: h.Kernel, Initrd: h.Initrd, Cmdline: h.Cmdline, GuestAgent: h.GuestAgent}
	for _, d := range h.Disks {
		out.Disks = append(out.Disks, &ferryv1.VirtualDisk{Name: d.Name, Target: d.Target, Bus: d.Bus})
	}
	for _, n := range h.NICs {
		out.Nics = append(out.Nics, &ferryv1.VirtualNIC{Model: n.Model, Mac: n.MAC, Network: n.Network})
	}
	return out
}
