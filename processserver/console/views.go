package console

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/group"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/processserver"
)

// itemRow is one VM of the replicated items.
type itemRow struct {
	Name, Health, Reason, State string
	// RPO against the policy's threshold; HasRPO: the VM has a point.
	RPO, Threshold time.Duration
	HasRPO, Over   bool
	// Newest crash- and app-consistent points (zero: none).
	Crash, App time.Time
	Connected  bool
	Version    string
	Policy     string
	Group      string
	// Progress of an initial replication or resync (empty: none).
	Progress string
}

// healthRank orders health from worst to best.
var healthRank = map[string]int{"critical": 0, "warning": 1, "healthy": 2, "none": 3}

// itemColumns are the sortable columns of the replicated items.
var itemColumns = []struct{ Key, Label string }{
	{"name", "VM"}, {"health", "Health"}, {"state", "State"}, {"rpo", "RPO / threshold"}, {"crash", "Newest crash point"},
	{"app", "Newest app point"}, {"agent", "Agent"}, {"policy", "Policy"}, {"group", "Group"},
}

// itemQuery is how the replicated items are filtered and sorted.
type itemQuery struct {
	Q, Sort string
	Desc    bool
}

func queryOf(r *http.Request) itemQuery {
	q := itemQuery{Q: strings.TrimSpace(r.URL.Query().Get("q")), Sort: r.URL.Query().Get("sort"), Desc: r.URL.Query().Get("desc") == "1"}
	if !slices.ContainsFunc(itemColumns, func(c struct{ Key, Label string }) bool { return c.Key == q.Sort }) {
		q.Sort = "health"
	}
	return q
}

// Encode is the query string of q, as the live stream and links take it.
func (q itemQuery) Encode() string {
	v := url.Values{"sort": {q.Sort}}
	if q.Q != "" {
		v.Set("q", q.Q)
	}
	if q.Desc {
		v.Set("desc", "1")
	}
	return v.Encode()
}

// header is a column heading: its link sorts by it (again: the other way).
type header struct {
	Label, Href, Sort string // Sort: ascending, descending or none (aria-sort)
}

func (q itemQuery) headers() []header {
	var out []header
	for _, col := range itemColumns {
		n := itemQuery{Q: q.Q, Sort: col.Key}
		h := header{Label: col.Label, Sort: "none"}
		if col.Key == q.Sort {
			n.Desc = !q.Desc
			h.Sort = "ascending"
			if q.Desc {
				h.Sort = "descending"
			}
		}
		h.Href = "/?" + n.Encode()
		out = append(out, h)
	}
	return out
}

// items gathers the replicated items, filtered and sorted by q.
func (c *Console) itemRows(ctx context.Context, q itemQuery) ([]itemRow, error) {
	sts, err := c.s.Status(ctx, "")
	if err != nil {
		return nil, err
	}
	groupOf, err := c.groupOf()
	if err != nil {
		return nil, err
	}
	var rows []itemRow
	for _, st := range sts {
		row := itemRow{Name: st.Name, Health: string(st.Health), Reason: st.Reason, State: string(st.State), RPO: st.RPO,
			Threshold: st.Threshold, HasRPO: !st.VM.LatestPoint.IsZero(), Over: st.RPOAlert, Connected: st.Link.Connected,
			Version: st.Link.Version, Group: groupOf[st.Name]}
		if pol, err := c.s.PolicyFor(st.Name); err == nil {
			row.Policy = pol.Name
		}
		if st.Copies {
			row.Progress = progressText(st)
		}
		pts, err := c.s.Journal().Points(ctx, ferry.VMID(st.Name))
		if err != nil {
			return nil, err
		}
		for i := len(pts) - 1; i >= 0 && (row.Crash.IsZero() || row.App.IsZero()); i-- {
			if pts[i].Consistency == ferry.App && row.App.IsZero() {
				row.App = pts[i].Time
			}
			if row.Crash.IsZero() {
				row.Crash = pts[i].Time // an app-consistent point is crash-consistent too
			}
		}
		if q.Q == "" || matches(row, q.Q) {
			rows = append(rows, row)
		}
	}
	sortItems(rows, q)
	return rows, nil
}

