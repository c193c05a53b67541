package main_test

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/internal/ferrytest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestOperatorView runs the real binaries as an operator's scripts and
// monitoring see them: every read command's -o json output parses into
// the server's answer and says what happened (a VM, its points, a test
// failover's job, its status with health, agent and last test failover,
// the events); the VM's health turns critical within 3 heartbeats of its
// agent being stopped (SIGSTOP: the connection stays up, only heartbeats
// stop) and healthy again when it continues; killed, its agent shows as
// disconnected after a heartbeat's grace for a reconnect, and a new run
// brings the VM back. The metrics and
// 'events --follow' show the same.
func TestOperatorView(t *testing.T) {
	bin, dir, _, hook := hookSetup(t)
	img := filepath.Join(dir, "disk.img")
	data := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	os.WriteFile(img, data, 0o644)
	machine := filepath.Join(dir, "machine.json")
	os.WriteFile(machine, []byte(`{"os":"linux","mobilityAgentVersion":"9.55","dhcp":true,"sshEnabledAtBoot":true,"sshFirewallAllowed":true}`), 0o644)

	addr, maddr := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), "serve", "--insecure", "--data", filepath.Join(dir, "ps"), "--listen", addr,
		"--metrics", maddr, "--compute-hook", hook, "--process-interval", "100ms")
	const heartbeat = 500 * time.Millisecond
	agentArgs := []string{"run", "--insecure", "--ps", addr, "--vm", "host1", "--disk", "os=" + img,
		"--state", filepath.Join(dir, "agent"), "--scan-interval", "100ms", "--crash-interval", "1s",
		"--heartbeat", heartbeat.String(), "--machine", machine}
	ag := ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), agentArgs...)

	run := func(args ...string) ([]byte, error) {
		cmd := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--insecure", "--ps", addr}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		return out, err
	}
	// read runs a read command with -o json and parses its answer into m.
	read := func(m proto.Message, args ...string) {
		t.Helper()
		out, err := run(append([]string{"-o", "json"}, args...)...)
		if err != nil {
			t.Fatalf("ferryctl -o json %v: %v", args, err)
		}
		if err := protojson.Unmarshal(out, m); err != nil {
			t.Fatalf("ferryctl -o json %v: %v\n%s", args, err, out)
		}
	}
	status := func() *ferryv1.VMStatus {
		t.Helper()
		var st ferryv1.StatusResponse
		read(&st, "status", "--vm", "host1")
		if len(st.GetVms()) != 1 {
			t.Fatalf("status: %d VMs", len(st.GetVms()))
		}
		return st.GetVms()[0]
	}
	ferrytest.WaitFor(t, 60*time.Second, "the VM protected and healthy", func() bool {
		out, err := run("-o", "json", "status", "--vm", "host1")
		var st ferryv1.StatusResponse
		if err != nil || protojson.Unmarshal(out, &st) != nil || len(st.GetVms()) != 1 {
			return false
		}
		v := st.GetVms()[0]
		return v.GetState() == "protected" && v.GetHealth() == "healthy"
	})

	if out, err := run("failover", "--type", "test", "--vm", "host1"); err != nil || !strings.Contains(string(out), "succeeded") {
		t.Fatalf("test failover: %v\n%s", err, out)
	}
	if _, err := run("cleanup-test", "--vm", "host1"); err != nil {
		t.Fatal(err)
	}

	var vms ferryv1.ListVMsResponse
	read(&vms, "vms")
	if len(vms.GetVms()) != 1 || vms.GetVms()[0].GetName() != "host1" || len(vms.GetVms()[0].GetDisks()) != 1 || vms.GetVms()[0].GetPointCount() == 0 {
		t.Fatalf("vms: %v", &vms)
	}
	var points ferryv1.ListPointsResponse
	read(&points, "points", "--vm", "host1")
	if len(points.GetPoints()) == 0 || points.GetPoints()[0].GetTimeUnixNano() == 0 {
		t.Fatalf("points: %v", &points)
	}
	var jobs ferryv1.ListJobsResponse
	read(&jobs, "jobs", "--vm", "host1")
	var testJob uint64
	for _, j := range jobs.GetJobs() {
		if j.GetType() == "test-failover" && j.GetOutcome() == "succeeded" {
			testJob = j.GetId()
		}
	}
	if testJob == 0 || len(jobs.GetJobs()) != 2 {
		t.Fatalf("jobs: want a test failover that succeeded and its cleanup: %v", &jobs)
	}
	var job ferryv1.Job
	read(&job, "job", "1")
	if job.GetId() != 1 || len(job.GetSteps()) == 0 || job.GetVm() != "host1" {
		t.Fatalf("job 1: %v", &job)
	}
	v := status()
	if !v.GetAgentConnected() || v.HeartbeatAgeSeconds == nil || v.GetAgentVersion() == "" || v.GetAgentHost() == "" ||
		v.GetLastTestFailoverJob() != testJob || v.GetLastTestFailoverUnixNano() == 0 || v.GetRpoThresholdSeconds() != 900 || v.GetPoints() == 0 {
		t.Fatalf("status: %v", v)
	}
	var events ferryv1.ListEventsResponse
	read(&events, "events", "--vm", "host1")
	for _, e := range events.GetEvents() {
		if e.GetVm() != "host1" || e.GetKind() == "" {
			t.Fatalf("events: %v", &events)
		}
	}

	// events --follow prints each new event as one JSON object per line.
	follow := exec.Command(filepath.Join(bin, "ferryctl"), "--insecure", "--ps", addr, "-o", "json", "events", "--follow", "--interval", "100ms")
	followOut, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { follow.Process.Kill(); follow.Wait() }()
	followed := make(chan *ferryv1.Event, 64)
	go func() {
		defer close(followed)
		sc := bufio.NewScanner(followOut)
		for sc.Scan() {
			e := &ferryv1.Event{}
			if err := protojson.Unmarshal(sc.Bytes(), e); err != nil {
				t.Errorf("events --follow: %v: %s", err, sc.Text())
				return
			}
			followed <- e
		}
	}()

	// nextChange waits for the follower to print a change of health to
	// want (a transient one between, as a resync starts, may come first).
	var changes []string
	nextChange := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case e, ok := <-followed:
				if !ok {
					t.Fatalf("events --follow ended; health changes so far: %q", changes)
				}
				if e.GetKind() != "health-changed" {
					continue
				}
				changes = append(changes, e.GetDetail())
				if strings.Contains(e.GetDetail(), want) {
					return
				}
			case <-deadline:
				t.Fatalf("events --follow: health changes %q; no %q", changes, want)
			}
		}
	}

	// Stopped: the connection stays up and the heartbeats stop.
	ag.Cmd.Process.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	for status().GetHealth() != "critical" {
		if time.Since(stopped) > 10*heartbeat {
			t.Fatalf("health still %q %.1f heartbeats after the agent stopped", status().GetHealth(), float64(time.Since(stopped))/float64(heartbeat))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(stopped)
	v = status()
	t.Logf("critical %v after SIGSTOP (heartbeat %v): %s", took.Round(time.Millisecond), heartbeat, v.GetHealthReason())
	// Within 3 heartbeats of its last message, seen by the polling here
	// within one more.
	if took > 4*heartbeat || !strings.Contains(v.GetHealthReason(), "silent") || !v.GetAgentConnected() {
		t.Fatalf("after %v: %v", took, v)
	}
	if m := scrape(t, maddr); !strings.Contains(m, `ferry_ps_vm_health{health="critical",vm="host1"} 1`) || !strings.Contains(m, `ferry_ps_agent_connected{vm="host1"} 1`) {
		t.Fatalf("metrics while the agent is stopped:\n%s", grepLines(m, "host1"))
	}
	nextChange("-> critical")
	ag.Cmd.Process.Signal(syscall.SIGCONT)
	ferrytest.WaitFor(t, 10*time.Second, "healthy again after SIGCONT", func() bool { return status().GetHealth() == "healthy" })
	nextChange("-> healthy")

	// Killed: the stream ends; after a heartbeat's grace for reconnecting
	// the agent is disconnected.
	ag.Kill()
	ferrytest.WaitFor(t, 2*time.Second, "critical after the agent was killed", func() bool {
		v := status()
		return v.GetHealth() == "critical" && !v.GetAgentConnected() && strings.Contains(v.GetHealthReason(), "disconnected")
	})
	if m := scrape(t, maddr); !strings.Contains(m, `ferry_ps_agent_connected{vm="host1"} 0`) {
		t.Fatalf("metrics after the agent was killed:\n%s", grepLines(m, "host1"))
	}
	nextChange("-> critical")
	ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), agentArgs...)
	ferrytest.WaitFor(t, 30*time.Second, "healthy again with a new agent run", func() bool { return status().GetHealth() == "healthy" })
	nextChange("-> healthy")
}

// scrape returns the text of a /metrics page.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
