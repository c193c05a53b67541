package console

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/processserver"
)

// liveSite is a site whose process server replicates VM web-1 from an
// agent in the test, and creates machines through the compute hook the
// ferryctl tests use.
func liveSite(t *testing.T) *site {
	t.Helper()
	hookDir := filepath.Join(t.TempDir(), "vms")
	os.MkdirAll(hookDir, 0o755)
	t.Setenv("FERRY_HOOK_DIR", hookDir)
	hook, _ := filepath.Abs("../cmd/ferryctl/testdata/compute-hook.sh")
	s := startSite(t, func(c *processserver.Config) { c.ProcessInterval, c.ComputeHook = 50*time.Millisecond, hook })
	for _, vm := range []string{"web-1", "db-1"} {
		a, err := agent.New(agent.Config{VM: vm, StateDir: filepath.Join(t.TempDir(), vm), Target: s.ps.Addr,
			Disks:       []agent.Disk{{Name: "os", Device: blockdev.NewMemory(1 << 20)}},
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, IgnorePolicy: true,
			CrashInterval: time.Second, Logger: ferrytest.Logger(t), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Open(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(context.Background()) })
	}
	ferrytest.WaitFor(t, 30*time.Second, "both VMs protected with points", func() bool {
		sts, err := s.ps.Status(context.Background(), "")
		if err != nil || len(sts) != 2 {
			return false
		}
		for _, st := range sts {
			if st.State != processserver.StateProtected || st.VM.Points < 3 {
				return false
			}
		}
		return true
	})
	return s
}

var (
	markAttrs = regexp.MustCompile(`data-first="(\d+)" data-last="(\d+)" data-count="(\d+)"`)
	rowOf     = regexp.MustCompile(`<tr data-vm="([^"]+)">`)
	jobPath   = regexp.MustCompile(`^/jobs/(\d+)$`)
)

// post submits a form of the session's page and returns the status and
// where it leads.
func post(t *testing.T, b *http.Client, u string, form url.Values) (int, string) {
	t.Helper()
	resp, err := b.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location")
}

// csrfOf reads the CSRF token of a page of the session.
func csrfOf(t *testing.T, b *http.Client, u string) string {
	t.Helper()
	_, page := get(t, b, u)
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("%s has no CSRF token", u)
	}
	return m[1]
}

// waitJob waits for a job to end and returns it.
func (s *site) waitJob(id uint64) processserver.Job {
	s.t.Helper()
	var j processserver.Job
	ferrytest.WaitFor(s.t, 30*time.Second, fmt.Sprintf("job %d to end", id), func() bool {
		var err error
		j, err = s.ps.Job(context.Background(), id)
		return err == nil && j.Outcome != ferry.OutcomeRunning
	})
	return j
}

