package processserver

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/retention"
)

// EventAgentConflict is raised when a second agent instance claims a VM.
const (
	EventAgentConflict = "agent-conflict"
	EventAgentReleased = "agent-released"
	EventAgentBound    = "agent-bound"
	EventDiskResized   = "disk-resized"
)

// note records a warning's detail in vm's state; a failure to record it
// is logged (the warning stands either way).
func (s *Server) note(vm string, fn func(*VMState)) {
	if err := s.ctl.update(vm, fn); err != nil {
		s.log.Error("control store", "vm", vm, "err", err)
	}
}

// agentHello is what an agent says of itself when its stream opens.
type agentHello struct {
	VM       string
	Instance string // the agent's state's identity ("" from an agent that names none)
	Epoch    ferry.Epoch
	Disks    []ferry.Disk
	Machine  *Machine // nil: not described
}

// helloed keeps the description of the machine an agent protects and
// returns the policy it follows.
func (s *Server) helloed(h agentHello) (retention.Policy, error) {
	if h.Machine != nil {
		if err := s.ctl.update(h.VM, func(st *VMState) { st.Machine = *h.Machine }); err != nil {
			return retention.Policy{}, err
		}
	}
	return s.policyFor(h.VM)
}

// admitAgent binds a VM to the first agent instance that replicates it and
// refuses any other, so that two machines claiming one identity cannot
// take turns writing its replica. A new epoch (a reprotect, started by an
// operator) or ReleaseAgent lets another instance bind.
func (s *Server) admitAgent(ctx context.Context, h agentHello) error {
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	st, err := s.ctl.state(h.VM)
	if err != nil {
		return err
	}
	if err := s.checkDiskSizes(ctx, h, &st); err != nil {
		return err
	}
	inst, who := h.Instance, peerName(ctx)
	b := st.Agent
	switch {
	case b != nil && b.Instance == inst && inst != "":
		if slices.Contains(s.recv.Sessions(), ferry.VMID(h.VM)) {
			// The same agent again (it reconnected): its new stream ends
			// the old one.
			s.audit(AuditEntry{Who: "agent instance " + inst, Addr: who, Action: "stream takeover", Target: h.VM, Outcome: "ok"})
		}
		return nil
	case b != nil && h.Epoch <= b.Epoch:
		claimant := inst
		if claimant == "" {
			claimant = "(an agent that does not name its instance)"
		}
		detail := fmt.Sprintf("agent instance %s from %s was refused: vm %s replicates from instance %s (%s) since %s; if the machine moved, run: ferryctl agent release --vm %s",
			claimant, who, h.VM, b.Instance, b.Peer, b.Since.UTC().Format("2006-01-02T15:04:05Z"), h.VM)
		// One event per new claimant, not one per retry.
		s.audit(AuditEntry{Who: "agent instance " + claimant, Addr: who, Action: "replicate", Target: h.VM, Outcome: "refused: bound to instance " + b.Instance})
		if st.AgentConflict != detail {
			s.note(h.VM, func(st *VMState) { st.AgentConflict = detail })
			s.event(Event{Time: s.clock.Now(), VM: h.VM, Kind: EventAgentConflict, Detail: detail})
			s.log.Warn("second agent refused", "vm", h.VM, "claimant", claimant, "peer", who, "bound", b.Instance)
		}
		return fmt.Errorf("%w: %s", ingest.ErrDenied, detail)
	case inst == "":
		// An agent that does not name its instance binds nothing.
		return nil
	}
	nb := &AgentBinding{Instance: inst, Peer: who, Epoch: h.Epoch, Since: s.clock.Now()}
	if err := s.ctl.update(h.VM, func(st *VMState) { st.Agent, st.AgentConflict = nb, "" }); err != nil {
		return err
	}
	if b != nil {
		s.event(Event{Time: s.clock.Now(), VM: h.VM, Kind: EventAgentBound,
			Detail: fmt.Sprintf("epoch %d replicates from agent instance %s (%s), was %s", nb.Epoch, inst, who, b.Instance)})
	}
	return nil
}

// checkDiskSizes refuses an agent whose disks changed size since the VM
// was registered, with an event the first time: the replica and its
// points keep the size they were taken at.
func (s *Server) checkDiskSizes(ctx context.Context, h agentHello, st *VMState) error {
	vm, err := s.j.VM(ctx, ferry.VMID(h.VM))
	if err != nil || h.Epoch != vm.Epoch {
		return nil // a new VM, or the receiver judges the epoch
	}
	for i, d := range h.Disks {
		if i >= len(vm.Disks) || d.Name != vm.Disks[i].Name || d.Size == vm.Disks[i].Size {
			continue
		}
		detail := fmt.Sprintf("disk %s of vm %s is now %d bytes; its replica and recovery points are %d bytes. Replication stopped: give the disk back its size, or protect the machine again under a new VM name (ferry-agent --vm NEW --state NEWDIR); the points of %s stay until retention removes them",
			d.Name, h.VM, d.Size, vm.Disks[i].Size, h.VM)
		if st.DiskConflict != detail {
			s.note(h.VM, func(st *VMState) { st.DiskConflict = detail })
			s.event(Event{Time: s.clock.Now(), VM: h.VM, Kind: EventDiskResized, Detail: detail})
			s.log.Warn("protected disk changed size", "vm", h.VM, "disk", d.Name, "size", d.Size, "replica", vm.Disks[i].Size)
		}
		return fmt.Errorf("%w: %s", ingest.ErrGeometry, detail)
	}
	if st.DiskConflict != "" {
		s.note(h.VM, func(st *VMState) { st.DiskConflict = "" })
	}
	return nil
}

// ReleaseAgent unbinds vm from its agent instance; by names the operator.
func (s *Server) ReleaseAgent(ctx context.Context, vm string) (string, error) {
	if _, err := s.j.VM(ctx, ferry.VMID(vm)); err != nil {
		return "", err
	}
	by, err := s.caller(ctx)
	if err != nil {
		return "", err
	}
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	st, err := s.ctl.state(vm)
	if err != nil {
		return "", err
	}
	if st.Agent == nil {
		return "", fmt.Errorf("%w: vm %s is not bound to an agent instance", ErrState, vm)
	}
	if err := s.ctl.update(vm, func(st *VMState) { st.Agent, st.AgentConflict = nil, "" }); err != nil {
		return "", err
	}
	s.event(Event{Time: s.clock.Now(), VM: vm, Kind: EventAgentReleased,
		Detail: fmt.Sprintf("%s released agent instance %s; the next agent to connect takes the VM", by, st.Agent.Instance)})
	s.log.Info("agent released", "vm", vm, "instance", st.Agent.Instance, "by", by)
	return st.Agent.Instance, nil
}

// peerName names a stream's peer: its certificate (role/name, serial) and
// address.
func peerName(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown peer"
	}
	out := p.Addr.String()
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		c := ti.State.PeerCertificates[0]
		out = fmt.Sprintf("%s serial %x at %s", c.Subject.CommonName, c.SerialNumber, out)
	}
	return out
}
