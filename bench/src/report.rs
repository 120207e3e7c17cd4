//! Results of a scenario: per-round values of both sides, the one summary line
//! (`NAME: dfagent X UNIT, baseline Y UNIT, ratio Z`), a Markdown table and a PNG plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// The font every plot uses, bundled so that no fontconfig is needed (DejaVu Sans, free
/// licence: `bench/assets/DejaVuSans.LICENSE`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One measured quantity, both sides, every round.
#[derive(Clone, Debug)]
pub struct Series {
    /// The summary line's name (`cold-start`, `seq-read`, ...).
    pub name: String,
    /// Unit of the values (`s`, `MB/s`, ...).
    pub unit: String,
    /// Whether bigger values are better (throughput) or smaller (time).
    pub higher_is_better: bool,
    /// dfagent's value in each round.
    pub dfagent: Vec<f64>,
    /// The baseline's value in each round.
    pub baseline: Vec<f64>,
}

impl Series {
    /// An empty series.
    pub fn new(name: &str, unit: &str, higher_is_better: bool) -> Self {
        Series {
            name: name.to_owned(),
            unit: unit.to_owned(),
            higher_is_better,
            dfagent: Vec::new(),
            baseline: Vec::new(),
        }
    }

    /// Record one round.
    pub fn push(&mut self, dfagent: f64, baseline: f64) {
        self.dfagent.push(dfagent);
        self.baseline.push(baseline);
    }

    /// Median of dfagent's values.
    pub fn dfagent_median(&self) -> f64 {
        median(&self.dfagent)
    }

    /// Median of the baseline's values.
    pub fn baseline_median(&self) -> f64 {
        median(&self.baseline)
    }

    /// dfagent's median over the baseline's.
    pub fn ratio(&self) -> f64 {
        self.dfagent_median() / self.baseline_median()
    }

    /// The summary line: `NAME: dfagent X UNIT, baseline Y UNIT, ratio Z`.
    pub fn summary_line(&self) -> String {
        format!(
            "{}: dfagent {} {}, baseline {} {}, ratio {}",
            self.name,
            fmt_value(self.dfagent_median()),
            self.unit,
            fmt_value(self.baseline_median()),
            self.unit,
            fmt_ratio(self.ratio())
        )
    }
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// A value with about three significant digits.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// A ratio with two decimals (three significant digits when small).
pub fn fmt_ratio(r: f64) -> String {
    if r.abs() >= 0.1 || r == 0.0 {
        format!("{r:.2}")
    } else {
        format!("{r:.3}")
    }
}

/// A parsed summary line.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryLine {
    /// Scenario name.
    pub name: String,
    /// dfagent's median.
    pub dfagent: f64,
    /// The baseline's median.
    pub baseline: f64,
    /// The unit of both.
    pub unit: String,
    /// The printed ratio.
    pub ratio: f64,
}

/// Parse `NAME: dfagent X UNIT, baseline Y UNIT, ratio Z`; `None` when the line has another
/// shape (both units must be the same).
pub fn parse_summary_line(line: &str) -> Option<SummaryLine> {
    let (name, rest) = line.split_once(": dfagent ")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let (d, rest) = rest.split_once(", baseline ")?;
    let (b, r) = rest.split_once(", ratio ")?;
    let (dv, du) = d.split_once(' ')?;
    let (bv, bu) = b.split_once(' ')?;
    if du != bu || du.is_empty() || du.contains(char::is_whitespace) {
        return None;
    }
    Some(SummaryLine {
        name: name.to_owned(),
        dfagent: dv.parse().ok()?,
        baseline: bv.parse().ok()?,
        unit: du.to_owned(),
        ratio: r.parse().ok()?,
    })
}

/// A Markdown table of extra per-round columns (besides the series' own values).
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Column headers.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (as many cells as the header has columns).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "row {cells:?}");
        self.rows.push(cells);
    }

    /// The table in Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| {} |", self.header.join(" | "));
        let _ = writeln!(
            s,
            "|{}",
            self.header.iter().map(|_| " ---: |").collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
}

/// The per-round table of a series: round, dfagent, baseline, ratio, then the medians.
pub fn series_table(s: &Series) -> Table {
    let mut t = Table::new(&[
        "round",
        &format!("dfagent {}", s.unit),
        &format!("baseline {}", s.unit),
        "ratio",
    ]);
    for (i, (d, b)) in s.dfagent.iter().zip(&s.baseline).enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            fmt_value(*d),
            fmt_value(*b),
            fmt_ratio(d / b),
        ]);
    }
    t.row(vec![
        "median".into(),
        fmt_value(s.dfagent_median()),
        fmt_value(s.baseline_median()),
        format!("{} (of medians)", fmt_ratio(s.ratio())),
    ]);
    t
}

/// Register the bundled font with plotters (once).
fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    anyhow::ensure!(ok, "the bundled font could not be registered");
    Ok(())
}

/// Plot every series (one panel each): both sides per round, as lines with points.
pub fn plot(path: &Path, title: &str, series: &[&Series]) -> anyhow::Result<()> {
    register_font()?;
    let panels = series.len().max(1);
    let height = 80 + 300 * panels as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((panels, 1));
    for (area, s) in areas.iter().zip(series) {
        let n = s.dfagent.len().max(1);
        let max = s
            .dfagent
            .iter()
            .chain(&s.baseline)
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let top = if max > 0.0 { max * 1.4 } else { 1.0 };
        let caption = format!(
            "{} ({}, {} is better)",
            s.name,
            s.unit,
            if s.higher_is_better {
                "higher"
            } else {
                "lower"
            }
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..(n as f64 + 0.5), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc(s.unit.as_str())
            .x_labels(n.min(20))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (label, values, color) in [
            ("dfagent", &s.dfagent, RED),
            ("baseline", &s.baseline, BLUE),
        ] {
            let pts: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, *v))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(format!("{label} (median {})", fmt_value(median(values))))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_round_trips() {
        let mut s = Series::new("cold-start", "s", false);
        s.push(1.5, 3.0);
        s.push(2.5, 5.0);
        s.push(2.0, 4.0);
        let line = s.summary_line();
        assert_eq!(
            line,
            "cold-start: dfagent 2.00 s, baseline 4.00 s, ratio 0.50"
        );
        let p = parse_summary_line(&line).unwrap();
        assert_eq!(p.name, "cold-start");
        assert_eq!(p.unit, "s");
        assert_eq!((p.dfagent, p.baseline, p.ratio), (2.0, 4.0, 0.5));
        assert!(parse_summary_line("cold-start: dfagent 2 s, baseline 4 ms, ratio 0.5").is_none());
        assert!(parse_summary_line("proxy: 10 MB in 0.5 s").is_none());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn plot_writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let mut s = Series::new("seq-read", "MB/s", true);
        s.push(10.0, 20.0);
        s.push(12.0, 18.0);
        plot(&p, "test", &[&s]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
