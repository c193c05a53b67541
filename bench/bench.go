// Package bench is Ferry's benchmark harness. Every benchmark measures
// Ferry and its baselines in the same run on the same data, so that the
// ratios hold on a noisy, shared machine: delta throughput against the
// in-process limit and a raw fsync'd write, resync against rsync, RPO under
// churn, failover RTO against disk size, failback transfer against a full
// copy.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Table is one benchmark's result.
type Table struct {
	// Name is the benchmark's (the ferry-bench subcommand).
	Name   string     `json:"name,omitempty"`
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
	Notes  []string   `json:"notes,omitempty"`
	// Values are every figure of the table, for tools.
	Values map[string]float64 `json:"values,omitempty"`
	// Targets are the goals this benchmark is held to, each with the
	// figure measured in this run.
	Targets []Target `json:"targets,omitempty"`
}

// Target is one goal and what this run measured against it.
type Target struct {
	Name     string  `json:"name"`
	Measured float64 `json:"measured"`
	Goal     float64 `json:"goal"`
	// AtMost says the goal is an upper bound (a time, a share of bytes);
	// otherwise it is a lower bound (a rate, a speed-up).
	AtMost bool   `json:"at_most,omitempty"`
	Unit   string `json:"unit,omitempty"`
	Met    bool   `json:"met"`
}

// AddTarget records a goal and whether measured meets it.
func (t *Table) AddTarget(name string, measured, goal float64, atMost bool, unit string) {
	met := measured >= goal
	if atMost {
		met = measured <= goal
	}
	t.Targets = append(t.Targets, Target{Name: name, Measured: measured, Goal: goal, AtMost: atMost, Unit: unit, Met: met})
}

// String is the target's line: "target: NAME measured=X goal=Y met|missed".
func (g Target) String() string {
	op := ">="
	if g.AtMost {
		op = "<="
	}
	verdict := "missed"
	if g.Met {
		verdict = "met"
	}
	return fmt.Sprintf("target: %s measured=%s%s goal=%s%s%s %s", g.Name, strconv.FormatFloat(g.Measured, 'g', 4, 64), g.Unit,
		op, strconv.FormatFloat(g.Goal, 'g', 4, 64), g.Unit, verdict)
}

// Print writes the table for people.
func (t *Table) Print(w io.Writer) {
	fmt.Fprintf(w, "\n%s\n", t.Title)
	widths := make([]int, len(t.Header))
	for i, h := range t.Header {
		widths[i] = len(h)
	}
	for _, r := range t.Rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	line := func(cells []string) {
		for i, c := range cells {
			fmt.Fprintf(w, "  %-*s", widths[i], c)
		}
		fmt.Fprintln(w)
	}
	line(t.Header)
	for _, r := range t.Rows {
		line(r)
	}
	for _, n := range t.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	for _, g := range t.Targets {
		fmt.Fprintln(w, g)
	}
}

// WriteJSON writes tables as JSON.
func WriteJSON(w io.Writer, tables []*Table) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(tables)
}

// Data kinds.
const (
	Incompressible = "incompressible"
	Mixed          = "mixed ~2:1"
	MostlyZeros    = "mostly zeros"
)

// Fill makes n bytes of a kind, deterministically from seed: 4 KiB blocks
// that are random (incompressible), 20% zero, 30% random, 50% text-like
// (mixed, about 2:1 for zstd), or 90% zero and 10% text (mostly zeros).
func Fill(kind string, n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	words := []string{"replica ", "journal ", "failover ", "block ", "point ", "commit ", "disk ", "agent "}
	text := func(blk []byte) {
		for i := 0; i < len(blk); {
			w := words[rng.IntN(len(words))]
			if rng.IntN(3) == 0 {
				w = string(rune('a'+rng.IntN(26))) + w
			}
			i += copy(blk[i:], w)
		}
	}
	random := func(blk []byte) {
		for i := 0; i+8 <= len(blk); i += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				blk[i+k] = byte(v >> (8 * k))
			}
		}
	}
	for off := 0; off < n; off += 4096 {
		blk := b[off:min(off+4096, n)]
		r := rng.IntN(10)
		switch kind {
		case Incompressible:
			random(blk)
		case MostlyZeros:
			if r == 0 {
				text(blk)
			}
		default:
			switch {
			case r < 2:
			case r < 5:
				random(blk)
			default:
				text(blk)
			}
		}
	}
	return b
}

// cpuSelf returns this process's user+system CPU time.
func cpuSelf() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuOf returns a child process's user+system CPU time from /proc.
func cpuOf(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}

// peakRSS returns a process's peak resident memory (VmHWM) in bytes; pid 0
// is this process.
func peakRSS(pid int) int64 { return statusKiB(pid, "VmHWM:") }

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
func f2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

// percentile returns the p-th percentile (0..100) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}