// matches reports whether a row holds the filter text (any case) in its
// name, health, state, policy, group or agent version.
func matches(r itemRow, text string) bool {
	text = strings.ToLower(text)
	for _, f := range []string{r.Name, r.Health, r.Reason, r.State, r.Policy, r.Group, r.Version} {
		if strings.Contains(strings.ToLower(f), text) {
			return true
		}
	}
	return false
}

// sortItems orders rows by q's column (the name breaking ties).
func sortItems(rows []itemRow, q itemQuery) {
	key := func(a, b itemRow) int {
		switch q.Sort {
		case "name":
			return cmp.Compare(a.Name, b.Name)
		case "health":
			return cmp.Compare(healthRank[a.Health], healthRank[b.Health])
		case "state":
			return cmp.Compare(a.State, b.State)
		case "rpo":
			// No point yet is the longest RPO.
			return cmp.Or(boolCmp(!a.HasRPO, !b.HasRPO), cmp.Compare(a.RPO, b.RPO))
		case "crash":
			return a.Crash.Compare(b.Crash)
		case "app":
			return a.App.Compare(b.App)
		case "agent":
			return cmp.Or(boolCmp(a.Connected, b.Connected), cmp.Compare(a.Version, b.Version))
		case "policy":
			return cmp.Compare(a.Policy, b.Policy)
		case "group":
			return cmp.Compare(a.Group, b.Group)
		}
		return 0
	}
	slices.SortStableFunc(rows, func(a, b itemRow) int {
		k := key(a, b)
		if q.Desc {
			k = -k
		}
		return cmp.Or(k, cmp.Compare(a.Name, b.Name))
	})
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// progressText says how far a copy is.
func progressText(st processserver.VMStatus) string {
	s := fmt.Sprintf("%.0f%%", st.Copy.Progress*100)
	if st.Copy.Rate > 0 {
		s += " at " + bytesText(uint64(st.Copy.Rate)) + "/s"
	}
	if st.Copy.Left > 0 {
		s += ", " + durText(st.Copy.Left) + " left"
	}
	return s
}

// groupOf maps each grouped VM to its replication group.
func (c *Console) groupOf() (map[string]string, error) {
	groups, err := c.s.Groups()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, g := range groups {
		for _, vm := range g.VMs {
			out[vm] = g.Name
		}
	}
	return out, nil
}

type itemsData struct {
	Query   itemQuery
	Headers []header
	Rows    []itemRow
	Now     time.Time
}

func (c *Console) itemsData(ctx context.Context, q itemQuery) (*itemsData, error) {
	rows, err := c.itemRows(ctx, q)
	if err != nil {
		return nil, err
	}
	return &itemsData{Query: q, Headers: q.headers(), Rows: rows, Now: c.s.Now()}, nil
}

func (c *Console) items(w http.ResponseWriter, r *http.Request, se session) {
	d, err := c.itemsData(r.Context(), queryOf(r))
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Replicated items", err)
		return
	}
	c.render(w, r, http.StatusOK, "items", &se, &view{Title: "Replicated items", Nav: "items", Data: d})
}

// pointRow is one recovery point of a VM.
type pointRow struct {
	ID          ferry.Seq
	Time        time.Time
	Consistency string
	Tag         string
	// Joined are the group's other VMs that have a point of the same
	// multi-VM marker ("db-1 #120").
	Joined []string
}

// vmData is a VM's page.
type vmData struct {
	Status   processserver.VMStatus
	Policy   string
	Group    string
	Timeline timeline
	Windows  []windowLink
	Points   []pointRow
	More     int // points not listed
	Events   []processserver.Event
	Jobs     []processserver.Job
	Now      time.Time
}