// TestPagesOfLiveVMs: each page shows what the process server holds of
// two replicating VMs, and the actions act on them as the signed-in
// operator: the replicated items filtered and sorted, a VM's points each
// on one mark of the timeline, a test failover and its cleanup, a plan's
// manual step resumed; the live streams send the same content.
func TestPagesOfLiveVMs(t *testing.T) {
	s := liveSite(t)
	ctx := context.Background()
	b := s.signIn(alice)
	u := s.c.URL()

	// Replicated items.
	order := func(q string) string {
		_, page := get(t, b, u+"/?"+q)
		var vms []string
		for _, m := range rowOf.FindAllStringSubmatch(page, -1) {
			vms = append(vms, m[1])
		}
		return strings.Join(vms, ",")
	}
	for q, want := range map[string]string{"sort=name": "db-1,web-1", "sort=name&desc=1": "web-1,db-1", "q=WEB": "web-1", "q=nothing": "",
		"sort=bogus&q=db": "db-1"} {
		if got := order(q); got != want {
			t.Errorf("items ?%s: %q, want %q", q, got, want)
		}
	}
	if _, page := get(t, b, u+"/?q=nothing"); !strings.Contains(page, "No VM matches “nothing”") {
		t.Errorf("an empty filter result says nothing")
	}
	_, page := get(t, b, u+"/")
	for _, want := range []string{`<td class="rpo" data-rpo-seconds="`, " / 15m", "✔ healthy", "protected", "connected", "default"} {
		if !strings.Contains(page, want) {
			t.Errorf("items page lacks %q", want)
		}
	}

	// A VM: every point on exactly one mark, and listed.
	pts, err := s.ps.Journal().Points(ctx, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	code, page := get(t, b, u+"/vm/web-1")
	if code != http.StatusOK {
		t.Fatalf("vm page: %d", code)
	}
	marks := markAttrs.FindAllStringSubmatch(page, -1)
	total := 0
	for _, p := range pts {
		on := 0
		for _, m := range marks {
			first, _ := strconv.Atoi(m[1])
			last, _ := strconv.Atoi(m[2])
			if int(p.ID) >= first && int(p.ID) <= last {
				on++
			}
		}
		if on != 1 {
			t.Fatalf("point %d on %d marks: %v", p.ID, on, marks)
		}
		if !strings.Contains(page, fmt.Sprintf(`<tr id="point-%d">`, p.ID)) {
			t.Fatalf("point %d not listed", p.ID)
		}
	}
	for _, m := range marks {
		n, _ := strconv.Atoi(m[3])
		total += n
	}
	if total < len(pts) {
		t.Fatalf("marks stand for %d points, the VM has %d", total, len(pts))
	}
	for _, want := range []string{`id="test-failover"`, "Retention (24h)", `aria-current="true">Retention`, "os</th>", "1.0 MiB",
		`text-anchor="middle">−24h</text>`, `text-anchor="middle">now</text>`, `<a href="?window=6h">6 hours</a>`, `<a href="?window=1h">1 hour</a>`} {
		if !strings.Contains(page, want) {
			t.Errorf("vm page lacks %q", want)
		}
	}
	if _, page := get(t, b, u+"/vm/web-1?window=10m"); !strings.Contains(page, `aria-current="true">10 minutes`) || strings.Contains(page, `aria-current="true">Retention`) ||
		!strings.Contains(page, `text-anchor="middle">−10m</text>`) || !strings.Contains(page, `text-anchor="middle">−2m30s</text>`) {
		t.Errorf("the 10-minute span is not the one shown")
	}
	if code, _ := get(t, b, u+"/vm/nope"); code != http.StatusNotFound {
		t.Errorf("a VM that does not exist: %d", code)
	}
	for p, want := range map[string]int{"/jobs/abc": http.StatusBadRequest, "/jobs/999": http.StatusNotFound, "/vm/nope/test-failover": http.StatusNotFound} {
		if code, _ := get(t, b, u+p); code != want {
			t.Errorf("GET %s: %d, want %d", p, code, want)
		}
	}

	// A test failover from a chosen point.
	_, page = get(t, b, u+"/vm/web-1/test-failover")
	if !strings.Contains(page, fmt.Sprintf(`<option value="%d">`, pts[len(pts)-1].ID)) || !strings.Contains(page, `value="test-web-1"`) {
		t.Fatalf("confirmation page:\n%s", page)
	}
	token := csrfOf(t, b, u+"/jobs")
	chosen := pts[len(pts)-2]
	code, loc := post(t, b, u+"/vm/web-1/test-failover", url.Values{"csrf": {token}, "point": {strconv.FormatUint(uint64(chosen.ID), 10)}, "network": {"drill-net"}})
	m := jobPath.FindStringSubmatch(loc)
	if code != http.StatusSeeOther || m == nil {
		t.Fatalf("test failover: %d → %q", code, loc)
	}
	id, _ := strconv.ParseUint(m[1], 10, 64)
	j := s.waitJob(id)
	if j.Outcome != ferry.OutcomeSucceeded || j.Type != processserver.ActionTestFailover || j.By != "operator/alice" || j.Point == nil || j.Point.ID != chosen.ID {
		t.Fatalf("test failover job: %+v", j)
	}
	if !strings.Contains(fmt.Sprint(j.Steps), "drill-net") {
		t.Fatalf("the job's steps do not name the network: %v", j.Steps)
	}
	_, page = get(t, b, u+loc)
	for _, want := range []string{`data-outcome="succeeded"`, "by operator/alice", "create VM", "Boot console", "booted"} {
		if !strings.Contains(page, want) {
			t.Errorf("job page lacks %q", want)
		}
	}
	if strings.Contains(page, "data-stream") {
		t.Errorf("a job that ended is still streamed")
	}
	// The job's stream sends the job and says it is done.
	events := stream(t, b, u+"/stream/job/"+m[1], 2)
	if !strings.Contains(events[0], "event: html") || !strings.Contains(events[0], `data-outcome="succeeded"`) || !strings.Contains(events[1], "event: done") {
		t.Fatalf("job stream: %q", events)
	}
	// A second test failover is refused: one is up.
	if code, _ := post(t, b, u+"/vm/web-1/test-failover", url.Values{"csrf": {token}}); code != http.StatusConflict {
		t.Fatalf("a second test failover: %d", code)
	}
	if _, page := get(t, b, u+"/vm/web-1"); !strings.Contains(page, `id="cleanup-test"`) || strings.Contains(page, `id="test-failover"`) ||
		!strings.Contains(page, fmt.Sprintf(`<a href="/jobs/%d">job %d</a>`, id, id)) {
		t.Fatalf("vm page during the test failover:\n%s", page)
	}
	if _, page := get(t, b, u+"/drills"); !strings.Contains(page, `id="drill-chart"`) || !strings.Contains(page, fmt.Sprintf(`<a href="/jobs/%d">%d</a>`, id, id)) {
		t.Fatalf("drills page:\n%s", page)
	}

	// Its cleanup.
	if _, page := get(t, b, u+"/vm/web-1/cleanup-test"); !strings.Contains(page, `id="confirm"`) {
		t.Fatalf("cleanup confirmation:\n%s", page)
	}
	code, loc = post(t, b, u+"/vm/web-1/cleanup-test", url.Values{"csrf": {token}})
	if m = jobPath.FindStringSubmatch(loc); code != http.StatusSeeOther || m == nil {
		t.Fatalf("cleanup: %d → %q", code, loc)
	}
	id, _ = strconv.ParseUint(m[1], 10, 64)
	if j := s.waitJob(id); j.Outcome != ferry.OutcomeSucceeded || j.Type != processserver.ActionCleanupTest || j.By != "operator/alice" {
		t.Fatalf("cleanup job: %+v", j)
	}
	if _, page := get(t, b, u+"/vm/web-1/cleanup-test"); strings.Contains(page, `id="confirm"`) || !strings.Contains(page, "no test failover to clean up") {
		t.Fatalf("cleanup confirmation with nothing to clean up:\n%s", page)
	}

	// A plan waiting for its manual step, resumed.
	if err := s.ps.PutPlan(ctx, plan.Plan{Name: "payroll", Groups: []plan.Group{
		{VMs: []string{"db-1"}, Post: []plan.Action{{Name: "check the database", Manual: true}}}, {VMs: []string{"web-1"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, page := get(t, b, u+"/plans/payroll/resume"); !strings.Contains(page, "not waiting") {
		t.Fatalf("resume of a plan that does not wait:\n%s", page)
	}
	pj, err := s.ps.RunPlan(ctx, processserver.PlanRequest{Plan: "payroll", Operation: processserver.PlanTestFailover})
	if err != nil {
		t.Fatal(err)
	}
	ferrytest.WaitFor(t, 30*time.Second, "the plan waiting", func() bool {
		j, err := s.ps.Job(ctx, pj.ID)
		return err == nil && j.Waiting != ""
	})
	if _, page := get(t, b, u+"/plans"); !strings.Contains(page, `href="/plans/payroll/resume"`) || !strings.Contains(page, "check the database") {
		t.Fatalf("plans page:\n%s", page)
	}
	code, loc = post(t, b, u+"/plans/payroll/resume", url.Values{"csrf": {token}})
	if loc != fmt.Sprintf("/jobs/%d", pj.ID) || code != http.StatusSeeOther {
		t.Fatalf("resume: %d → %q", code, loc)
	}
	ended := s.waitJob(pj.ID)
	if ended.Outcome != ferry.OutcomeSucceeded || len(ended.Children) != 2 {
		t.Fatalf("plan job: %+v", ended)
	}
	// The plan ran on the server's own call: its VMs' jobs name no one
	// (what an operator starts names them, as above).
	for _, id := range ended.Children {
		if j, _ := s.ps.Job(ctx, id); j.By != "" {
			t.Fatalf("job %d of a plan the server ran names %q", id, j.By)
		}
	}
	if code, _ := post(t, b, u+"/plans/payroll/resume", url.Values{"csrf": {token}}); code != http.StatusConflict {
		t.Fatalf("resume of a plan that does not wait: %d", code)
	}
	if _, page := get(t, b, u+"/jobs"); strings.Count(page, "<tr data-job=") != 5 {
		t.Fatalf("jobs page lists %d jobs, want 5", strings.Count(page, "<tr data-job="))
	}

	// The items stream.
	events = stream(t, b, u+"/stream/items?sort=name", 1)
	if !strings.Contains(events[0], "event: html") || !strings.Contains(events[0], `data: <tr data-vm="db-1">`) {
		t.Fatalf("items stream: %q", events)
	}
	var actions []string
	for _, e := range s.audit() {
		actions = append(actions, e.Action+" "+strings.SplitN(e.Outcome, ":", 2)[0])
	}
	want := "console sign-in ok, console test-failover ok, console test-failover failed, console cleanup-test ok, console resume-plan ok, console resume-plan failed"
	if strings.Join(actions, ", ") != want {
		t.Fatalf("audit: %s\nwant:  %s", strings.Join(actions, ", "), want)
	}
}

// stream reads n events of a server-sent event stream.
func stream(t *testing.T, b *http.Client, u string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := b.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%s: %s %s", u, resp.Status, resp.Header.Get("Content-Type"))
	}
	var out []string
	var ev strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for len(out) < n && sc.Scan() {
		if sc.Text() == "" {
			out = append(out, ev.String())
			ev.Reset()
			continue
		}
		ev.WriteString(sc.Text() + "\n")
	}
	if len(out) < n {
		t.Fatalf("%s: %d events of %d: %v", u, len(out), n, sc.Err())
	}
	return out
}
