package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
)

// A small line-chart renderer: enough for the report's few charts, written
// against SVG 1.1 with no dependency. Charts are deterministic (same
// summary, same bytes), so regenerated reports diff cleanly.

// palette gives runs distinguishable colours, in order.
var palette = []string{
	"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
	"#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
}

func colour(i int) string { return palette[i%len(palette)] }

// point is a chart point; a NaN y breaks the line there.
type point struct{ x, y float64 }

type series struct {
	name    string
	colour  string
	pts     []point
	dashed  bool
	markers bool
	// step draws a staircase (each y holds until the next x), for CDFs.
	step bool
}

type chart struct {
	title, xLabel, yLabel string
	// logX uses a logarithmic x axis (points with x ≤ 0 are left out).
	logX bool
	// yFrom0 and xFrom0 start an axis at zero whatever the data.
	yFrom0, xFrom0 bool
	// yRange fixes the y axis when set (hi > lo).
	yRange [2]float64
	series []series
}

// Layout, in SVG user units.
const (
	chartW       = 760
	plotL, plotR = 80, 740
	plotT, plotB = 40, 340
	legendTop    = 390
	legendRow    = 18
)

func (c *chart) render() []byte {
	var b bytes.Buffer
	height := legendTop + legendRow*len(c.series) + 10
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		chartW, height, chartW, height)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", chartW, height)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold" text-anchor="middle">%s</text>`+"\n", chartW/2, esc(c.title))

	xlo, xhi, ylo, yhi, ok := c.bounds()
	if !ok {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", plotL, plotT, plotR-plotL, plotB-plotT)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" fill="#666">no data</text>`+"\n", (plotL+plotR)/2, (plotT+plotB)/2)
		b.WriteString("</svg>\n")
		return b.Bytes()
	}
	fx := func(x float64) float64 {
		if c.logX {
			return plotL + (math.Log10(x)-math.Log10(xlo))/(math.Log10(xhi)-math.Log10(xlo))*(plotR-plotL)
		}
		return plotL + (x-xlo)/(xhi-xlo)*(plotR-plotL)
	}
	fy := func(y float64) float64 { return plotB - (y-ylo)/(yhi-ylo)*(plotB-plotT) }

	// Grid and ticks.
	var xt []float64
	if c.logX {
		xt = logTicks(xlo, xhi)
	} else {
		xt = linearTicks(xlo, xhi)
	}
	for _, t := range xt {
		x := fx(t)
		fmt.Fprintf(&b, `<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="#e5e5e5"/>`+"\n", num(x), plotT, num(x), plotB)
		fmt.Fprintf(&b, `<text x="%s" y="%d" text-anchor="middle">%s</text>`+"\n", num(x), plotB+16, esc(tickLabel(t, xt, c.logX)))
	}
	yt := linearTicks(ylo, yhi)
	for _, t := range yt {
		y := fy(t)
		fmt.Fprintf(&b, `<line x1="%d" y1="%s" x2="%d" y2="%s" stroke="#e5e5e5"/>`+"\n", plotL, num(y), plotR, num(y))
		fmt.Fprintf(&b, `<text x="%d" y="%s" text-anchor="end">%s</text>`+"\n", plotL-6, num(y+4), esc(tickLabel(t, yt, false)))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", plotL, plotT, plotR-plotL, plotB-plotT)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", (plotL+plotR)/2, plotB+36, esc(c.xLabel))
	fmt.Fprintf(&b, `<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">%s</text>`+"\n", (plotT+plotB)/2, (plotT+plotB)/2, esc(c.yLabel))

	// Series. The axes' ranges hold every usable point, so nothing needs
	// clipping (and renderers without clipPath support draw it right).
	b.WriteString("<g>\n")
	for _, s := range c.series {
		var path bytes.Buffer
		pen := false
		for _, p := range s.pts {
			if !c.usable(p) {
				pen = false
				continue
			}
			x, y := fx(p.x), fy(p.y)
			switch {
			case !pen:
				fmt.Fprintf(&path, "M%s %s", num(x), num(y))
			case s.step:
				fmt.Fprintf(&path, "H%sV%s", num(x), num(y))
			default:
				fmt.Fprintf(&path, "L%s %s", num(x), num(y))
			}
			pen = true
		}
		if path.Len() > 0 {
			dash := ""
			if s.dashed {
				dash = ` stroke-dasharray="6 4"`
			}
			fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", path.String(), s.colour, dash)
		}
		if s.markers {
			for _, p := range s.pts {
				if c.usable(p) {
					fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s" stroke="none"/>`+"\n", num(fx(p.x)), num(fy(p.y)), s.colour)
				}
			}
		}
	}
	b.WriteString("</g>\n")

	// Legend, below the plot.
	for i, s := range c.series {
		y := legendTop + legendRow*i
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", plotL, y-4, plotL+28, y-4, s.colour, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", plotL+36, y, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func (c *chart) usable(p point) bool {
	if math.IsNaN(p.x) || math.IsNaN(p.y) || math.IsInf(p.x, 0) || math.IsInf(p.y, 0) {
		return false
	}
	return !c.logX || p.x > 0
}

// bounds returns the axes' ranges, or ok false when there is nothing to
// draw.
func (c *chart) bounds() (xlo, xhi, ylo, yhi float64, ok bool) {
	xlo, ylo = math.Inf(1), math.Inf(1)
	xhi, yhi = math.Inf(-1), math.Inf(-1)
	for _, s := range c.series {
		for _, p := range s.pts {
			if !c.usable(p) {
				continue
			}
			ok = true
			xlo, xhi = min(xlo, p.x), max(xhi, p.x)
			ylo, yhi = min(ylo, p.y), max(yhi, p.y)
		}
	}
	if !ok {
		return 0, 0, 0, 0, false
	}
	if c.xFrom0 && !c.logX {
		xlo = min(xlo, 0)
	}
	if c.yFrom0 {
		ylo = min(ylo, 0)
	}
	if c.yRange[1] > c.yRange[0] {
		ylo, yhi = c.yRange[0], c.yRange[1]
	}
	if c.logX {
		xlo = math.Pow(10, math.Floor(math.Log10(xlo)))
		xhi = math.Pow(10, math.Ceil(math.Log10(xhi)))
		if xhi <= xlo {
			xhi = xlo * 10
		}
	} else {
		xlo, xhi = widen(xlo, xhi)
		step := niceStep((xhi - xlo) / 5)
		xlo, xhi = math.Floor(xlo/step)*step, math.Ceil(xhi/step)*step
	}
	if c.yRange[1] <= c.yRange[0] {
		ylo, yhi = widen(ylo, yhi)
		// Headroom above the highest point, then round to a tick.
		yhi += (yhi - ylo) * 0.05
		step := niceStep((yhi - ylo) / 5)
		yhi = math.Ceil(yhi/step) * step
		if c.yFrom0 && ylo >= 0 {
			ylo = 0
		} else {
			ylo = math.Floor(ylo/step) * step
		}
	}
	return xlo, xhi, ylo, yhi, true
}

// widen gives an empty range some width.
func widen(lo, hi float64) (float64, float64) {
	if hi > lo {
		return lo, hi
	}
	if lo == 0 {
		return 0, 1
	}
	d := math.Abs(lo) * 0.1
	return lo - d, hi + d
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

// linearTicks returns about five round values within [lo, hi].
func linearTicks(lo, hi float64) []float64 {
	step := niceStep((hi - lo) / 5)
	var ts []float64
	for i := math.Ceil(lo/step - 1e-9); ; i++ {
		t := i * step
		if t > hi+step*1e-9 || len(ts) > 20 {
			break
		}
		ts = append(ts, t)
	}
	return ts
}

// logTicks returns the powers of ten in [lo, hi], with 2 and 5 times them
// when the range spans fewer than three decades.
func logTicks(lo, hi float64) []float64 {
	var ts []float64
	dense := math.Log10(hi/lo) < 3
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if m != 1 && !dense {
				continue
			}
			t := m * math.Pow(10, e)
			if t >= lo*(1-1e-9) && t <= hi*(1+1e-9) {
				ts = append(ts, t)
			}
		}
	}
	return ts
}

// tickLabel prints t with as many decimals as the tick spacing needs.
func tickLabel(t float64, ticks []float64, log bool) string {
	if log {
		return strconv.FormatFloat(t, 'g', 3, 64)
	}
	if math.Abs(t) < 1e-12 {
		return "0"
	}
	step := 1.0
	if len(ticks) > 1 {
		step = ticks[1] - ticks[0]
	}
	dec := 0
	if step < 1 {
		dec = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	if math.Abs(t) >= 1e6 {
		return strconv.FormatFloat(t, 'g', 4, 64)
	}
	return strconv.FormatFloat(t, 'f', dec, 64)
}

// num prints an SVG coordinate.
func num(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// esc escapes text for XML content and attributes.
func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