// windowLink is a choice of the timeline's span.
type windowLink struct {
	Label, Href string
	Current     bool
}

// pointsListed bounds the points a VM's page lists (the timeline shows all).
const pointsListed = 200

func (c *Console) vmData(ctx context.Context, name string, window string) (*vmData, error) {
	sts, err := c.s.Status(ctx, name)
	if err != nil {
		return nil, err
	}
	d := &vmData{Status: sts[0], Now: c.s.Now()}
	retention := 24 * time.Hour
	if pol, err := c.s.PolicyFor(name); err == nil {
		d.Policy, retention = pol.Name, pol.Retention
	}
	groupOf, err := c.groupOf()
	if err != nil {
		return nil, err
	}
	d.Group = groupOf[name]
	pts, err := c.s.Journal().Points(ctx, ferry.VMID(name))
	if err != nil {
		return nil, err
	}
	joined, err := c.joined(ctx, name, d.Group)
	if err != nil {
		return nil, err
	}
	rows := make([]pointRow, len(pts))
	for i, p := range pts {
		rows[i] = pointRow{ID: p.ID, Time: p.Time, Consistency: p.Consistency.String(), Tag: p.Tag}
		if p.Tag != "" {
			rows[i].Joined = joined[p.Tag]
		}
	}
	ws := windows(retention)
	chosen := ws[0] // the retention window, unless another is asked for
	for _, w := range ws {
		if w.key == window {
			chosen = w
		}
	}
	for _, w := range ws {
		d.Windows = append(d.Windows, windowLink{Label: w.label, Href: "?window=" + w.key, Current: w == chosen})
	}
	span := chosen.span
	d.Timeline = buildTimeline(rows, d.Now.Add(-span), d.Now, timelineWidth)
	slices.Reverse(rows)
	if len(rows) > pointsListed {
		d.More, rows = len(rows)-pointsListed, rows[:pointsListed]
	}
	d.Points = rows
	evs, err := c.s.Events(ctx, name)
	if err != nil {
		return nil, err
	}
	d.Events = newest(evs, 20)
	jobs, err := c.s.Jobs(ctx, name)
	if err != nil {
		return nil, err
	}
	d.Jobs = newest(jobs, 10)
	return d, nil
}

// newest returns the last n of xs, newest first.
func newest[T any](xs []T, n int) []T {
	out := slices.Clone(xs[max(0, len(xs)-n):])
	slices.Reverse(out)
	return out
}

type window struct {
	key, label string
	span       time.Duration
}

// windows are the timeline's spans: the retention window and closer looks.
func windows(retention time.Duration) []window {
	out := []window{{"retention", "Retention (" + durText(retention) + ")", retention}}
	for _, w := range []window{{"6h", "6 hours", 6 * time.Hour}, {"1h", "1 hour", time.Hour}, {"10m", "10 minutes", 10 * time.Minute}} {
		if w.span < retention {
			out = append(out, w)
		}
	}
	return out
}

// joined maps each multi-VM marker's tag (the group's own, not a tag the
// agents give every VM alike) to the points the group's other VMs have of
// it.
func (c *Console) joined(ctx context.Context, vm, groupName string) (map[string][]string, error) {
	out := map[string][]string{}
	if groupName == "" {
		return out, nil
	}
	g, err := c.s.Group(groupName)
	if err != nil {
		return nil, err
	}
	for _, m := range g.VMs {
		if m == vm {
			continue
		}
		pts, err := c.s.Journal().Points(ctx, ferry.VMID(m))
		if err != nil {
			continue // a member that has not connected yet
		}
		for _, p := range pts {
			if _, ok := group.TagSeq(p.Tag, g.Name); ok {
				out[p.Tag] = append(out[p.Tag], fmt.Sprintf("%s #%d", m, p.ID))
			}
		}
	}
	return out, nil
}

