package deploy_test

import (
	"bufio"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
)

// series reads a /metrics page: each series' name and labels, with its
// value.
func series(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil // not up yet
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// metricName is the name of a series.
func metricName(s string) string {
	if i := strings.IndexByte(s, '{'); i >= 0 {
		return s[:i]
	}
	return s
}

// namesIn returns the Ferry metric names an expression uses.
var ferryMetric = regexp.MustCompile(`\bferry_[a-z0-9_]+`)

// TestLiveMetrics runs a process server with TLS, a webhook and an
// enrolled agent limited by --max-bandwidth, scrapes both /metrics while
// the initial copy runs and after, and checks:
//   - every metric that a query of the Grafana dashboard or an alert rule
//     names is on a live page (so no panel or alert watches a name that
//     does not exist);
//   - the bandwidth limit holds: the copy took at least as long as the
//     limit allows, the agent shows the limit and the time it held sends;
//   - the copy's progress gauges are there while it runs and gone after;
//   - counters are counters (_total) and each VM has its own stream gauge.
func TestLiveMetrics(t *testing.T) {
	dir := buildAll(t)
	tmp := t.TempDir()
	ps := filepath.Join(dir, "ferry-ps")
	ca := filepath.Join(tmp, "ca")
	ferrytest.Run(t, ps, "ca", "init", "--ca", ca)
	token := strings.TrimSpace(ferrytest.Run(t, ps, "enroll", "--ca", ca, "--vm", "web-1"))
	tokenFile := filepath.Join(tmp, "token")
	os.WriteFile(tokenFile, []byte(token), 0o600)

	var delivered atomic.Int64
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e map[string]any
		if json.NewDecoder(r.Body).Decode(&e) == nil && e["vm"] == "web-1" {
			delivered.Add(1)
		}
	}))
	defer hook.Close()

	addr, maddr, amaddr := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	ferrytest.Start(t, ps, "serve", "--ca", ca, "--data", filepath.Join(tmp, "ps"), "--listen", addr, "--metrics", maddr,
		"--process-interval", "200ms", "--webhook", hook.URL, "--log-format", "json")

	const size, limit = 12 << 20, 3 << 20 // bytes, bytes per second
	img := filepath.Join(tmp, "os.img")
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	os.WriteFile(img, data, 0o644)
	start := time.Now()
	ag := ferrytest.Start(t, filepath.Join(dir, "ferry-agent"), "run", "--ps", addr, "--vm", "web-1", "--disk", "os="+img,
		"--state", filepath.Join(tmp, "agent"), "--token-file", tokenFile, "--metrics", amaddr, "--scan-interval", "200ms",
		"--crash-interval", "1s", "--heartbeat", "300ms", "--max-bandwidth", strconv.Itoa(limit))

	// The profiler is served only with --pprof.
	ferrytest.WaitFor(t, 10*time.Second, "ferry-ps's metrics", func() bool { return series(t, maddr) != nil })
	resp, err := http.Get("http://" + maddr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ without --pprof: %s", resp.Status)
	}

	seen := map[string]bool{}
	record := func(m map[string]float64) {
		for s := range m {
			seen[metricName(s)] = true
		}
	}
	var copied time.Duration
	sawProgress := false
	deadline := time.Now().Add(90 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the initial copy did not end; seen: %v", keys(seen))
		}
		p, a := series(t, maddr), series(t, amaddr)
		record(p)
		record(a)
		if a[`ferry_agent_resync_progress_ratio{vm="web-1"}`] > 0 && p[`ferry_ps_resync_progress_ratio{vm="web-1"}`] > 0 {
			sawProgress = true
		}
		if copied == 0 && a[`ferry_agent_sent_bytes_total{vm="web-1"}`] >= size {
			copied = time.Since(start)
		}
		if copied > 0 && p[`ferry_ps_points{vm="web-1"}`] > 0 && p[`ferry_ps_vm_health{health="healthy",vm="web-1"}`] == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	a := series(t, amaddr)
	// Half a second's worth may go at once; the rest at the limit.
	least := time.Duration(float64(size-limit/2) / limit * float64(time.Second))
	t.Logf("copied %d MiB in %v at --max-bandwidth %d MiB/s (at least %v); held %.2f s", size>>20, copied.Round(time.Millisecond), limit>>20, least, a[`ferry_agent_throttled_seconds_total{vm="web-1"}`])
	if copied < least || a[`ferry_agent_max_bandwidth_bytes{vm="web-1"}`] != limit || a[`ferry_agent_throttled_seconds_total{vm="web-1"}`] < 1 {
		t.Fatalf("bandwidth limit: copied in %v (at least %v), limit shown %v, held %v s", copied, least,
			a[`ferry_agent_max_bandwidth_bytes{vm="web-1"}`], a[`ferry_agent_throttled_seconds_total{vm="web-1"}`])
	}
	if !sawProgress {
		t.Fatal("no progress gauge while the copy ran")
	}

	// A health change, so that a webhook delivery is counted.
	ag.Cmd.Process.Signal(syscall.SIGSTOP)
	ferrytest.WaitFor(t, 20*time.Second, "critical health", func() bool {
		return series(t, maddr)[`ferry_ps_vm_health{health="critical",vm="web-1"}`] == 1
	})
	ag.Cmd.Process.Signal(syscall.SIGCONT)
	ferrytest.WaitFor(t, 20*time.Second, "the webhook delivery and healthy again", func() bool {
		p := series(t, maddr)
		record(p)
		return delivered.Load() > 0 && p[`ferry_ps_vm_health{health="healthy",vm="web-1"}`] == 1 &&
			p[`ferry_ps_webhook_deliveries_total{outcome="ok"}`] > 0
	})
	p, a := series(t, maddr), series(t, amaddr)
	record(p)
	record(a)
	for s := range p {
		if strings.Contains(s, "resync_progress") {
			t.Errorf("progress gauge after the copy ended: %s", s)
		}
	}
	for s := range a {
		if strings.Contains(s, "resync_progress") {
			t.Errorf("agent progress gauge after the copy ended: %s", s)
		}
	}
	if p[`ferry_ps_vm_streams{vm="web-1"}`] != 1 || p[`ferry_ps_agent_connected{vm="web-1"}`] != 1 || p[`ferry_ps_vm_state{state="protected",vm="web-1"}`] != 1 {
		t.Errorf("per-VM stream, connection and state: %v %v %v", p[`ferry_ps_vm_streams{vm="web-1"}`], p[`ferry_ps_agent_connected{vm="web-1"}`], p[`ferry_ps_vm_state{state="protected",vm="web-1"}`])
	}
	for _, c := range []string{"ferry_agent_overflows_total", "ferry_ps_journal_errors_total", "ferry_ps_build_info", "ferry_agent_build_info", "ferry_ps_certificate_expiry_seconds",
		"ferry_agent_certificate_expiry_seconds", "ferry_ps_data_free_bytes", "ferry_ps_vm_stored_bytes"} {
		if !seen[c] {
			t.Errorf("%s missing", c)
		}
	}
	if seen["ferry_agent_overflows"] {
		t.Error("ferry_agent_overflows is a gauge again; it counts events")
	}

	// Every metric the dashboard and the alert rules name was on a page.
	var exprs []string
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Definition string
			}
		}
	}
	raw, err := os.ReadFile("grafana/ferry-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	rules, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(rules), "\n") {
		if strings.Contains(l, "expr:") || strings.Contains(l, "description:") {
			exprs = append(exprs, l)
		}
	}
	checked := map[string]bool{}
	for _, e := range exprs {
		for _, name := range ferryMetric.FindAllString(e, -1) {
			checked[name] = true
			if !seen[name] {
				t.Errorf("%q names %s, which no live /metrics page had", e, name)
			}
		}
	}
	if len(dash.Panels) < 15 || len(checked) < 25 {
		t.Fatalf("%d panels, %d metric names checked: the dashboard or the rules were not read", len(dash.Panels), len(checked))
	}
	t.Logf("%d panels; %d metric names of the dashboard and the rules found live", len(dash.Panels), len(checked))
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
