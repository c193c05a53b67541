package processserver

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/pkg/wire"
)

// builtinPolicies returns the policies every process server has. The
// server's Retention and RPOThreshold set the default policy's values the
// first time it is created; after that operators edit it.
func (s *Server) builtinPolicies() []retention.Policy {
	ret, rpo := s.cfg.Retention, s.cfg.RPOThreshold
	if ret <= 0 {
		ret = 35 * 24 * time.Hour
	}
	if rpo <= 0 {
		rpo = 15 * time.Minute
	}
	return []retention.Policy{
		{Name: retention.DefaultName, Retention: ret, CrashInterval: 5 * time.Minute, AppInterval: time.Hour, RPOThreshold: rpo},
		{Name: retention.VMwareName, Retention: 72 * time.Hour, CrashInterval: 5 * time.Minute, AppInterval: time.Hour, RPOThreshold: rpo},
		retention.Failback(),
	}
}

// ensurePolicies creates the built-in policies that do not exist yet, and
// writes Ferry's own (the failback policy) anew.
func (s *Server) ensurePolicies() error {
	docs := map[string]retention.Policy{}
	for _, p := range s.builtinPolicies() {
		docs[p.Name] = p
	}
	return ensureNamed(s.ctl, bucketPolicies, docs, func(name string) bool { return !docs[name].Builtin })
}

// Policies returns every policy, by name.
func (s *Server) Policies() ([]retention.Policy, error) {
	return listNamed[retention.Policy](s.ctl, bucketPolicies)
}

// Policy returns the policy of that name.
func (s *Server) Policy(name string) (retention.Policy, error) {
	return getNamed[retention.Policy](s.ctl, bucketPolicies, "policy", name)
}

// PutPolicy creates or edits a policy and sends it to the connected agents
// of the VMs that follow it.
func (s *Server) PutPolicy(ctx context.Context, p retention.Policy) error {
	if p.Name == retention.FailbackName {
		return fmt.Errorf("%w: the failback policy is created by Ferry and cannot be edited", ErrInvalidRequest)
	}
	p.Builtin = false
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if err := putNamed(s.ctl, bucketPolicies, p.Name, p); err != nil {
		return err
	}
	s.log.Info("policy saved", "policy", p.Name, "retention", p.Retention, "crash", p.CrashInterval, "app", p.AppInterval, "rpo_threshold", p.RPOThreshold)
	for _, vm := range s.recv.Sessions() {
		if name, err := s.policyName(string(vm)); err == nil && name == p.Name {
			s.pushPolicy(vm, p)
		}
	}
	return nil
}

// AttachPolicy makes vm follow the named policy.
func (s *Server) AttachPolicy(ctx context.Context, vm, name string) error {
	p, err := s.Policy(name)
	if err != nil {
		return err
	}
	if p.Builtin {
		return fmt.Errorf("%w: the %s policy is attached by Ferry to reprotected VMs only", ErrInvalidRequest, name)
	}
	if _, err := s.j.VM(ctx, ferry.VMID(vm)); err != nil {
		return err
	}
	if err := s.ctl.update(vm, func(st *VMState) { st.Policy = name }); err != nil {
		return err
	}
	s.log.Info("policy attached", "vm", vm, "policy", name)
	if slices.Contains(s.recv.Sessions(), ferry.VMID(vm)) {
		s.pushPolicy(ferry.VMID(vm), p)
	}
	return nil
}

// policyName is the name of the policy vm follows now.
func (s *Server) policyName(vm string) (string, error) {
	st, err := s.ctl.state(vm)
	if err != nil {
		return "", err
	}
	switch {
	case st.State == StateReprotected || st.State == StateFailedBack:
		return retention.FailbackName, nil
	case st.Policy != "":
		return st.Policy, nil
	case st.Machine.Hypervisor == "vmware" && !st.Machine.ProtectedAsPhysical:
		return retention.VMwareName, nil
	}
	return retention.DefaultName, nil
}

// policyFor returns the policy vm follows now.
func (s *Server) policyFor(vm string) (retention.Policy, error) {
	name, err := s.policyName(vm)
	if err != nil {
		return retention.Policy{}, err
	}
	return s.Policy(name)
}

// pushPolicy tells a connected agent its policy; one that misses it gets it
// with its next hello. Close waits for it.
func (s *Server) pushPolicy(vm ferry.VMID, p retention.Policy) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.bg, 30*time.Second)
		defer cancel()
		res, err := s.recv.Command(ctx, vm, wire.PolicyCommand(p))
		if err == nil && !res.GetOk() {
			err = fmt.Errorf("%s", res.GetError())
		}
		if err != nil {
			s.log.Warn("policy not delivered; the agent gets it when it reconnects", "vm", vm, "policy", p.Name, "err", err)
		}
	}()
}
