package console

import (
	"fmt"
	"math"
	"time"

	"github.com/ferrydr/ferry"
)

// timelineWidth is the timeline's width in SVG units (its viewBox).
const timelineWidth = 960

// timeline is a VM's recovery points over a span of time: one mark per
// column of the drawing, standing for the points that fall in it.
type timeline struct {
	Width      int
	Start, End time.Time
	Marks      []mark
	Ticks      []tick
	// Points, Crash, App and Multi count the points shown; Before those
	// older than the span.
	Points, Crash, App, Multi, Before int
}

// mark is the points of one column: drawn as an app point when one of
// them is app-consistent, ringed when one of them is a multi-VM point.
type mark struct {
	X           float64
	App, Multi  bool
	First, Last ferry.Seq
	Count       int
	Newest      time.Time
}

// Title says what a mark stands for.
func (m mark) Title() string {
	kind := "crash-consistent"
	if m.App {
		kind = "app-consistent"
	}
	multi := ""
	if m.Multi {
		multi = ", multi-VM"
	}
	if m.Count == 1 {
		return fmt.Sprintf("point #%d, %s%s, %s", m.First, kind, multi, whenText(m.Newest))
	}
	return fmt.Sprintf("%d points #%d–#%d, newest %s%s, %s", m.Count, m.First, m.Last, kind, multi, whenText(m.Newest))
}

type tick struct {
	X     float64
	Label string
}

// Summary describes the timeline in words (for screen readers).
func (t timeline) Summary() string {
	return fmt.Sprintf("%d recovery points from %s to %s: %d app-consistent, %d crash-consistent, %d multi-VM",
		t.Points, whenText(t.Start), whenText(t.End), t.App, t.Crash, t.Multi)
}

// buildTimeline places points (oldest first) on a timeline from start to
// end of width columns.
func buildTimeline(points []pointRow, start, end time.Time, width int) timeline {
	t := timeline{Width: width, Start: start, End: end}
	span := end.Sub(start)
	if span <= 0 || width <= 0 {
		return t
	}
	col := func(at time.Time) int {
		return min(width-1, int(float64(at.Sub(start))/float64(span)*float64(width)))
	}
	for _, p := range points {
		if p.Time.Before(start) {
			t.Before++
			continue
		}
		if p.Time.After(end) {
			continue // cut after the page's clock read: the next refresh shows it
		}
		t.Points++
		app, multi := p.Consistency == ferry.App.String(), len(p.Joined) > 0
		switch {
		case app:
			t.App++
		default:
			t.Crash++
		}
		if multi {
			t.Multi++
		}
		x := float64(col(p.Time)) + 0.5
		if n := len(t.Marks); n > 0 && t.Marks[n-1].X == x {
			m := &t.Marks[n-1]
			m.Last, m.Count, m.Newest = p.ID, m.Count+1, p.Time
			m.App, m.Multi = m.App || app, m.Multi || multi
			continue
		}
		t.Marks = append(t.Marks, mark{X: x, App: app, Multi: multi, First: p.ID, Last: p.ID, Count: 1, Newest: p.Time})
	}
	for i := 0; i <= 4; i++ {
		ago := span * time.Duration(4-i) / 4
		label := "now"
		if ago > 0 {
			label = "−" + durText(ago)
		}
		t.Ticks = append(t.Ticks, tick{X: float64(width) * float64(i) / 4, Label: label})
	}
	return t
}

// chart is the drills' bar chart: RTO and RPO side by side per drill.
type chart struct {
	Width, Height int
	Bars          []bar
	Max           time.Duration
	Ticks         []tick // on the Y axis: X is the height
}

type bar struct {
	X, W       float64
	RTOY, RTOH float64
	RPOY, RPOH float64
	HasRPO     bool
	Label      string
	RTO, RPO   time.Duration
	Failed     bool
	LabelX     float64
}

// chartHeight is the drills chart's drawing height (bars' room).
const chartHeight, chartWidth = 180, 960

// drillChart draws ds (oldest first) as pairs of bars.
func drillChart(ds []drill) chart {
	c := chart{Width: chartWidth, Height: chartHeight}
	for _, d := range ds {
		c.Max = max(c.Max, d.RTO, d.RPO)
	}
	if len(ds) == 0 || c.Max <= 0 {
		return c
	}
	top := niceCeil(c.Max)
	c.Max = top
	slot := float64(chartWidth-60) / float64(len(ds))
	w := math.Min(slot*0.35, 40)
	h := func(d time.Duration) float64 { return float64(d) / float64(top) * chartHeight }
	for i, d := range ds {
		x := 60 + float64(i)*slot + slot*0.1
		b := bar{X: x, W: w, RTO: d.RTO, RPO: d.RPO, HasRPO: d.HasRPO, Failed: d.Job.Outcome == ferry.OutcomeFailed,
			Label: fmt.Sprintf("#%d", d.Job.ID), LabelX: x + w}
		b.RTOH = h(d.RTO)
		b.RTOY = chartHeight - b.RTOH
		if d.HasRPO {
			b.RPOH = h(d.RPO)
			b.RPOY = chartHeight - b.RPOH
		}
		c.Bars = append(c.Bars, b)
	}
	for i := 0; i <= 4; i++ {
		v := top * time.Duration(i) / 4
		c.Ticks = append(c.Ticks, tick{X: chartHeight - float64(chartHeight)*float64(i)/4, Label: durText(v)})
	}
	return c
}

// niceSteps are the tops the drills chart's axis rounds up to.
var niceSteps = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 20 * time.Second, 30 * time.Second,
	time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour}

// niceCeil rounds d up to the next of niceSteps (d itself beyond them).
func niceCeil(d time.Duration) time.Duration {
	for _, v := range niceSteps {
		if v >= d {
			return v
		}
	}
	return d
}
