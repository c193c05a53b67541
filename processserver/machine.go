package processserver

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/pkg/virt"
)

// Machine is what the process server knows of a protected machine, as its
// agent reported it.
type Machine struct {
	OS                  string `json:"os"`
	AgentVersion        string `json:"agent_version"`
	Physical            bool   `json:"physical"`
	Hypervisor          string `json:"hypervisor"`
	ProtectedAsPhysical bool   `json:"protected_as_physical"`
	// DHCP is nil when the agent could not tell.
	DHCP                *bool    `json:"dhcp"`
	BootDrivers         []string `json:"boot_drivers"`
	RDPEnabled          bool     `json:"rdp_enabled"`
	RDPFirewallProfiles []string `json:"rdp_firewall_profiles"`
	SANPolicy           string   `json:"san_policy"`
	PendingUpdates      bool     `json:"pending_updates"`
	SSHEnabledAtBoot    bool     `json:"ssh_enabled_at_boot"`
	SSHFirewallAllowed  bool     `json:"ssh_firewall_allowed"`
	// Hardware is the virtual hardware read from the primary's hypervisor;
	// nil for machines described by hand.
	Hardware *virt.Hardware `json:"hardware,omitempty"`
}

// VMwareStyle reports whether the machine is protected the way ASR
// protects VMware VMs and physical servers (a mobility agent in the
// machine): it fails over unplanned only, and its reverse replication is
// relayed by the recovery site's process server.
func (m Machine) VMwareStyle() bool {
	return m.Hypervisor == "vmware" || m.Physical || m.ProtectedAsPhysical
}

// Kind names the machine's protection, for messages.
func (m Machine) Kind() string {
	switch {
	case m.Physical:
		return "a physical server"
	case m.ProtectedAsPhysical:
		return "a VM protected as a physical server"
	case m.Hypervisor == "vmware":
		return "a VMware VM"
	case m.Hypervisor == "hyperv":
		return "a Hyper-V VM"
	}
	return "a VM"
}

// RequiredBootDrivers are the Windows drivers a VM must have to boot at the
// recovery site without failover processing.
var RequiredBootDrivers = []string{"storvsc", "vmbus", "storflt", "intelide", "atapi"}

// DisableVMwareTools is the failover processing task of a Windows VM from
// VMware: its VMware Tools are disabled, since it no longer runs on VMware.
const DisableVMwareTools = "VMware Windows VM: disable VMware Tools"

// FailoverProcessingReasons lists why a machine needs extra failover
// processing; none means it boots as it is.
func FailoverProcessingReasons(m Machine) []string {
	var r []string
	if m.AgentVersion != "" && versionBelow(m.AgentVersion, 9, 8) {
		r = append(r, fmt.Sprintf("mobility agent %s is older than 9.8", m.AgentVersion))
	}
	if m.Physical {
		r = append(r, "physical server")
	}
	if m.Hypervisor == "vmware" && m.OS == "linux" {
		r = append(r, "VMware Linux VM")
	}
	if m.Hypervisor == "vmware" && m.OS == "windows" {
		r = append(r, DisableVMwareTools)
	}
	if m.Hypervisor == "hyperv" && m.ProtectedAsPhysical {
		r = append(r, "Hyper-V VM protected as a physical server")
	}
	if m.DHCP != nil && !*m.DHCP {
		r = append(r, "DHCP is off")
	}
	if m.OS == "windows" {
		var missing []string
		for _, d := range RequiredBootDrivers {
			if !slices.Contains(m.BootDrivers, d) {
				missing = append(missing, d)
			}
		}
		if len(missing) > 0 {
			r = append(r, "boot drivers missing: "+strings.Join(missing, ", "))
		}
	}
	return r
}

// FailoverProcessingTime is how long the extra processing takes for vm in
// a simulation: between 8 and 10 minutes, fixed per VM.
func FailoverProcessingTime(vm string) time.Duration {
	h := fnv.New32a()
	h.Write([]byte(vm))
	return 8*time.Minute + time.Duration(h.Sum32()%121)*time.Second
}

