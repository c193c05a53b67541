package lab

import (
	"fmt"
	"io"
	"time"
)

// Print writes the report: per stage the measured RTO with its boot share
// beside the simulator's modeled figure, the banner the probe read, and
// every check.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "\nReal-machine drill (libvirt, domain type %s: %s)\n", r.DomainType, r.Why)
	if r.PrimaryBoot > 0 {
		fmt.Fprintf(w, "primary guest boot to SSH banner: %v\n", r.PrimaryBoot.Round(100*time.Millisecond))
	}
	for _, s := range r.Stages {
		fmt.Fprintf(w, "\n%s\n", s.Name)
		if s.Job != nil && s.RTO > 0 {
			fmt.Fprintf(w, "  RTO        %v measured (boot and probe %v) | simulator's model %v (it boots machines instantly)\n",
				s.RTO.Round(100*time.Millisecond), s.Boot.Round(100*time.Millisecond), s.Modeled.Round(100*time.Millisecond))
			for _, st := range s.Job.Steps {
				fmt.Fprintf(w, "    %-26s %-9s %8v  %s\n", st.Name, st.Outcome, st.Wall.Round(time.Millisecond), st.Detail)
			}
		}
		if s.Banner != "" {
			fmt.Fprintf(w, "  banner     %s\n", s.Banner)
		}
		for _, c := range s.Checks {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  %s %s: %s\n", mark, c.What, c.Detail)
		}
	}
	if f := r.Failed(); len(f) > 0 {
		fmt.Fprintf(w, "\n%d checks failed\n", len(f))
	} else {
		fmt.Fprintf(w, "\nevery check passed\n")
	}
}
