package processserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/pkg/proc"
)

// PlanActionRunner runs a plan's command actions.
type PlanActionRunner interface {
	// Run runs action a before or after group (1-based) of plan during op;
	// it returns what the step report shows.
	Run(ctx context.Context, plan string, group int, op string, a plan.Action) (string, error)
}

// ShellActions runs each action's command with /bin/sh as an unprivileged
// user, in its own process group, in / with a clean environment (PATH,
// HOME=/, Env, and FERRY_PLAN, FERRY_GROUP, FERRY_OPERATION); a non-zero
// exit fails the plan. At the timeout, and when the shell ends, whatever
// is left of the group is killed. The output goes to the process server's
// log only: job reports, which every operator reads, show its size.
type ShellActions struct {
	Timeout time.Duration
	// User is who actions run as; nil: the server's own user.
	User *syscall.Credential
	// UserName names User in messages.
	UserName string
	Env      []string
	Log      *slog.Logger
}

// actionOutputMax bounds the output kept for the server's log.
const actionOutputMax = 8 << 10

// Run implements PlanActionRunner.
func (r ShellActions) Run(ctx context.Context, plan string, group int, op string, a plan.Action) (string, error) {
	if r.User != nil && os.Getuid() != 0 && int(r.User.Uid) != os.Getuid() {
		return "", fmt.Errorf("action %q: the process server runs as uid %d and cannot run actions as %s (uid %d): start it as root, or choose the actions' user with --plan-action-user",
			a.Name, os.Getuid(), r.UserName, r.User.Uid)
	}
	env := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "LANG=C.UTF-8"}, r.Env...)
	env = append(env, "FERRY_PLAN="+plan, "FERRY_GROUP="+strconv.Itoa(group), "FERRY_OPERATION="+op)
	res, err := proc.Run(ctx, proc.Command{What: fmt.Sprintf("action %q", a.Name), Shell: a.Command, Dir: "/", Env: env, Credential: r.User,
		Timeout: r.Timeout, OutputMax: actionOutputMax})
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	log.Info("plan action ended", "plan", plan, "group", group, "action", a.Name, "err", err, "output_bytes", res.OutputBytes, "output", res.Output)
	detail := fmt.Sprintf("%d bytes of output (in the process server's log)", res.OutputBytes)
	// The output stays in the log, not in the job.
	var pe *proc.Error
	if errors.As(err, &pe) && !pe.TimedOut {
		return detail, fmt.Errorf("action %q: %w", a.Name, pe.Err)
	}
	return detail, err
}

// Plan operations.
const (
	PlanTestFailover      = ActionTestFailover
	PlanPlannedFailover   = ActionPlannedFailover
	PlanUnplannedFailover = ActionUnplannedFailover
	PlanChangePoint       = ActionChangePoint
	PlanCommit            = ActionCommit
	PlanCleanupTest       = ActionCleanupTest
	PlanReprotect         = ActionReprotect
	PlanFailback          = ActionFailback
)

// planPoints are the point options a plan accepts; a custom point ID is
// refused (points are per VM; a plan spans VMs).
var planPoints = []string{ferry.PointLatest, ferry.PointLatestProcessed, ferry.PointLatestApp, ferry.PointLatestMultiVMProcessed, ferry.PointLatestMultiVMApp}

// Plans returns every recovery plan, by name.
func (s *Server) Plans() ([]plan.Plan, error) { return listNamed[plan.Plan](s.ctl, bucketPlans) }

// Plan returns the recovery plan of that name.
func (s *Server) Plan(name string) (plan.Plan, error) {
	return getNamed[plan.Plan](s.ctl, bucketPlans, "recovery plan", name)
}

// PutPlan creates or changes a recovery plan; its VMs must replicate to
// this server. A plan with command actions, or replacing one, needs an
// admin: its commands run on the process server.
func (s *Server) PutPlan(ctx context.Context, p plan.Plan) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	by, err := s.caller(ctx)
	if err != nil {
		return err
	}
	old, err := s.Plan(p.Name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if p.HasCommands() || old.HasCommands() {
		if err := s.requireAdmin(ctx, "a recovery plan with command actions"); err != nil {
			return err
		}
	}
	p.UploadedBy, p.Uploaded = by, s.clock.Now()
	for _, vm := range p.VMs() {
		if _, err := s.j.VM(ctx, ferry.VMID(vm)); err != nil {
			return fmt.Errorf("%w: plan %s: %w", ErrInvalidRequest, p.Name, err)
		}
	}
	return putNamed(s.ctl, bucketPlans, p.Name, p)
}

