package sim

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Entry is one action of a drill on one VM, as the report shows it.
type Entry struct {
	VM     string
	Action string
	Job    *ferryv1.Job
	Point  *ferryv1.RecoveryPoint
	// Age of the point's newest data when the action started (virtual
	// time).
	PointAge time.Duration
	// Data loss against ground truth: the writes the VM's agent had
	// acknowledged that the point lacks, and the age of the oldest of them
	// when the action started (or the VM was lost); UnackedBytes were
	// written but never acknowledged (lost with the site).
	LossSeconds  float64
	LossBytes    int64
	UnackedBytes int64
	Verified     string
	Notes        []string
	Failed       string
	// Failback: shutdown of the recovered VM to start of the primary, and
	// the bytes that moved in between.
	Downtime      time.Duration
	DowntimeBytes int64
}

// Report is what a drill found.
type Report struct {
	Seed     uint64
	Scenario string
	Entries  []*Entry
	Notes    []string
	// Failures lists every verification that failed; a drill with any is
	// a failed drill.
	Failures []string
	// Wall prints each step's wall-clock time too. Off, a report depends
	// only on the seed: the same seed prints the same report.
	Wall bool
	// Dir is the drill's directory, printed as $DIR.
	Dir string
	// WallNotes are measured in real time; printed with Wall only.
	WallNotes []string
}

func (r *Report) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Print writes the report for people.
func (r *Report) Print(out io.Writer) {
	var buf strings.Builder
	r.print(&buf)
	text := buf.String()
	if r.Dir != "" {
		text = strings.ReplaceAll(text, r.Dir, "$DIR")
	}
	io.WriteString(out, text)
}

func (r *Report) print(w io.Writer) {
	fmt.Fprintf(w, "Ferry drill %q, seed %d\n", r.Scenario, r.Seed)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
	if r.Wall {
		for _, n := range r.WallNotes {
			fmt.Fprintf(w, "  %s (wall clock)\n", n)
		}
	}
	for _, e := range r.Entries {
		fmt.Fprintf(w, "\n== %s: %s\n", e.VM, e.Action)
		if e.Point != nil {
			fmt.Fprintf(w, "   point      %d, %s, tag %q, its newest data %s old at the start\n", e.Point.GetId(), consistencyName(e.Point.GetConsistency()), e.Point.GetTag(), e.PointAge.Round(time.Second))
			fmt.Fprintf(w, "   RPO        %s of acknowledged writes missing from the point, the oldest %.0f s old; %s written and never acknowledged\n",
				cli.Bytes(e.LossBytes), e.LossSeconds, cli.Bytes(e.UnackedBytes))
		}
		if j := e.Job; j != nil {
			total := time.Duration(j.GetEndUnixNano() - j.GetStartUnixNano())
			fmt.Fprintf(w, "   RTO        %s (job %d, %s)\n", total.Round(100*time.Millisecond), j.GetId(), j.GetOutcome())
			for _, st := range j.GetSteps() {
				d := time.Duration(st.GetEndUnixNano() - st.GetStartUnixNano())
				if r.Wall {
					fmt.Fprintf(w, "     %-26s %-9s %8s  wall %-8s %s\n", st.GetName(), st.GetOutcome(), d.Round(100*time.Millisecond), time.Duration(st.GetWallNanos()).Round(time.Millisecond), st.GetDetail())
				} else {
					fmt.Fprintf(w, "     %-26s %-9s %8s  %s\n", st.GetName(), st.GetOutcome(), d.Round(100*time.Millisecond), st.GetDetail())
				}
			}
			if j.GetError() != "" {
				fmt.Fprintf(w, "   error      %s\n", j.GetError())
			}
			var findings []string
			for _, f := range j.GetFindings() {
				if !f.GetOk() {
					findings = append(findings, f.GetCheck()+": "+f.GetDetail())
				}
			}
			if len(j.GetFindings()) > 0 {
				fmt.Fprintf(w, "   readiness  %d checks, %d findings\n", len(j.GetFindings()), len(findings))
				for _, f := range findings {
					fmt.Fprintf(w, "     - %s\n", f)
				}
			}
			if c := j.GetConsole(); c != "" {
				fmt.Fprintf(w, "   console    %s\n", strings.ReplaceAll(c, "\n", " | "))
			}
		}
		for _, n := range e.Notes {
			fmt.Fprintf(w, "   note       %s\n", n)
		}
		if e.Verified != "" {
			fmt.Fprintf(w, "   verify     %s\n", e.Verified)
		}
		if e.Failed != "" {
			fmt.Fprintf(w, "   FAILED     %s\n", e.Failed)
		}
	}
	if len(r.Failures) == 0 {
		fmt.Fprintf(w, "\nresult: every verification passed\n")
		return
	}
	fmt.Fprintf(w, "\nresult: %d verification(s) FAILED\n", len(r.Failures))
	for _, f := range r.Failures {
		fmt.Fprintf(w, "  - %s\n", f)
	}
}

func consistencyName(c ferryv1.Consistency) string {
	switch c {
	case ferryv1.Consistency_CONSISTENCY_APP:
		return "app-consistent"
	case ferryv1.Consistency_CONSISTENCY_CRASH:
		return "crash-consistent"
	}
	return "unknown consistency"
}
