package processserver

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/policy"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Built-in policy names.
const (
	// PolicyDefault is what a VM follows until another policy is attached
	// (24 h retention, as for Hyper-V-style protection).
	PolicyDefault = "default"
	// PolicyVMware is attached to VMware-style VMs when they first connect
	// (72 h retention).
	PolicyVMware = "vmware-72h"
	// PolicyFailback is what reprotected VMs follow while they replicate to
	// the master target; Ferry creates it and it cannot be edited.
	PolicyFailback = policy.FailbackName
)

// Policy is a named replication policy (pkg/policy, shared with the
// master target).
type Policy = policy.Policy

var (
	bucketPolicies = []byte("policies")
	nameRE         = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)
)

// validatePolicy reports the first field of p that is out of range.
func validatePolicy(p Policy) error {
	switch {
	case !nameRE.MatchString(p.Name):
		return fmt.Errorf("%w: policy name %q: use 1-63 letters, digits, '.', '_' or '-'", ErrInvalidRequest, p.Name)
	case p.Retention < time.Hour || p.Retention > 35*24*time.Hour:
		return fmt.Errorf("%w: policy %s: retention %v is outside 1h..840h", ErrInvalidRequest, p.Name, p.Retention)
	case p.CrashInterval < time.Second || p.CrashInterval > p.Retention:
		return fmt.Errorf("%w: policy %s: crash-consistent frequency %v is outside 1s..retention (%v)", ErrInvalidRequest, p.Name, p.CrashInterval, p.Retention)
	case p.AppInterval < 0 || (p.AppInterval != 0 && (p.AppInterval < time.Second || p.AppInterval > p.Retention)):
		return fmt.Errorf("%w: policy %s: app-consistent frequency %v is outside 1s..retention (%v); 0 turns app-consistent points off", ErrInvalidRequest, p.Name, p.AppInterval, p.Retention)
	case p.RPOThreshold < time.Minute:
		return fmt.Errorf("%w: policy %s: RPO threshold %v is below 1m", ErrInvalidRequest, p.Name, p.RPOThreshold)
	}
	return nil
}

// builtinPolicies returns the policies every process server has. The
// server's Retention and RPOThreshold set the default policy's values the
// first time it is created; after that operators edit it.
func (s *Server) builtinPolicies() []Policy {
	ret, rpo := s.cfg.Retention, s.cfg.RPOThreshold
	if ret <= 0 {
		ret = 35 * 24 * time.Hour
	}
	if rpo <= 0 {
		rpo = 15 * time.Minute
	}
	return []Policy{
		{Name: PolicyDefault, Retention: ret, CrashInterval: 5 * time.Minute, AppInterval: time.Hour, RPOThreshold: rpo},
		{Name: PolicyVMware, Retention: 72 * time.Hour, CrashInterval: 5 * time.Minute, AppInterval: time.Hour, RPOThreshold: rpo},
		policy.Failback(),
	}
}

// ensurePolicies creates the built-in policies that do not exist yet.
func (s *Server) ensurePolicies() error {
	return s.ctl.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPolicies)
		if err != nil {
			return err
		}
		for _, p := range s.builtinPolicies() {
			if b.Get([]byte(p.Name)) != nil && !p.Builtin {
				continue
			}
			buf, err := json.Marshal(p)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(p.Name), buf); err != nil {
				return err
			}
		}
		return nil
	})
}

// Policies returns every policy, by name.
func (s *Server) Policies() ([]Policy, error) { return listNamed[Policy](s.ctl, bucketPolicies) }

// Policy returns the policy of that name.
func (s *Server) Policy(name string) (Policy, error) {
	return getNamed[Policy](s.ctl, bucketPolicies, "policy", name)
}

// PutPolicy creates or edits a policy and sends it to the connected agents
// of the VMs that follow it.
func (s *Server) PutPolicy(ctx context.Context, p Policy) error {
	if p.Name == PolicyFailback {
		return fmt.Errorf("%w: the failback policy is created by Ferry and cannot be edited", ErrInvalidRequest)
	}
	p.Builtin = false
	if err := validatePolicy(p); err != nil {
		return err
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
		return PolicyFailback, nil
	case st.Policy != "":
		return st.Policy, nil
	case st.Machine.Hypervisor == "vmware" && !st.Machine.ProtectedAsPhysical:
		return PolicyVMware, nil
	}
	return PolicyDefault, nil
}

// policyFor returns the policy vm follows now.
func (s *Server) policyFor(vm string) (Policy, error) {
	name, err := s.policyName(vm)
	if err != nil {
		return Policy{}, err
	}
	return s.Policy(name)
}

// pushPolicy tells a connected agent its policy; one that misses it gets it
// with its next hello.
func (s *Server) pushPolicy(vm ferry.VMID, p Policy) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := s.recv.Command(ctx, vm, &ferryv1.Command{Action: &ferryv1.Command_Policy{Policy: PolicyProto(p, nil)}})
		if err == nil && !res.GetOk() {
			err = fmt.Errorf("%s", res.GetError())
		}
		if err != nil {
			s.log.Warn("policy not delivered; the agent gets it when it reconnects", "vm", vm, "policy", p.Name, "err", err)
		}
	}()
}

// PolicyProto converts a policy for the wire.
func PolicyProto(p Policy, vms []string) *ferryv1.Policy { return p.Proto(vms) }

// PolicyFromProto converts a policy from the wire.
func PolicyFromProto(p *ferryv1.Policy) Policy { return policy.FromProto(p) }

func (r *recovery) ListPolicies(ctx context.Context, _ *ferryv1.ListPoliciesRequest) (*ferryv1.ListPoliciesResponse, error) {
	pols, err := r.s.Policies()
	if err != nil {
		return nil, toStatus(err)
	}
	vms, err := r.s.j.VMs(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	members := map[string][]string{}
	for _, vm := range vms {
		if name, err := r.s.policyName(string(vm.Name)); err == nil {
			members[name] = append(members[name], string(vm.Name))
		}
	}
	out := &ferryv1.ListPoliciesResponse{}
	for _, p := range pols {
		out.Policies = append(out.Policies, PolicyProto(p, members[p.Name]))
	}
	return out, nil
}

func (r *recovery) PutPolicy(ctx context.Context, req *ferryv1.Policy) (*ferryv1.Policy, error) {
	p := PolicyFromProto(req)
	if err := r.s.PutPolicy(ctx, p); err != nil {
		return nil, toStatus(err)
	}
	return PolicyProto(p, nil), nil
}

func (r *recovery) AttachPolicy(ctx context.Context, req *ferryv1.AttachPolicyRequest) (*ferryv1.AttachPolicyResponse, error) {
	if err := r.s.AttachPolicy(ctx, req.GetVm(), req.GetPolicy()); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.AttachPolicyResponse{}, nil
}
