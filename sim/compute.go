package sim

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/processserver"
)

// Network is a simulated network at the recovery site.
type Network struct {
	Name     string
	Isolated bool // no route to production: for test failovers
	PublicIP bool // VMs get a public IP
	// Ports the network's security rules let in.
	AllowedPorts []int
}

// Instance is a VM the simulated compute created.
type Instance struct {
	ID        string
	Spec      processserver.VMSpec
	Network   Network
	Running   bool
	Deleted   bool
	Processed bool
	// ToolsDisabled: failover processing disabled the VMware Tools of a
	// Windows VM from VMware.
	ToolsDisabled bool
	Console       string
}

// Compute is the recovery site's simulated compute: it creates VMs on
// Ferry's devices, "boots" them by reading their boot block, and charges
// failover processing to the virtual clock.
type Compute struct {
	clock clock.Clock

	mu        sync.Mutex
	networks  map[string]Network
	instances map[string]*Instance
	next      map[string]int
}

// NewCompute returns a compute with the given networks.
func NewCompute(c clock.Clock, nets ...Network) *Compute {
	cp := &Compute{clock: c, networks: map[string]Network{}, instances: map[string]*Instance{}, next: map[string]int{}}
	for _, n := range nets {
		cp.networks[n.Name] = n
	}
	return cp
}

func (c *Compute) AcceptsDevices() bool { return true }

func (c *Compute) Create(ctx context.Context, spec processserver.VMSpec) (processserver.Instance, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	net, ok := c.networks[spec.Network]
	if !ok && spec.Test && strings.HasPrefix(spec.Network, "test-") {
		// A test failover without a named network gets its own, isolated.
		net = Network{Name: spec.Network, Isolated: true}
		c.networks[net.Name] = net
		ok = true
	}
	if !ok && spec.Network == "" {
		net, ok = c.networks["prod"]
	}
	if !ok {
		return processserver.Instance{}, fmt.Errorf("network %q does not exist at the recovery site", spec.Network)
	}
	// Numbered per name, so that VMs created side by side get the same IDs
	// whatever order they come in.
	c.next[spec.Name]++
	inst := &Instance{ID: fmt.Sprintf("sim-%s-%d", spec.Name, c.next[spec.Name]), Spec: spec, Network: net}
	c.instances[inst.ID] = inst
	out := processserver.Instance{ID: inst.ID, Network: net.Name, Isolated: net.Isolated, AllowedPorts: net.AllowedPorts}
	if net.PublicIP {
		out.PublicIP = fmt.Sprintf("20.50.0.%d", len(c.instances))
	}
	return out, nil
}

func (c *Compute) get(id string) (*Instance, error) {
	inst, ok := c.instances[id]
	if !ok || inst.Deleted {
		return nil, fmt.Errorf("instance %s does not exist", id)
	}
	return inst, nil
}

// Start boots the VM: its first disk must hold the boot block, and a
// machine that needs failover processing does not boot without it.
func (c *Compute) Start(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inst, err := c.get(id)
	if err != nil {
		return err
	}
	if len(inst.Spec.Disks) == 0 {
		return fmt.Errorf("instance %s has no disks", id)
	}
	boot := make([]byte, blockdev.BlockSize)
	if _, err := inst.Spec.Disks[0].Device.ReadAt(ctx, boot, 0); err != nil {
		return fmt.Errorf("instance %s: read boot block: %w", id, err)
	}
	sig, _, _ := strings.Cut(string(boot), "\x00")
	if !strings.HasPrefix(sig, bootMagic) {
		inst.Console = "no bootable device"
		return fmt.Errorf("instance %s did not boot: no boot block on disk %s", id, inst.Spec.Disks[0].Name)
	}
	if reasons := processserver.FailoverProcessingReasons(inst.Spec.Machine); len(reasons) > 0 && !inst.Processed {
		inst.Console = sig + "\nSTOP: INACCESSIBLE_BOOT_DEVICE"
		return fmt.Errorf("instance %s did not boot: failover processing was not done (%s)", id, strings.Join(reasons, "; "))
	}
	login := "login:"
	if inst.Spec.Machine.OS == "windows" {
		login = "Press Ctrl+Alt+Delete to sign in."
	}
	inst.Console = fmt.Sprintf("%s\nbooted at %s on network %s\n%s", sig, c.clock.Now().Format("15:04:05"), inst.Network.Name, login)
	inst.Running = true
	return nil
}

func (c *Compute) Stop(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if inst, ok := c.instances[id]; ok {
		inst.Running = false
	}
	return nil
}

func (c *Compute) Delete(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if inst, ok := c.instances[id]; ok {
		inst.Running, inst.Deleted = false, true
	}
	return nil
}

func (c *Compute) Console(ctx context.Context, id string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	inst, err := c.get(id)
	if err != nil {
		return "", err
	}
	return inst.Console, nil
}

// ProcessFailover charges the virtual clock 8 to 10 minutes, as the real
// step takes, and lets the machine boot.
func (c *Compute) ProcessFailover(ctx context.Context, id string, reasons []string) error {
	c.mu.Lock()
	inst, err := c.get(id)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := clock.From(ctx, c.clock).Sleep(ctx, processserver.FailoverProcessingTime(strings.TrimSuffix(inst.Spec.Name, "-test"))); err != nil {
		return err
	}
	c.mu.Lock()
	inst.Processed = true
	inst.ToolsDisabled = slices.Contains(reasons, processserver.DisableVMwareTools)
	c.mu.Unlock()
	return nil
}

// Instance returns a created instance (deleted ones included).
func (c *Compute) Instance(id string) (*Instance, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	inst, ok := c.instances[id]
	return inst, ok
}

// Live returns the instances not deleted, by ID.
func (c *Compute) Live() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id, inst := range c.instances {
		if !inst.Deleted {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}