// DeletePlan removes a recovery plan (one with command actions only for
// an admin).
func (s *Server) DeletePlan(ctx context.Context, name string) error {
	p, err := s.Plan(name)
	if err != nil {
		return err
	}
	if p.HasCommands() {
		if err := s.requireAdmin(ctx, "a recovery plan with command actions"); err != nil {
			return err
		}
	}
	s.planMu.Lock()
	_, running := s.planResume[name]
	s.planMu.Unlock()
	if running {
		return fmt.Errorf("%w: plan %s has a job running", ErrState, name)
	}
	return s.ctl.deleteNamed(bucketPlans, name)
}

// PlanRequest asks for an operation on every VM of a plan.
type PlanRequest struct {
	Plan      string
	Operation string
	// Point: one of planPoints (failover and change point).
	Point    string
	Network  string
	Shutdown bool
	// Location of a reprotect: original (default) or alternate.
	Location ferry.Location
	// Sync of a failback: before (default) or during.
	Sync ferry.SyncMode
}

// RunPlan checks the request and starts the plan's job; it returns the job
// while it runs (Wait follows it). Groups run in order, the VMs of a group
// in parallel; pre and post actions run in order around each group of a
// failover; a manual action makes the job wait until ResumePlan.
func (s *Server) RunPlan(ctx context.Context, req PlanRequest) (*Job, error) {
	p, err := s.Plan(req.Plan)
	if err != nil {
		return nil, err
	}
	switch req.Operation {
	case PlanTestFailover, PlanPlannedFailover, PlanUnplannedFailover, PlanChangePoint:
		if req.Point == "" {
			req.Point = ferry.PointLatest
			if req.Operation == PlanChangePoint {
				req.Point = ferry.PointLatestProcessed
			}
		}
		if !slices.Contains(planPoints, req.Point) {
			return nil, fmt.Errorf("%w: plan %s: point %q: a plan takes %s; a custom point is chosen per VM, not for a plan",
				ErrInvalidRequest, p.Name, req.Point, strings.Join(planPoints, ", "))
		}
		if req.Operation == PlanPlannedFailover && req.Point != ferry.PointLatest {
			return nil, fmt.Errorf("%w: plan %s: a planned failover always uses each VM's final point after shutdown, not %q", ErrInvalidRequest, p.Name, req.Point)
		}
	case PlanCommit, PlanCleanupTest:
	case PlanReprotect:
		if req.Location == "" {
			req.Location = ferry.LocationOriginal
		}
		if !req.Location.Valid() {
			return nil, fmt.Errorf("%w: plan %s: location %q: want original or alternate", ErrInvalidRequest, p.Name, req.Location)
		}
	case PlanFailback:
		if req.Point == "" {
			req.Point = ferry.PointLatest
		}
		if req.Sync != "" && !req.Sync.Valid() {
			return nil, fmt.Errorf("%w: plan %s: sync %q: want before or during", ErrInvalidRequest, p.Name, req.Sync)
		}
		if req.Point != ferry.PointLatest && req.Point != ferry.PointLatestApp {
			return nil, fmt.Errorf("%w: plan %s: point %q: a failback takes latest or latest-app", ErrInvalidRequest, p.Name, req.Point)
		}
		if err := s.checkGroupsTogether(p); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: plan operation %q: want test-failover, planned-failover, unplanned-failover, change-point, commit, cleanup-test, reprotect or failback", ErrInvalidRequest, req.Operation)
	}
	// Every VM must allow the operation before anything starts.
	for _, vm := range p.VMs() {
		st, _, err := s.vmState(ctx, vm)
		if err != nil {
			return nil, err
		}
		if err := st.require(req.Operation); err != nil {
			return nil, fmt.Errorf("plan %s: %w", p.Name, err)
		}
		if err := s.hasPoint(ctx, vm, req.Operation); err != nil {
			return nil, fmt.Errorf("plan %s: %w", p.Name, err)
		}
	}
	s.planMu.Lock()
	if _, busy := s.planResume[p.Name]; busy {
		s.planMu.Unlock()
		return nil, fmt.Errorf("%w: plan %s already has a job running", ErrState, p.Name)
	}
	resume := make(chan string, 1)
	s.planResume[p.Name] = resume
	s.planMu.Unlock()
	by, err := s.caller(ctx)
	var run *jobRun
	if err == nil {
		run, err = s.newJob(ctx, "plan-"+req.Operation, "plan/"+p.Name)
	}
	if err != nil {
		s.planMu.Lock()
		delete(s.planResume, p.Name)
		s.planMu.Unlock()
		return nil, err
	}
	run.job.By = by
	s.log.Info("plan run", "plan", p.Name, "operation", req.Operation, "by", by, "uploaded_by", p.UploadedBy)
	snapshot := *run.job
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.runPlan(s.bg, run, p, req, resume)
		s.planMu.Lock()
		delete(s.planResume, p.Name)
		s.planMu.Unlock()
		run.finish(err)
	}()
	return &snapshot, nil
}