func versionBelow(v string, major, minor int) bool {
	parts := strings.SplitN(v, ".", 3)
	ma, err := strconv.Atoi(parts[0])
	if err != nil {
		return false
	}
	mi := 0
	if len(parts) > 1 {
		mi, _ = strconv.Atoi(parts[1])
	}
	return ma < major || ma == major && mi < minor
}

// Finding is one readiness check after failover.
type Finding struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	// Unknown: the check could not be made; it is neither passed nor
	// failed.
	Unknown bool `json:"unknown,omitempty"`
}

// consoleFinding is the boot diagnostics finding: the console's last line.
func consoleFinding(console string) Finding {
	if strings.TrimSpace(console) == "" {
		return Finding{Check: "boot diagnostics", Detail: "no console output from the VM"}
	}
	lines := strings.Split(strings.TrimSpace(console), "\n")
	return Finding{Check: "boot diagnostics", OK: true, Detail: "console: " + strings.TrimSpace(lines[len(lines)-1])}
}

// Readiness checks whether people can connect to the failed-over VM: the
// machine's own settings (RDP or SSH, firewall, SAN policy, updates), the
// recovery network (public IP, security rules) and boot diagnostics.
func Readiness(m Machine, inst Instance, console string) []Finding {
	var f []Finding
	add := func(check string, ok bool, bad string) {
		d := "ok"
		if !ok {
			d = bad
		}
		f = append(f, Finding{Check: check, OK: ok, Detail: d})
	}
	port := 22
	switch m.OS {
	case "windows":
		port = 3389
		add("rdp enabled", m.RDPEnabled, "RDP is disabled on the machine: enable Remote Desktop before failover")
		if inst.PublicIP != "" {
			add("firewall allows rdp (public profile)", slices.Contains(m.RDPFirewallProfiles, "public"),
				"Windows Firewall does not allow RDP on the public profile: internet access will be refused")
		} else {
			add("firewall allows rdp (domain/private profile)", slices.Contains(m.RDPFirewallProfiles, "private") || slices.Contains(m.RDPFirewallProfiles, "domain"),
				"Windows Firewall does not allow RDP on the domain or private profile: site-to-site VPN access will be refused")
		}
		add("san policy OnlineAll", m.SANPolicy == "OnlineAll", fmt.Sprintf("SAN policy is %q: set it to OnlineAll or data disks stay offline", m.SANPolicy))
		add("no pending updates", !m.PendingUpdates, "Windows updates are pending: the VM may install them at first boot and be unreachable meanwhile")
	case "linux":
		add("sshd starts at boot", m.SSHEnabledAtBoot, "sshd is not enabled at boot: enable the ssh service")
		add("firewall allows ssh", m.SSHFirewallAllowed, "the firewall does not allow SSH (port 22)")
	case "":
		f = append(f, Finding{Check: "connection settings", Unknown: true,
			Detail: "the machine's OS was not reported (describe it with ferry-agent --machine or --libvirt-domain): RDP/SSH settings not checked"})
	default:
		f = append(f, Finding{Check: "connection settings", Unknown: true,
			Detail: fmt.Sprintf("the agent reported OS %q: RDP/SSH settings not checked", m.OS)})
	}
	add("public ip", inst.PublicIP != "", "the VM has no public IP: reach it over a site-to-site VPN or add one")
	add(fmt.Sprintf("security rules allow port %d", port), slices.Contains(inst.AllowedPorts, port),
		fmt.Sprintf("the network's security rules do not let port %d in", port))
	first, _, _ := strings.Cut(strings.TrimSpace(console), "\n")
	add("boot diagnostics", console != "", "no console output from the VM")
	if console != "" {
		f[len(f)-1].Detail = "console: " + first
	}
	return f
}
