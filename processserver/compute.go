package processserver

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/proc"
)

// Compute creates and runs VMs at the recovery site. The simulator
// implements it for drills; HookCompute runs an operator's command for real
// machines. Implementations are safe for concurrent use; Stop and Delete of
// an instance that is already stopped or gone succeed.
type Compute interface {
	// Create makes a VM from disks, on spec.Network, without starting it.
	Create(ctx context.Context, spec VMSpec) (Instance, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id string) error
	Delete(ctx context.Context, id string) error
	// Console returns the VM's boot log or screen text (boot diagnostics).
	Console(ctx context.Context, id string) (string, error)
}

// DeviceCompute is a Compute that runs VMs on Ferry's devices directly, so
// a test failover can hand it copy-on-write overlays instead of images.
type DeviceCompute interface {
	AcceptsDevices() bool
}

// FailoverProcessor is a Compute that performs the extra failover
// processing some machines need (driver injection, network reset).
type FailoverProcessor interface {
	ProcessFailover(ctx context.Context, id string, reasons []string) error
}

// VMSpec is what Create needs.
type VMSpec struct {
	Name    string
	Test    bool
	Network string
	Disks   []DiskSpec
	Machine Machine
}

// DiskSpec is one disk of a VM to create: a device, and its image file's
// path when it has one.
type DiskSpec struct {
	Name   string
	Device blockdev.Device
	Path   string
}

// Instance is a created VM.
type Instance struct {
	ID       string
	Network  string
	Isolated bool
	PublicIP string
	// Ports the network's security rules let in from outside.
	AllowedPorts []int
}

// InstanceFinder is a compute layer that can find the machine it made for
// a VM name: a failover interrupted inside Create is then undone.
type InstanceFinder interface {
	Find(ctx context.Context, name string) (id string, found bool, err error)
}

// HookCompute runs one operator-supplied command for every action:
//
//	HOOK create NAME NETWORK test|prod DISK=PATH...   prints the instance ID on its first line,
//	                                                  then optional lines isolated=1, public_ip=IP, ports=22,3389
//	HOOK start|stop|delete ID
//	HOOK console ID                                   prints the boot log
//	HOOK process ID REASON...                         extra failover processing
//	HOOK find NAME                                    prints the ID of the machine create made for NAME, if any
//	                                                  (optional: exit 2 if the hook does not know the action)
type HookCompute struct {
	Command string
	// Timeout bounds each call (default 10 min); then the hook is killed
	// with its process group.
	Timeout time.Duration
}

func (h HookCompute) run(ctx context.Context, args ...string) (string, error) {
	if h.Command == "" {
		return "", fmt.Errorf("no compute hook is configured: start ferry-ps with --compute-hook to let failover create VMs")
	}
	timeout := h.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	res, err := proc.Run(ctx, proc.Command{What: "compute hook " + h.Command + " " + args[0], Path: h.Command, Args: args, Timeout: timeout, KeepStdout: true})
	return res.Stdout, err
}

// Find implements InstanceFinder with the hook's optional find action.
func (h HookCompute) Find(ctx context.Context, name string) (string, bool, error) {
	out, err := h.run(ctx, "find", name)
	if err != nil {
		return "", false, err
	}
	id := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	return id, id != "", nil
}

func (h HookCompute) Create(ctx context.Context, spec VMSpec) (Instance, error) {
	kind := "prod"
	if spec.Test {
		kind = "test"
	}
	args := []string{"create", spec.Name, spec.Network, kind}
	for _, d := range spec.Disks {
		if d.Path == "" {
			return Instance{}, fmt.Errorf("compute hook needs disk images; disk %s has none", d.Name)
		}
		args = append(args, d.Name+"="+d.Path)
	}
	out, err := h.run(ctx, args...)
	if err != nil {
		return Instance{}, err
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	inst := Instance{Network: spec.Network}
	if !sc.Scan() || strings.TrimSpace(sc.Text()) == "" {
		return Instance{}, fmt.Errorf("compute hook create printed no instance ID")
	}
	inst.ID = strings.TrimSpace(sc.Text())
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		switch k {
		case "isolated":
			inst.Isolated = v == "1" || v == "true"
		case "public_ip":
			inst.PublicIP = v
		case "ports":
			for _, p := range strings.Split(v, ",") {
				if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
					inst.AllowedPorts = append(inst.AllowedPorts, n)
				}
			}
		}
	}
	return inst, nil
}

func (h HookCompute) Start(ctx context.Context, id string) error {
	_, err := h.run(ctx, "start", id)
	return err
}

func (h HookCompute) Stop(ctx context.Context, id string) error {
	_, err := h.run(ctx, "stop", id)
	return err
}

func (h HookCompute) Delete(ctx context.Context, id string) error {
	_, err := h.run(ctx, "delete", id)
	return err
}

func (h HookCompute) Console(ctx context.Context, id string) (string, error) {
	return h.run(ctx, "console", id)
}

func (h HookCompute) ProcessFailover(ctx context.Context, id string, reasons []string) error {
	_, err := h.run(ctx, append([]string{"process", id}, reasons...)...)
	return err
}
