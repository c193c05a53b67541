package virt

import (
	"errors"
	"fmt"
	"os"

	"libvirt.org/go/libvirtxml"
)

// DomainSpec is a domain to define.
type DomainSpec struct {
	Name string
	// Type is "kvm" or "qemu" (TCG); Conn.DomainType tells which works.
	Type     string
	Hardware Hardware
	// Disks in the guest's order (Hardware.Disks gives target and bus by
	// name; missing ones get virtio vda, vdb, ...).
	Disks []DiskSource
	// Network is the libvirt network of the first NIC; "" leaves the
	// machine without one.
	Network string
	// ConsoleLog receives the serial console (boot diagnostics).
	ConsoleLog string
	// OSID is the libosinfo ID written into the metadata (optional).
	OSID string
}

// DiskSource is where a disk's data is: an image file, or an NBD export on
// a Unix socket.
type DiskSource struct {
	Name      string
	File      string
	NBDSocket string
	NBDExport string
}

// ErrMissingFile is returned when a domain would boot from a kernel, initrd
// or firmware file this host does not have.
var ErrMissingFile = errors.New("file missing on this host")

// Check reports what would stop the domain from being defined or booting
// on this host: a missing kernel, initrd or disk image.
func (s DomainSpec) Check() error {
	if s.Name == "" {
		return errors.New("domain name is empty")
	}
	if len(s.Disks) == 0 {
		return fmt.Errorf("domain %s has no disk", s.Name)
	}
	for what, p := range map[string]string{"kernel": s.Hardware.Kernel, "initrd": s.Hardware.Initrd} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%w: the machine boots the %s %s, which this host does not have: install it or copy it to the same path", ErrMissingFile, what, p)
		}
	}
	if s.Hardware.Firmware == FirmwareKernel && s.Hardware.Kernel == "" {
		return fmt.Errorf("%w: direct kernel boot without a kernel path", ErrMissingFile)
	}
	for _, d := range s.Disks {
		if d.File != "" {
			if _, err := os.Stat(d.File); err != nil {
				return fmt.Errorf("%w: disk %s: %w", ErrMissingFile, d.Name, err)
			}
		}
	}
	return nil
}

// XML renders the domain.
func (s DomainSpec) XML() (string, error) {
	h := s.Hardware
	vcpus, mem := h.VCPUs, h.MemoryMiB
	if vcpus == 0 {
		vcpus = 1
	}
	if mem == 0 {
		mem = 512
	}
	arch := h.Arch
	if arch == "" {
		arch = "x86_64"
	}
	typ := s.Type
	if typ == "" {
		typ = "qemu"
	}
	d := libvirtxml.Domain{
		Type:     typ,
		Name:     s.Name,
		Metadata: libosinfoMetadata(s.OSID),
		Memory:   &libvirtxml.DomainMemory{Value: uint(mem), Unit: "MiB"},
		VCPU:     &libvirtxml.DomainVCPU{Value: uint(vcpus)},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: arch, Machine: h.Machine},
		},
		// ACPI lets a graceful shutdown reach the guest.
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		OnPoweroff: "destroy", OnReboot: "restart", OnCrash: "destroy",
		Devices: &libvirtxml.DomainDeviceList{},
	}
	switch h.Firmware {
	case FirmwareKernel:
		d.OS.Kernel, d.OS.Initrd, d.OS.Cmdline = h.Kernel, h.Initrd, h.Cmdline
	case FirmwareEFI:
		d.OS.Firmware = "efi"
	}
	byName := map[string]Disk{}
	for _, hd := range h.Disks {
		byName[hd.Name] = hd
	}
	used := map[string]bool{}
	for _, hd := range h.Disks {
		used[hd.Target] = true
	}
	next := 'a'
	for _, ds := range s.Disks {
		hd, ok := byName[ds.Name]
		if !ok || hd.Target == "" {
			for used["vd"+string(next)] {
				next++
			}
			hd = Disk{Name: ds.Name, Target: "vd" + string(next), Bus: "virtio"}
			used[hd.Target] = true
		}
		src := &libvirtxml.DomainDiskSource{}
		switch {
		case ds.File != "":
			src.File = &libvirtxml.DomainDiskSourceFile{File: ds.File}
		case ds.NBDSocket != "":
			src.Network = &libvirtxml.DomainDiskSourceNetwork{Protocol: "nbd", Name: ds.NBDExport,
				Hosts: []libvirtxml.DomainDiskSourceHost{{Transport: "unix", Socket: ds.NBDSocket}}}
		default:
			return "", fmt.Errorf("disk %s has no source", ds.Name)
		}
		d.Devices.Disks = append(d.Devices.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw", Cache: "none"},
			Source: src,
			Target: &libvirtxml.DomainDiskTarget{Dev: hd.Target, Bus: hd.Bus},
		})
	}
	if s.Network != "" {
		model := "virtio"
		nic := libvirtxml.DomainInterface{
			Source: &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: s.Network}},
		}
		if len(h.NICs) > 0 {
			if h.NICs[0].Model != "" {
				model = h.NICs[0].Model
			}
			if h.NICs[0].MAC != "" {
				nic.MAC = &libvirtxml.DomainInterfaceMAC{Address: h.NICs[0].MAC}
			}
		}
		nic.Model = &libvirtxml.DomainInterfaceModel{Type: model}
		d.Devices.Interfaces = append(d.Devices.Interfaces, nic)
	}
	port := uint(0)
	serial := libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	}
	if s.ConsoleLog != "" {
		serial.Log = &libvirtxml.DomainChardevLog{File: s.ConsoleLog, Append: "off"}
	}
	d.Devices.Serials = []libvirtxml.DomainSerial{serial}
	d.Devices.Consoles = []libvirtxml.DomainConsole{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
	}}
	if h.GuestAgent {
		d.Devices.Channels = []libvirtxml.DomainChannel{{
			Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
			Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: GuestAgentChannel}},
		}}
	}
	return d.Marshal()
}
