package console_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/tlsca"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// chromium returns Debian's Chromium, skipping the test without it (and
// failing it in CI, whose .ci/run installs it).
func chromium(t *testing.T) string {
	t.Helper()
	if testing.Short() || os.Getenv("FERRY_NO_BROWSER") != "" {
		t.Skip("drives a real browser (-short or FERRY_NO_BROWSER: mutation runs of the fast tests)")
	}
	return ferrytest.Need(t, "chromium", "apt-get install -y chromium")
}

// artifacts is where screenshots are kept: $FERRY_ARTIFACTS/console, or
// the test's temporary directory.
func artifacts(t *testing.T) string {
	dir := t.TempDir()
	if a := os.Getenv("FERRY_ARTIFACTS"); a != "" {
		dir = filepath.Join(a, "console")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// spkiPin is the base64 SHA-256 of a certificate's public key, as
// Chromium's --ignore-certificate-errors-spki-list takes it: the browser
// trusts the deployment's server certificate and nothing else unknown.
func spkiPin(t *testing.T, certFile string) string {
	cert, err := tlsca.ReadCert(certFile)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// TestConsoleInBrowser drives Debian's Chromium, headless, through the
// console of a live process server with two replicating VMs in a
// replication group: an operator signs in with a link from 'ferryctl
// console login', sees the protected VMs with their RPO, opens one and
// finds its recovery points on the timeline (multi-VM points ringed),
// starts a test failover from the page and watches its job run and finish
// live, cleans it up, and resumes a recovery plan's manual step. A reused
// or expired link is refused, an action without the CSRF token too, and
// nothing is done by them. Screenshots of the main pages, in the light
// and the dark theme, are kept.
func TestConsoleInBrowser(t *testing.T) {
	chrome := chromium(t)
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	shots := artifacts(t)
	ps := filepath.Join(bin, "ferry-ps")
	ca := filepath.Join(dir, "ca")
	ferrytest.Run(t, ps, "ca", "init", "--ca", ca)
	ferrytest.Run(t, ps, "ca", "issue", "--ca", ca, "--role", "operator", "--name", "alice", "--out", filepath.Join(dir, "alice"))
	hookDir := filepath.Join(dir, "vms")
	os.MkdirAll(hookDir, 0o755)
	t.Setenv("FERRY_HOOK_DIR", hookDir)
	hook, _ := filepath.Abs("../cmd/ferryctl/testdata/compute-hook.sh")

	addr, caddr := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	// Long enough for a loaded machine to open the link, short enough to wait out.
	const tokenTTL = 8 * time.Second
	ferrytest.Start(t, ps, "serve", "--ca", ca, "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "",
		"--compute-hook", hook, "--process-interval", "200ms", "--console-listen", caddr, "--console-token-ttl", tokenTTL.String())

	machine := filepath.Join(dir, "machine.json")
	os.WriteFile(machine, []byte(`{"os":"linux","mobilityAgentVersion":"9.55","dhcp":true,"sshEnabledAtBoot":true,"sshFirewallAllowed":true}`), 0o644)
	rng := rand.New(rand.NewPCG(7, 8))
	// Served over NBD (no client writes): the agents capture writes rather
	// than scan, so they can hold them for the group's multi-VM points.
	for _, vm := range []string{"web-1", "db-1"} {
		img := filepath.Join(dir, vm+".img")
		data := make([]byte, 4<<20)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		os.WriteFile(img, data, 0o644)
		token := strings.TrimSpace(ferrytest.Run(t, ps, "enroll", "--ca", ca, "--vm", vm))
		tokenFile := filepath.Join(dir, vm+".token")
		os.WriteFile(tokenFile, []byte(token), 0o600)
		ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), "run", "--ps", addr, "--vm", vm, "--disk", "os="+img,
			"--state", filepath.Join(dir, vm+"-agent"), "--token-file", tokenFile, "--scan-interval", "200ms",
			"--crash-interval", "1s", "--machine", machine, "--nbd-listen", "unix:"+filepath.Join(dir, vm+".sock"))
	}

	ctl := func(args ...string) ([]byte, error) {
		cmd := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--ps", addr, "--tls-dir", filepath.Join(dir, "alice")}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			err = fmt.Errorf("ferryctl %v: %w: %s", args, err, stderr.String())
		}
		return out, err
	}
	read := func(m proto.Message, args ...string) {
		t.Helper()
		out, err := ctl(append([]string{"-o", "json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := protojson.Unmarshal(out, m); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	ferrytest.WaitFor(t, 60*time.Second, "both VMs protected and healthy", func() bool {
		var st ferryv1.StatusResponse
		out, err := ctl("-o", "json", "status")
		if err != nil || protojson.Unmarshal(out, &st) != nil || len(st.GetVms()) != 2 {
			return false
		}
		for _, v := range st.GetVms() {
			if v.GetState() != "protected" || v.GetHealth() != "healthy" || v.GetPoints() < 2 {
				return false
			}
		}
		return true
	})
	if out, err := ctl("group", "create", "payroll", "--vm", "web-1", "--vm", "db-1", "--crash-interval", "1s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ferrytest.WaitFor(t, 30*time.Second, "a multi-VM point that both VMs have", func() bool {
		tags := map[string]int{}
		for _, vm := range []string{"web-1", "db-1"} {
			var pts ferryv1.ListPointsResponse
			out, err := ctl("-o", "json", "points", "--vm", vm)
			if err != nil || protojson.Unmarshal(out, &pts) != nil {
				return false
			}
			for _, p := range pts.GetPoints() {
				if strings.HasPrefix(p.GetTag(), "group/payroll/") {
					tags[p.GetTag()]++
				}
			}
		}
		for _, n := range tags {
			if n == 2 {
				return true
			}
		}
		return false
	})
	login := func() string {
		t.Helper()
		out, err := ctl("console", "login")
		if err != nil {
			t.Fatal(err)
		}
		u := strings.TrimSpace(string(out))
		if !strings.HasPrefix(u, "https://"+caddr+"/login?token=") {
			t.Fatalf("console login printed %q", u)
		}
		return u
	}

	// The browser: headless, no network beyond loopback, a fresh profile,
	// trusting the console's certificate by its key.
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", spkiPin(t, filepath.Join(ca, "ps", tlsca.CertFile))),
		chromedp.WindowSize(1280, 900))
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	if err := chromedp.Do(browser, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	// Each step is bounded; a page that never shows fails the test.
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(browser, 60*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			html, _ := chromedp.Run(browser, chromedp.OuterHTML(chromedp.CSS("html")))
			t.Fatalf("%s: %v\npage:\n%s", what, err, html)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(browser, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	// waitJS waits until a JavaScript expression is true on the page (the
	// page may be navigating meanwhile).
	waitJS := func(what, expr string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(browser, 10*time.Second)
			ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
			cancel()
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				html, _ := chromedp.Run(browser, chromedp.OuterHTML(chromedp.CSS("html")))
				t.Fatalf("%s: not seen (%v)\npage:\n%s", what, err, html)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// a11y lists what a page lacks for people who do not see it or use no
	// mouse: a language, one h1, a label for every field, a name for every
	// link and button, headers with scope, figures with a description.
	a11y := func(name string) {
		t.Helper()
		problems := eval(`(() => {
			const out = [];
			if (!document.documentElement.lang) out.push("no lang");
			if (document.querySelectorAll("h1").length !== 1) out.push("h1 count " + document.querySelectorAll("h1").length);
			for (const f of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
				if (!(f.id && document.querySelector('label[for="' + f.id + '"]')) && !f.getAttribute("aria-label")) out.push("unlabelled " + f.outerHTML);
			}
			for (const a of document.querySelectorAll("a, button")) {
				const title = a.querySelector("title");
				if (!(a.textContent.trim() || a.getAttribute("aria-label") || (title && title.textContent.trim()))) out.push("nameless " + a.outerHTML);
			}
			for (const th of document.querySelectorAll("thead th")) if (!th.getAttribute("scope")) out.push("th without scope");
			for (const svg of document.querySelectorAll("svg[role=img]")) {
				const id = svg.getAttribute("aria-labelledby");
				if (!id || !document.getElementById(id) || !document.getElementById(id).textContent.trim()) out.push("svg without a description");
			}
			return out.join("\n");
		})()`)
		if problems != "" {
			t.Fatalf("%s page: %s", name, problems)
		}
	}
	shot := func(name string) {
		t.Helper()
		a11y(name)
		png, err := chromedp.Run(browser, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Sign in; a second link is left to expire.
	stale, staleAt := login(), time.Now()
	link := login()
	do("sign in", chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS(`#items tbody tr[data-vm="web-1"]`)))
	if who := eval(`document.getElementById("who").textContent`); who != "operator/alice" {
		t.Fatalf("signed in as %q", who)
	}
	// The link again, and one that expired, in another browser context:
	// refused, and no session.
	other, cancelOther := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	defer cancelOther()
	if err := chromedp.Do(other, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ link, want string }{{link, "used already"}, {stale, "expired"}} {
		if c.want == "expired" {
			// The server's wall clock must pass the link's expiry.
			time.Sleep(time.Until(staleAt.Add(tokenTTL + 500*time.Millisecond)))
		}
		ctx, cancel := context.WithTimeout(other, 30*time.Second)
		if err := chromedp.Do(ctx, chromedp.Navigate(c.link), chromedp.WaitVisible(chromedp.CSS(".notice"))); err != nil {
			cancel()
			t.Fatal(err)
		}
		msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(".notice")))
		cancel()
		if err != nil || !strings.Contains(msg, c.want) {
			t.Fatalf("sign-in with a %s link: %q, %v", c.want, msg, err)
		}
		ctx, cancel = context.WithTimeout(other, 30*time.Second)
		err = chromedp.Do(ctx, chromedp.Navigate("https://"+caddr+"/jobs"))
		h1, err2 := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("h1")))
		cancel()
		if err != nil || err2 != nil || h1 != "Sign in" {
			t.Fatalf("after a refused %s link the jobs page says %q (%v, %v)", c.want, h1, err, err2)
		}
	}

	// The protected VMs with their RPO against the threshold.
	var st ferryv1.StatusResponse
	read(&st, "status")
	for _, v := range st.GetVms() {
		row := fmt.Sprintf(`document.querySelector('#items tr[data-vm="%s"]')`, v.GetName())
		rpo, err := strconv.ParseFloat(eval(row+`.querySelector("td.rpo").dataset.rpoSeconds`), 64)
		if err != nil || rpo < 0 || rpo > 30 {
			t.Fatalf("%s: RPO on the page %v (%v)", v.GetName(), rpo, err)
		}
		text := eval(row + `.innerText`)
		if !strings.Contains(text, "/ 15m") || !strings.Contains(text, "healthy") || !strings.Contains(text, "protected") ||
			!strings.Contains(text, "payroll") || !strings.Contains(text, "connected") {
			t.Fatalf("%s's row: %q", v.GetName(), text)
		}
	}
	// Live: the RPO cell is rewritten by the stream without a reload.
	eval(`document.querySelector("#items tbody").dataset.before = "1"; ""`)
	first := eval(`document.querySelector('#items tr[data-vm="web-1"] td.rpo').textContent`)
	waitJS("the items kept live", `document.querySelector("#items tbody").dataset.before === "1" && document.querySelector('#items tr[data-vm="web-1"] td.rpo').textContent !== `+strconv.Quote(first))
	// Filtered and sorted by the page's own controls.
	do("filter", chromedp.SendKeys(chromedp.CSS("#q"), "db-"), chromedp.Submit(chromedp.CSS("#q")))
	waitJS("the filtered page", `location.search.includes("q=db-") && document.readyState === "complete"`)
	if rows := eval(`[...document.querySelectorAll("#items tbody tr")].map(r => r.dataset.vm).join(",")`); rows != "db-1" {
		t.Fatalf("filter db-: rows %q", rows)
	}
	do("sort by name", chromedp.Navigate("https://"+caddr+"/"), chromedp.Click(chromedp.CSS(`th a[href*="sort=name"]`)),
		chromedp.WaitVisible(chromedp.CSS(`th[aria-sort="ascending"]`)))
	if order := eval(`[...document.querySelectorAll("#items tbody tr")].map(r => r.dataset.vm).join(",")`); order != "db-1,web-1" {
		t.Fatalf("sorted by name: %s", order)
	}
	shot("replicated-items")
	do("dark theme", chromedp.Action[chromedp.Void](func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
		return chromedp.Void{}, err
	}))
	if bg := eval(`getComputedStyle(document.body).backgroundColor`); bg != "rgb(13, 17, 23)" {
		t.Fatalf("dark theme background %s", bg)
	}
	shot("replicated-items-dark")
	do("light theme", chromedp.Action[chromedp.Void](func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "light"}}})
		return chromedp.Void{}, err
	}))

	// A VM's page: every recovery point is on the timeline, multi-VM
	// points ringed.
	var points ferryv1.ListPointsResponse
	read(&points, "points", "--vm", "web-1")
	do("open web-1", chromedp.Navigate("https://"+caddr+"/"), chromedp.Click(chromedp.CSS(`#items a[href="/vm/web-1"]`)),
		chromedp.WaitVisible(chromedp.CSS("#timeline")))
	var marks []struct{ First, Last, Count int }
	if err := json.Unmarshal([]byte(eval(`JSON.stringify([...document.querySelectorAll("#timeline a.mark")].map(m => ({First: +m.dataset.first, Last: +m.dataset.last, Count: +m.dataset.count})))`)), &marks); err != nil {
		t.Fatal(err)
	}
	for _, p := range points.GetPoints() {
		in := 0
		for _, m := range marks {
			if int(p.GetId()) >= m.First && int(p.GetId()) <= m.Last {
				in++
			}
		}
		if in != 1 {
			t.Fatalf("point %d is on %d marks of the timeline: %v", p.GetId(), in, marks)
		}
	}
	if n := eval(`String(document.querySelectorAll("#timeline a.mark.multi").length)`); n == "0" {
		t.Fatal("no multi-VM point on the timeline")
	}
	// Joined are the group's own points, each with db-1's point of it.
	var rows [][]string
	json.Unmarshal([]byte(eval(`JSON.stringify([...document.querySelectorAll("#points tbody tr")].map(r => [...r.cells].map(c => c.textContent)))`)), &rows)
	joined := 0
	for _, r := range rows {
		if len(r) == 5 && r[4] != "—" {
			joined++
			if !strings.HasPrefix(r[3], "group/payroll/") || !strings.HasPrefix(r[4], "db-1 #") {
				t.Fatalf("point row %q is joined to %q", r[3], r[4])
			}
		}
	}
	if joined == 0 {
		t.Fatalf("no point joined with db-1's: %q", rows)
	}
	do("a closer look", chromedp.Click(chromedp.CSS(`a[href="?window=10m"]`)), chromedp.WaitVisible(chromedp.CSS(`a[href="?window=10m"][aria-current="true"]`)))
	shot("vm")

	// A test failover from the page: the compute hook holds the machine's
	// creation until the job is seen running, then the page follows it to
	// its end without a reload.
	jobsBefore := func() int {
		var jobs ferryv1.ListJobsResponse
		read(&jobs, "jobs")
		return len(jobs.GetJobs())
	}
	hold := filepath.Join(hookDir, ".hold-create")
	os.WriteFile(hold, nil, 0o644)
	do("confirm a test failover", chromedp.Click(chromedp.CSS("#test-failover")), chromedp.WaitVisible(chromedp.CSS("#confirm")))
	shot("confirm-test-failover")
	do("start it", chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS(`#outcome[data-outcome="running"]`)))
	eval(`document.body.dataset.loaded = "once"; ""`)
	os.Remove(hold)
	waitJS("the job seen to succeed", `document.body.dataset.loaded === "once" && !!document.querySelector('#outcome[data-outcome="succeeded"]')`)
	jobURL := eval(`location.pathname`)
	id := strings.TrimPrefix(jobURL, "/jobs/")
	var job ferryv1.Job
	read(&job, "job", id)
	if job.GetType() != "test-failover" || job.GetVm() != "web-1" || job.GetOutcome() != "succeeded" || job.GetRequestedBy() != "operator/alice" {
		t.Fatalf("job %s: %v", id, &job)
	}
	if steps := eval(`document.querySelector("#steps").innerText`); !strings.Contains(steps, "create VM") || !strings.Contains(steps, "readiness checks") {
		t.Fatalf("steps on the page:\n%s", steps)
	}
	if con := eval(`(document.querySelector("pre.console") || {}).textContent || ""`); !strings.Contains(con, "booted") {
		t.Fatalf("boot console on the page: %q", con)
	}
	shot("job")
	read(&st, "status", "--vm", "web-1")
	if v := st.GetVms()[0]; !v.GetTestFailover() || v.GetLastTestFailoverJob() != job.GetId() {
		t.Fatalf("status after the test failover: %v", v)
	}

	// An action without the CSRF token, from the page's own script: refused,
	// nothing done.
	n := jobsBefore()
	code := eval(`fetch("/vm/web-1/cleanup-test", {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "x=1"}).then(r => String(r.status))`)
	if code != "403" || jobsBefore() != n {
		t.Fatalf("cleanup without the CSRF token: %s, jobs %d → %d", code, n, jobsBefore())
	}

	// Clean it up from the page.
	do("clean up", chromedp.Navigate("https://"+caddr+"/vm/web-1"), chromedp.Click(chromedp.CSS("#cleanup-test")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")), chromedp.Click(chromedp.CSS("#confirm")),
		chromedp.WaitVisible(chromedp.CSS(`#outcome[data-outcome="succeeded"]`)))
	read(&st, "status", "--vm", "web-1")
	if v := st.GetVms()[0]; v.GetTestFailover() || v.GetState() != "protected" {
		t.Fatalf("status after the cleanup: %v", v)
	}

	// A recovery plan waiting for a manual step, resumed from the page.
	planFile := filepath.Join(dir, "plan.json")
	os.WriteFile(planFile, []byte(`{"name": "payroll", "groups": [
		{"vms": ["db-1"], "post": [{"name": "check the database answers", "manual": true}]},
		{"vms": ["web-1"]}]}`), 0o644)
	if out, err := ctl("plan", "put", "--file", planFile); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := ctl("plan", "run", "payroll", "--op", "test-failover"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	do("plans", chromedp.Navigate("https://"+caddr+"/plans"), chromedp.WaitVisible(chromedp.CSS(`a[href="/plans/payroll/resume"]`)))
	if text := eval(`document.querySelector("main").innerText`); !strings.Contains(text, "check the database answers") {
		t.Fatalf("plans page:\n%s", text)
	}
	shot("plans")
	do("resume", chromedp.Click(chromedp.CSS(`a[href="/plans/payroll/resume"]`)), chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS(`#outcome[data-outcome="succeeded"]`)))
	if out, err := ctl("plan", "run", "payroll", "--op", "cleanup-test"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	// Jobs and drills.
	do("jobs", chromedp.Navigate("https://"+caddr+"/jobs"), chromedp.WaitVisible(chromedp.CSS(".jobs")))
	shot("jobs")
	do("drills", chromedp.Navigate("https://"+caddr+"/drills"), chromedp.WaitVisible(chromedp.CSS("#drill-chart")))
	if rows := eval(`String(document.querySelectorAll("#drills tbody tr").length)`); rows != "2" {
		t.Fatalf("drills: %s rows (a VM's test failover and a plan's)", rows)
	}
	shot("drills")

	// Keyboard: the first Tab reaches the skip link, which leads to the
	// content.
	do("tab", chromedp.KeyEvent("\t"))
	if f := eval(`document.activeElement.className`); f != "skip" {
		t.Fatalf("first Tab focuses %q", f)
	}

	// The audit log has the sign-ins, the refusals and the actions under
	// the operator.
	var audit ferryv1.ListAuditResponse
	read(&audit, "audit")
	var seen []string
	for _, e := range audit.GetEntries() {
		if strings.HasPrefix(e.GetAction(), "console ") {
			seen = append(seen, e.GetWho()+" "+e.GetAction()+" "+strings.SplitN(e.GetOutcome(), ":", 2)[0])
		}
	}
	want := []string{"operator/alice console sign-in ok", "holder of a spent sign-in link console sign-in refused",
		"holder of a spent sign-in link console sign-in refused", "operator/alice console test-failover ok",
		"operator/alice console cleanup-test refused", "operator/alice console cleanup-test ok", "operator/alice console resume-plan ok"}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit:\n%s\nwant:\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
	t.Logf("screenshots in %s", shots)
}