// ResumePlan lets a plan waiting on a manual action go on.
func (s *Server) ResumePlan(ctx context.Context, name string) (*Job, error) {
	if _, err := s.Plan(name); err != nil {
		return nil, err
	}
	jobs, err := s.ctl.jobs("plan/" + name)
	if err != nil {
		return nil, err
	}
	if len(jobs) == 0 || jobs[len(jobs)-1].Waiting == "" {
		return nil, fmt.Errorf("%w: plan %s is not waiting for a manual action", ErrState, name)
	}
	s.planMu.Lock()
	ch := s.planResume[name]
	s.planMu.Unlock()
	if ch == nil {
		return nil, fmt.Errorf("%w: plan %s has no job running", ErrState, name)
	}
	by, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	select {
	case ch <- by:
	default:
	}
	// Answer once the job has left the manual step.
	waiting := jobs[len(jobs)-1]
	for {
		moved := s.ctl.jobsMoved()
		j, err := s.ctl.job(waiting.ID)
		if err != nil || j.Outcome != ferry.OutcomeRunning || j.Waiting != waiting.Waiting {
			return &j, err
		}
		select {
		case <-ctx.Done():
			return &j, ctx.Err()
		case <-moved:
		}
	}
}

func (s *Server) runPlan(ctx context.Context, run *jobRun, p plan.Plan, req PlanRequest, resume chan string) error {
	points := map[string]string{}
	switch req.Operation {
	case PlanCommit, PlanCleanupTest, PlanReprotect, PlanFailback:
	default:
		if err := run.step("select recovery points", func() (string, error) {
			var err error
			points, err = s.planPoints(ctx, p, req.Point)
			if err != nil {
				return "", err
			}
			var parts []string
			for _, vm := range p.VMs() {
				parts = append(parts, vm+": "+points[vm])
			}
			return strings.Join(parts, ", "), nil
		}); err != nil {
			return err
		}
	}
	// Actions and manual steps run around the groups of whatever moves
	// VMs between the sites: failovers, reprotect and failback.
	actions := req.Operation != PlanCommit && req.Operation != PlanCleanupTest && req.Operation != PlanChangePoint
	for gi, g := range p.Groups {
		n := gi + 1
		if actions {
			for _, a := range g.Pre {
				if err := s.planAction(ctx, run, p, n, "pre", req.Operation, a, resume); err != nil {
					return err
				}
			}
		}
		if err := run.step(stepf("group %d: %s %s", n, req.Operation, strings.Join(g.VMs, ", ")), func() (string, error) {
			return s.planGroup(ctx, run, g, req, points)
		}); err != nil {
			return fmt.Errorf("%w: plan %s stopped at group %d: %w", ErrFailover, p.Name, n, err)
		}
		if actions {
			for _, a := range g.Post {
				if err := s.planAction(ctx, run, p, n, "post", req.Operation, a, resume); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// checkGroupsTogether refuses a failback plan that splits a replication
// group across plan groups or leaves a member out: a group's members fail
// back together, to their common point.
func (s *Server) checkGroupsTogether(p plan.Plan) error {
	in := map[string]int{} // VM -> plan group
	for gi, g := range p.Groups {
		for _, vm := range g.VMs {
			in[vm] = gi + 1
		}
	}
	for gi, g := range p.Groups {
		for _, vm := range g.VMs {
			rg, ok, err := s.groupOf(vm)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			for _, m := range rg.VMs {
				if in[m] != gi+1 {
					where := "is not in the plan"
					if in[m] > 0 {
						where = stepf("is in plan group %d", in[m])
					}
					return fmt.Errorf("%w: plan %s: replication group %s fails back together to its common point, but %s is in plan group %d and %s %s",
						ErrInvalidRequest, p.Name, rg.Name, vm, gi+1, m, where)
				}
			}
		}
	}
	return nil
}

// hasPoint checks that vm has the recovery point the operation needs: a
// failover one at this process server, a failback one at the master
// target.
func (s *Server) hasPoint(ctx context.Context, vm, op string) error {
	switch op {
	case PlanTestFailover, PlanPlannedFailover, PlanUnplannedFailover:
		v, err := s.j.VM(ctx, ferry.VMID(vm))
		if err != nil {
			return err
		}
		if v.Points == 0 {
			return fmt.Errorf("%w: vm %s has no recovery point yet", ErrState, vm)
		}
	case PlanFailback:
		if s.mt == nil {
			return ErrNoMasterTarget
		}
		rs, err := s.mt.reprotectStatus(ctx, vm)
		if err != nil {
			return err
		}
		if rs.Points == 0 && !rs.SyncDuring {
			return fmt.Errorf("%w: vm %s has no recovery point at the master target yet: reverse replication has not produced one", ErrState, vm)
		}
	}
	return nil
}

// planPoints resolves a plan's point option for each VM: VMs of a
// replication group take the group's common point for the multi-VM
// options, the others their own latest processed (or app-consistent).
func (s *Server) planPoints(ctx context.Context, p plan.Plan, opt string) (map[string]string, error) {
	out := map[string]string{}
	for _, vm := range p.VMs() {
		out[vm] = opt
	}
	if opt != ferry.PointLatestMultiVMProcessed && opt != ferry.PointLatestMultiVMApp {
		return out, nil
	}
	app := opt == ferry.PointLatestMultiVMApp
	done, groupDone := map[string]bool{}, map[string]bool{}
	for _, vm := range p.VMs() {
		if done[vm] {
			continue // took its group's common point
		}
		out[vm] = ferry.PointLatestProcessed
		if app {
			out[vm] = ferry.PointLatestApp
		}
		g, ok, err := s.groupOf(vm)
		if err != nil {
			return nil, err
		}
		if !ok || groupDone[g.Name] {
			continue
		}
		groupDone[g.Name] = true
		common, err := s.commonPoints(ctx, g, app)
		if err != nil {
			return nil, err
		}
		for m, pt := range common {
			if slices.Contains(p.VMs(), m) {
				out[m] = strconv.FormatUint(uint64(pt.ID), 10)
				done[m] = true
			}
		}
	}
	return out, nil
}

// planGroup runs the operation on the group's VMs in parallel. A failback
// runs the members of a replication group together, to their common point.
func (s *Server) planGroup(ctx context.Context, run *jobRun, g plan.Group, req PlanRequest, points map[string]string) (string, error) {
	if req.Sync == "" {
		req.Sync = g.FailbackSync
	}
	jobs := make([]*Job, len(g.VMs))
	errs := make([]error, len(g.VMs))
	// On a simulated clock every VM (or replication group failing back
	// together) runs on a timeline of its own, so that what one is charged
	// does not show in another's times; the plan goes on after the longest.
	var tlMu sync.Mutex
	var longest time.Duration
	own := func(ctx context.Context) (context.Context, func()) {
		vctx, tl := clock.WithTimeline(ctx, s.clock)
		return vctx, func() {
			if tl != nil {
				tlMu.Lock()
				longest = max(longest, tl.Elapsed())
				tlMu.Unlock()
			}
		}
	}
	defer func() {
		if a, ok := clock.From(ctx, s.clock).(clock.Advancer); ok && longest > 0 {
			a.Advance(longest)
		}
	}()
	together := map[string][]int{} // replication group -> indices into g.VMs
	var order []string
	grouped := map[int]bool{}
	if req.Operation == PlanFailback {
		for i, vm := range g.VMs {
			rg, ok, err := s.groupOf(vm)
			if err != nil {
				return "", err
			}
			if ok {
				if together[rg.Name] == nil {
					order = append(order, rg.Name)
				}
				together[rg.Name] = append(together[rg.Name], i)
				grouped[i] = true
			}
		}
	}
	var counts []int
	var tasks []func(context.Context)
	for _, name := range order {
		idx := together[name]
		counts = append(counts, len(idx))
		tasks = append(tasks, func(ctx context.Context) {
			ctx, done := own(ctx)
			defer done()
			var vms []string
			for _, k := range idx {
				vms = append(vms, g.VMs[k])
			}
			js, es := s.failback(ctx, name, vms, req.Sync, req.Point)
			for n, k := range idx {
				jobs[k], errs[k] = js[n], es[n]
			}
		})
	}
	for i, vm := range g.VMs {
		if grouped[i] {
			continue
		}
		counts = append(counts, 1)
		tasks = append(tasks, func(ctx context.Context) {
			ctx, done := own(ctx)
			defer done()
			switch req.Operation {
			case PlanTestFailover, PlanPlannedFailover, PlanUnplannedFailover:
				typ := map[string]string{PlanTestFailover: FailoverTest, PlanPlannedFailover: FailoverPlanned, PlanUnplannedFailover: FailoverUnplanned}[req.Operation]
				network := req.Network
				if typ == FailoverTest && network == "" {
					network = "test-" + vm
				}
				jobs[i], errs[i] = s.Failover(ctx, FailoverRequest{VM: vm, Type: typ, Point: points[vm], Network: network, Shutdown: req.Shutdown})
			case PlanChangePoint:
				jobs[i], errs[i] = s.ChangePoint(ctx, vm, points[vm])
			case PlanCommit:
				jobs[i], errs[i] = s.Commit(ctx, vm)
			case PlanCleanupTest:
				jobs[i], errs[i] = s.CleanupTest(ctx, vm)
			case PlanReprotect:
				jobs[i], errs[i] = s.Reprotect(ctx, vm, req.Location, req.Sync)
			case PlanFailback:
				jobs[i], errs[i] = s.Failback(ctx, vm, req.Sync, req.Point)
			}
		})
	}
	inOrder(ctx, counts, tasks)
	var parts []string
	var failed []error
	for i, vm := range g.VMs {
		part := vm + ": "
		if jobs[i] != nil {
			run.job.Children = append(run.job.Children, jobs[i].ID)
			part += stepf("job %d %s", jobs[i].ID, jobs[i].Outcome)
			if jobs[i].Point != nil {
				part += stepf(", point %d (%s)", jobs[i].Point.ID, jobs[i].Point.Consistency)
			}
		}
		if errs[i] != nil {
			failed = append(failed, fmt.Errorf("vm %s: %w", vm, errs[i]))
			part += stepf(" (%v)", errs[i])
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, "; "), errors.Join(failed...)
}

// planAction runs one pre or post action; a manual one waits for
// ResumePlan.
func (s *Server) planAction(ctx context.Context, run *jobRun, p plan.Plan, group int, when, op string, a plan.Action, resume chan string) error {
	name := stepf("group %d %s: %s", group, when, a.Name)
	if !a.Manual {
		return run.step(name, func() (string, error) { return s.cfg.PlanActions.Run(ctx, p.Name, group, op, a) })
	}
	return run.step(name+" (manual)", func() (string, error) {
		run.job.Waiting = stepf("%s; when done, run: ferryctl plan resume %s", name, p.Name)
		if err := s.ctl.putJob(run.job); err != nil {
			return "", err
		}
		s.log.Info("plan waits for an operator", "plan", p.Name, "action", a.Name)
		defer func() { run.job.Waiting = "" }()
		select {
		case by := <-resume:
			s.log.Info("plan resumed", "plan", p.Name, "action", a.Name, "by", by)
			return "resumed by " + by, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
}