func (c *Console) vm(w http.ResponseWriter, r *http.Request, se session) {
	d, err := c.vmData(r.Context(), r.PathValue("name"), r.URL.Query().Get("window"))
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "VM "+r.PathValue("name"), err)
		return
	}
	c.render(w, r, http.StatusOK, "vm", &se, &view{Title: "VM " + d.Status.Name, Nav: "items", Data: d})
}

// jobsListed bounds the jobs page.
const jobsListed = 200

func (c *Console) jobs(w http.ResponseWriter, r *http.Request, se session) {
	jobs, err := c.s.Jobs(r.Context(), "")
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Jobs", err)
		return
	}
	c.render(w, r, http.StatusOK, "jobs", &se, &view{Title: "Jobs", Nav: "jobs", Data: newest(jobs, jobsListed)})
}

// jobData is a job's page.
type jobData struct {
	Job processserver.Job
	// Plan is the plan of a plan job (empty for a VM's).
	Plan string
	// Console is the tail of the machine's boot console.
	Console string
	Running bool
}

// consoleLines bounds the boot console tail shown.
const consoleLines = 60

func (c *Console) jobData(ctx context.Context, idText string) (*jobData, error) {
	id, err := strconv.ParseUint(idText, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: job %q: want a number", processserver.ErrInvalidRequest, idText)
	}
	j, err := c.s.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	d := &jobData{Job: j, Running: j.Outcome == ferry.OutcomeRunning, Console: tail(j.Console, consoleLines)}
	d.Plan, _ = strings.CutPrefix(j.VM, "plan/")
	if d.Plan == j.VM {
		d.Plan = ""
	}
	return d, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (c *Console) job(w http.ResponseWriter, r *http.Request, se session) {
	d, err := c.jobData(r.Context(), r.PathValue("id"))
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Job "+r.PathValue("id"), err)
		return
	}
	c.render(w, r, http.StatusOK, "job", &se, &view{Title: fmt.Sprintf("Job %d", d.Job.ID), Nav: "jobs", Data: d})
}

// planRow is a recovery plan with its last run.
type planRow struct {
	Plan plan.Plan
	Last *processserver.Job
}

func (c *Console) plans(w http.ResponseWriter, r *http.Request, se session) {
	ps, err := c.s.Plans()
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Recovery plans", err)
		return
	}
	var rows []planRow
	for _, p := range ps {
		row := planRow{Plan: p}
		jobs, err := c.s.Jobs(r.Context(), "plan/"+p.Name)
		if err != nil {
			c.fail(w, r, &se, statusOf(err), "Recovery plans", err)
			return
		}
		if len(jobs) > 0 {
			row.Last = &jobs[len(jobs)-1]
		}
		rows = append(rows, row)
	}
	c.render(w, r, http.StatusOK, "plans", &se, &view{Title: "Recovery plans", Nav: "plans", Data: rows})
}

// drill is a test failover, as a drill report: the recovery point's age
// when it started (RPO), how long until the machine was ready (RTO) and
// what the readiness checks found.
type drill struct {
	Job                     processserver.Job
	RPO, RTO                time.Duration
	HasRPO                  bool
	Passed, Failed, Unknown int
}

// drillsListed bounds the drills page.
const drillsListed = 30

