// Package virt is Ferry's side of libvirt: it reads a protected domain's
// virtual hardware (for the agent), builds the domain XML of a recovered
// machine (for the process server's libvirt compute driver), and drives
// domains and networks through libvirt's own RPC protocol
// (github.com/digitalocean/go-libvirt; domain XML with libvirt.org/go/libvirtxml).
package virt

import (
	"encoding/xml"
	"fmt"
	"path/filepath"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// Hardware is a machine's virtual hardware, as read from its hypervisor:
// what a compute driver needs to recreate it at the recovery site.
type Hardware struct {
	Source     string `json:"source,omitempty"` // "libvirt:DOMAIN"
	VCPUs      uint32 `json:"vcpus,omitempty"`
	MemoryMiB  uint64 `json:"memory_mib,omitempty"`
	Arch       string `json:"arch,omitempty"`
	Machine    string `json:"machine,omitempty"`
	Firmware   string `json:"firmware,omitempty"` // FirmwareBIOS, FirmwareEFI or FirmwareKernel
	Kernel     string `json:"kernel,omitempty"`
	Initrd     string `json:"initrd,omitempty"`
	Cmdline    string `json:"cmdline,omitempty"`
	Disks      []Disk `json:"disks,omitempty"` // in the guest's order
	NICs       []NIC  `json:"nics,omitempty"`
	GuestAgent bool   `json:"guest_agent,omitempty"`
}

// Firmware kinds.
const (
	FirmwareBIOS   = "bios"
	FirmwareEFI    = "efi"
	FirmwareKernel = "kernel" // direct kernel boot
)

// Disk is one of the machine's disks: the replicated disk's name and where
// the guest sees it.
type Disk struct {
	Name   string `json:"name"`
	Target string `json:"target"`
	Bus    string `json:"bus"`
}

// NIC is one network interface.
type NIC struct {
	Model   string `json:"model,omitempty"`
	MAC     string `json:"mac,omitempty"`
	Network string `json:"network,omitempty"`
}

// GuestAgentChannel is the virtio-serial channel of the QEMU guest agent.
const GuestAgentChannel = "org.qemu.guest_agent.0"

// DiskNamer names a domain disk by its source: an image path, a block
// device, or an NBD export; "" when the disk is not replicated.
type DiskNamer func(source string) string

// ReadHardware reads the virtual hardware from a domain's XML. Only the
// disks names gives a name are kept; a replicated disk the domain does not
// have is an error (the agent would replicate a disk the machine does not
// boot with).
func ReadHardware(domainXML string, names DiskNamer, want []string) (Hardware, string, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(domainXML); err != nil {
		return Hardware{}, "", fmt.Errorf("read domain XML: %w", err)
	}
	h := Hardware{Source: "libvirt:" + d.Name}
	if d.VCPU != nil {
		h.VCPUs = uint32(d.VCPU.Value)
	}
	if d.Memory != nil {
		h.MemoryMiB = toMiB(d.Memory.Value, d.Memory.Unit)
	}
	if os := d.OS; os != nil {
		if os.Type != nil {
			h.Arch, h.Machine = os.Type.Arch, os.Type.Machine
		}
		switch {
		case os.Kernel != "":
			h.Firmware, h.Kernel, h.Initrd, h.Cmdline = FirmwareKernel, os.Kernel, os.Initrd, os.Cmdline
		case os.Firmware == "efi" || os.Loader != nil && os.Loader.Type == "pflash":
			h.Firmware = FirmwareEFI
		default:
			h.Firmware = FirmwareBIOS
		}
	}
	found := map[string]bool{}
	if dev := d.Devices; dev != nil {
		for _, disk := range dev.Disks {
			if disk.Device != "" && disk.Device != "disk" || disk.Source == nil || disk.Target == nil {
				continue
			}
			name := names(diskSource(disk.Source))
			if name == "" {
				continue
			}
			found[name] = true
			h.Disks = append(h.Disks, Disk{Name: name, Target: disk.Target.Dev, Bus: disk.Target.Bus})
		}
		for _, nic := range dev.Interfaces {
			n := NIC{}
			if nic.Model != nil {
				n.Model = nic.Model.Type
			}
			if nic.MAC != nil {
				n.MAC = nic.MAC.Address
			}
			if nic.Source != nil && nic.Source.Network != nil {
				n.Network = nic.Source.Network.Network
			}
			h.NICs = append(h.NICs, n)
		}
		for _, ch := range dev.Channels {
			if ch.Target != nil && ch.Target.VirtIO != nil && ch.Target.VirtIO.Name == GuestAgentChannel {
				h.GuestAgent = true
			}
		}
	}
	for _, w := range want {
		if !found[w] {
			return h, "", fmt.Errorf("domain %s has no disk whose source is the replicated disk %s", d.Name, w)
		}
	}
	return h, osFamily(d.Metadata), nil
}

func diskSource(s *libvirtxml.DomainDiskSource) string {
	switch {
	case s.File != nil:
		return filepath.Clean(s.File.File)
	case s.Block != nil:
		return filepath.Clean(s.Block.Dev)
	case s.Network != nil && s.Network.Protocol == "nbd":
		return "nbd:" + s.Network.Name
	}
	return ""
}

func toMiB(v uint, unit string) uint64 {
	switch strings.ToLower(unit) {
	case "b", "bytes":
		return uint64(v) >> 20
	case "", "k", "kib":
		return uint64(v) >> 10
	case "m", "mib":
		return uint64(v)
	case "g", "gib":
		return uint64(v) << 10
	case "kb":
		return uint64(v) * 1000 >> 20
	case "mb":
		return uint64(v) * 1000 * 1000 >> 20
	case "gb":
		return uint64(v) * 1000 * 1000 * 1000 >> 20
	}
	return 0
}

// osFamily reads the operating system libosinfo recorded in the domain's
// metadata (virt-install writes it): "linux", "windows", or "" when the
// domain does not say.
func osFamily(md *libvirtxml.DomainMetadata) string {
	if md == nil {
		return ""
	}
	var meta struct {
		Libosinfo struct {
			OS struct {
				ID string `xml:"id,attr"`
			} `xml:"os"`
		} `xml:"libosinfo"`
	}
	if err := xml.Unmarshal([]byte("<m>"+md.XML+"</m>"), &meta); err != nil {
		return ""
	}
	id := strings.ToLower(meta.Libosinfo.OS.ID)
	switch {
	case id == "":
		return ""
	case strings.Contains(id, "microsoft.com/win"):
		return "windows"
	case strings.Contains(id, "bsd"):
		return ""
	}
	return "linux"
}

// libosinfoMetadata is the metadata a domain built by Ferry carries, so
// that reading it back tells its OS.
func libosinfoMetadata(osID string) *libvirtxml.DomainMetadata {
	if osID == "" {
		return nil
	}
	return &libvirtxml.DomainMetadata{XML: `<libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0"><libosinfo:os id="` + osID + `"/></libosinfo:libosinfo>`}
}