// drillsOf picks the test failovers of jobs (oldest first) that ended,
// newest n: a VM's, or a plan's with the VMs it ran as one drill (its RPO
// the oldest of their points').
func drillsOf(jobs []processserver.Job, n int) []drill {
	byID := map[uint64]processserver.Job{}
	inPlan := map[uint64]bool{}
	for _, j := range jobs {
		byID[j.ID] = j
		for _, c := range j.Children {
			inPlan[c] = true
		}
	}
	rpo := func(j processserver.Job) (time.Duration, bool) {
		if j.Point == nil {
			return 0, false
		}
		return max(0, j.Start.Sub(j.Point.Time)), true
	}
	var out []drill
	for _, j := range jobs {
		plan := j.Type == "plan-"+processserver.PlanTestFailover
		if (j.Type != processserver.ActionTestFailover && !plan) || inPlan[j.ID] || j.Outcome == ferry.OutcomeRunning {
			continue
		}
		d := drill{Job: j, RTO: j.End.Sub(j.Start)}
		d.RPO, d.HasRPO = rpo(j)
		findings := j.Findings
		for _, id := range j.Children {
			c := byID[id]
			if r, ok := rpo(c); ok {
				d.RPO, d.HasRPO = max(d.RPO, r), true
			}
			findings = append(findings, c.Findings...)
		}
		for _, f := range findings {
			switch {
			case f.Unknown:
				d.Unknown++
			case f.OK:
				d.Passed++
			default:
				d.Failed++
			}
		}
		out = append(out, d)
	}
	return out[max(0, len(out)-n):]
}

type drillsData struct {
	Drills []drill // newest first
	Chart  chart
}

func (c *Console) drills(w http.ResponseWriter, r *http.Request, se session) {
	jobs, err := c.s.Jobs(r.Context(), "")
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Drills", err)
		return
	}
	ds := drillsOf(jobs, drillsListed)
	d := &drillsData{Chart: drillChart(ds)}
	d.Drills = newest(ds, len(ds))
	c.render(w, r, http.StatusOK, "drills", &se, &view{Title: "Drills", Nav: "drills", Data: d})
}

// testFailoverData is the confirmation page of a test failover.
type testFailoverData struct {
	Status  processserver.VMStatus
	Allowed bool
	Points  []pointRow // newest first
	Network string
}

func (c *Console) confirmTestFailover(w http.ResponseWriter, r *http.Request, se session) {
	name := r.PathValue("name")
	sts, err := c.s.Status(r.Context(), name)
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Test failover", err)
		return
	}
	pts, err := c.s.Journal().Points(r.Context(), ferry.VMID(name))
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Test failover", err)
		return
	}
	d := &testFailoverData{Status: sts[0], Allowed: slices.Contains(sts[0].Allowed, processserver.ActionTestFailover), Network: "test-" + name}
	for _, p := range newest(pts, 50) {
		d.Points = append(d.Points, pointRow{ID: p.ID, Time: p.Time, Consistency: p.Consistency.String(), Tag: p.Tag})
	}
	c.render(w, r, http.StatusOK, "confirm-test-failover", &se, &view{Title: "Test failover of " + name, Nav: "items", Data: d})
}

func (c *Console) confirmCleanup(w http.ResponseWriter, r *http.Request, se session) {
	name := r.PathValue("name")
	sts, err := c.s.Status(r.Context(), name)
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Clean up test failover", err)
		return
	}
	d := struct {
		Status  processserver.VMStatus
		Allowed bool
	}{sts[0], slices.Contains(sts[0].Allowed, processserver.ActionCleanupTest)}
	c.render(w, r, http.StatusOK, "confirm-cleanup", &se, &view{Title: "Clean up the test failover of " + name, Nav: "items", Data: d})
}

func (c *Console) confirmResume(w http.ResponseWriter, r *http.Request, se session) {
	name := r.PathValue("name")
	p, err := c.s.Plan(name)
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Resume plan", err)
		return
	}
	jobs, err := c.s.Jobs(r.Context(), "plan/"+name)
	if err != nil {
		c.fail(w, r, &se, statusOf(err), "Resume plan", err)
		return
	}
	d := struct {
		Plan plan.Plan
		Job  *processserver.Job
	}{Plan: p}
	if len(jobs) > 0 && jobs[len(jobs)-1].Waiting != "" {
		d.Job = &jobs[len(jobs)-1]
	}
	c.render(w, r, http.StatusOK, "confirm-resume", &se, &view{Title: "Resume plan " + name, Nav: "plans", Data: d})
}
