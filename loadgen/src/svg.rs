//! A self-contained SVG picture of a run (or an HTML page holding it):
//! the latency percentile spectrum, throughput per second, p99 ack latency
//! per second and consumer lag per second.
//!
//! The spectrum uses the HdrHistogram plotter's axis: x is 1/(1-p) on a log
//! scale, so 90%, 99%, 99.9%... are equally spaced and the tail gets as much
//! room as the body; y is milliseconds on a log scale too, so a 1 ms ack
//! latency stays readable next to a 2 s end-to-end latency (a backlog in
//! `peaks`). Written by hand: four line
//! charts do not justify a plotting dependency, and the file must open
//! anywhere with no scripts or external resources.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::Report;
use crate::scenario::Outcome;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 230.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 170.0;
const MARGIN_TOP: f64 = 80.0;
const PANEL_GAP: f64 = 70.0;
/// The spectrum stops at 99.999%: 1/(1-p) = 10^5.
const SPECTRUM_DECADES: f64 = 5.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/// A chart area in SVG coordinates with its data ranges. Points are given
/// in axis units: for a log axis, already as log10 of the value.
struct Panel {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
    /// Horizontal grid lines: (axis position, label).
    y_ticks: Vec<(f64, String)>,
}

impl Panel {
    /// A linear y axis from 0 to a round number at or above `y_max`.
    fn linear(index: usize, x_max: f64, y_max: f64) -> Panel {
        let y_max = nice_ceiling(y_max);
        let y_ticks = (0..=4).map(|tick| y_max * f64::from(tick) / 4.0).map(|y| (y, format_value(y))).collect();
        Panel::new(index, x_max, 0.0, y_max, y_ticks)
    }

    /// A log10 y axis covering whole decades around `low..=high` (> 0).
    fn log(index: usize, x_max: f64, low: f64, high: f64) -> Panel {
        let y_min = low.max(1e-3).log10().floor();
        let y_max = high.max(low).max(1e-3).log10().ceil().max(y_min + 1.0);
        let y_ticks =
            (y_min as i32..=y_max as i32).map(|decade| (f64::from(decade), format_value(10f64.powi(decade)))).collect();
        Panel::new(index, x_max, y_min, y_max, y_ticks)
    }

    fn new(index: usize, x_max: f64, y_min: f64, y_max: f64, y_ticks: Vec<(f64, String)>) -> Panel {
        Panel {
            left: MARGIN_LEFT,
            top: MARGIN_TOP + index as f64 * (PANEL_HEIGHT + PANEL_GAP),
            width: WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
            height: PANEL_HEIGHT,
            x_max: x_max.max(1e-9),
            y_min,
            y_max: y_max.max(y_min + 1e-9),
            y_ticks,
        }
    }

    fn point(&self, x: f64, y: f64) -> (f64, f64) {
        let px = self.left + (x / self.x_max).clamp(0.0, 1.0) * self.width;
        let share = ((y - self.y_min) / (self.y_max - self.y_min)).clamp(0.0, 1.0);
        let py = self.top + self.height - share * self.height;
        (px, py)
    }

    /// Frame, title, horizontal grid with y labels.
    fn frame(&self, svg: &mut String, title: &str, y_unit: &str) {
        let (left, top, width, height) = (self.left, self.top, self.width, self.height);
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="#fff" stroke="#999"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{left}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
            top - 10.0,
            escape(title)
        );
        for (value, label) in &self.y_ticks {
            let (_, y) = self.point(0.0, *value);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                left + width,
                left - 6.0,
                y + 4.0,
                escape(label)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 {} {:.1})">{}</text>"#,
            left - 58.0,
            top + height / 2.0,
            left - 58.0,
            top + height / 2.0,
            escape(y_unit)
        );
    }

    /// Vertical grid lines with labels at the given x positions.
    fn x_ticks(&self, svg: &mut String, ticks: &[(f64, String)], x_unit: &str) {
        let bottom = self.top + self.height;
        for (x, label) in ticks {
            let (px, _) = self.point(*x, 0.0);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{bottom}" stroke="#eee"/><text x="{px:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                self.top,
                bottom + 15.0,
                escape(label)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            self.left + self.width / 2.0,
            bottom + 32.0,
            escape(x_unit)
        );
    }

    fn line(&self, svg: &mut String, points: &[(f64, f64)], color: &str) {
        if points.is_empty() {
            return;
        }
        let mut path = String::new();
        for (x, y) in points {
            let (px, py) = self.point(*x, *y);
            let _ = write!(path, "{px:.1},{py:.1} ");
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            path.trim_end()
        );
    }

    fn legend(&self, svg: &mut String, entries: &[(&str, &str)]) {
        for (index, (label, color)) in entries.iter().enumerate() {
            let x = self.left + self.width + 14.0;
            let y = self.top + 14.0 + index as f64 * 18.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}" font-size="11">{}</text>"#,
                x + 18.0,
                x + 24.0,
                y + 4.0,
                escape(label)
            );
        }
    }
}

/// The picture as a standalone SVG document.
pub fn render(outcome: &Outcome, report: &Report) -> String {
    let height = MARGIN_TOP + 4.0 * (PANEL_HEIGHT + PANEL_GAP);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="#fafafa"/>
"##
    );
    let env = &report.environment;
    let title = format!(
        "ringbroker loadgen {}: {} events of {} B, acks {:?}",
        report.scenario, report.totals.planned, report.config.event_bytes, report.config.acks,
    );
    let subtitle = format!(
        "{}: broker {} on CPUs {:?}, loadgen on CPUs {:?}, {} CPUs online",
        env.date_utc,
        env.broker.mode,
        env.broker.cpus.clone().unwrap_or_default(),
        env.loadgen_cpus,
        env.machine_cpus
    );
    let _ = writeln!(svg, r#"<text x="{MARGIN_LEFT}" y="20" font-size="14">{}</text>"#, escape(&title));
    let _ =
        writeln!(svg, r##"<text x="{MARGIN_LEFT}" y="37" font-size="11" fill="#555">{}</text>"##, escape(&subtitle));
    spectrum(&mut svg, outcome);
    let seconds = report.series.len() as f64;
    let rows = &report.series;
    let throughput: [(&str, Vec<(f64, f64)>); 3] = [
        ("sent/s", rows.iter().map(|row| (row.second as f64 + 0.5, row.sent as f64)).collect()),
        ("acked/s", rows.iter().map(|row| (row.second as f64 + 0.5, row.acked as f64)).collect()),
        ("consumed/s", rows.iter().map(|row| (row.second as f64 + 0.5, row.consumed as f64)).collect()),
    ];
    time_panel(&mut svg, 1, "Throughput per second", "events/s", seconds, &throughput);
    let p99: Vec<(f64, f64)> =
        rows.iter().filter_map(|row| Some((row.second as f64 + 0.5, row.ack_p99_us? as f64 / 1e3))).collect();
    time_panel(&mut svg, 2, "p99 producer-ack latency per second", "ms", seconds, &[("p99 ack", p99)]);
    let lag: Vec<(f64, f64)> = rows.iter().filter_map(|row| Some((row.second as f64 + 1.0, row.lag? as f64))).collect();
    time_panel(&mut svg, 3, "Consumer lag (end of each second)", "events", seconds, &[("lag", lag)]);
    svg.push_str("</svg>\n");
    svg
}

/// The SVG inside a minimal HTML page.
pub fn render_html(outcome: &Outcome, report: &Report) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ringbroker loadgen {}</title></head>\n<body style=\"margin:0;background:#fafafa\">\n{}</body></html>\n",
        report.scenario,
        render(outcome, report)
    )
}

/// Panel 0: latency (ms) against percentile on the 1/(1-p) log axis. With
/// consumer groups, one end-to-end line per group instead of the merged one.
fn spectrum(svg: &mut String, outcome: &Outcome) {
    let histograms = crate::report::histograms(outcome);
    let grouped = !outcome.groups.is_empty();
    let groups = outcome
        .groups
        .iter()
        .zip(&outcome.measurements.groups)
        .map(|(plan, group)| (format!("end-to-end, {}", plan.label), &group.e2e));
    let series: Vec<(String, Vec<(f64, f64)>)> = histograms
        .iter()
        // The ack's parts stay in the table and the hgrm files: the panel
        // shows what a user waits for.
        .filter(|(name, _)| !name.starts_with("ack_"))
        .filter(|(name, _)| !(grouped && *name == "e2e"))
        .map(|(name, hist)| (label_of(name).to_string(), *hist))
        .chain(groups)
        .filter(|(_, hist)| !hist.is_empty())
        .map(|(label, hist)| (label, spectrum_points(hist)))
        .collect();
    let values = || series.iter().flat_map(|(_, points)| points.iter().map(|(_, y)| *y)).filter(|y| *y > 0.0);
    let low = values().fold(f64::INFINITY, f64::min);
    let high = values().fold(0.0, f64::max);
    let panel = Panel::log(0, SPECTRUM_DECADES, if low.is_finite() { low } else { 1.0 }, high);
    panel.frame(svg, "Latency by percentile", "ms (log scale)");
    let ticks: Vec<(f64, String)> = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect();
    panel.x_ticks(svg, &ticks, "percentile (log scale of 1/(1-p))");
    let mut legend = Vec::new();
    for (index, (label, points)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        // Zero (below 1 us) has no logarithm: draw it on the bottom line.
        let logged: Vec<(f64, f64)> =
            points.iter().map(|(x, y)| (*x, if *y > 0.0 { y.log10() } else { panel.y_min })).collect();
        panel.line(svg, &logged, color);
        legend.push((label.as_str(), color));
    }
    panel.legend(svg, &legend);
}

/// (log10(1/(1-p)), ms) points up to 99.999%, the max drawn at the right edge.
fn spectrum_points(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    let limit = 10f64.powf(SPECTRUM_DECADES);
    let mut points = Vec::new();
    for step in hist.iter_quantiles(5) {
        let quantile = step.quantile_iterated_to();
        let x = if quantile >= 1.0 { SPECTRUM_DECADES } else { (1.0 / (1.0 - quantile)).min(limit).log10() };
        points.push((x, step.value_iterated_to() as f64 / 1e3));
    }
    points
}

fn time_panel(
    svg: &mut String,
    index: usize,
    title: &str,
    unit: &str,
    seconds: f64,
    series: &[(&str, Vec<(f64, f64)>)],
) {
    let y_max = series.iter().flat_map(|(_, points)| points.iter().map(|(_, y)| *y)).fold(0.0, f64::max);
    let panel = Panel::linear(index, seconds.max(1.0), y_max);
    panel.frame(svg, title, unit);
    // Whole seconds between ticks, about ten ticks in all.
    let step = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|step| seconds / step <= 10.0)
        .unwrap_or(1200.0);
    let ticks: Vec<(f64, String)> = (0..)
        .map(|tick| f64::from(tick) * step)
        .take_while(|second| *second <= seconds.max(1.0))
        .map(|second| (second, format!("{second:.0}")))
        .collect();
    panel.x_ticks(svg, &ticks, "seconds since start");
    let mut legend = Vec::new();
    for (index, (label, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = COLORS[index % COLORS.len()];
        panel.line(svg, points, color);
        legend.push((*label, color));
    }
    panel.legend(svg, &legend);
}

/// Legend labels: short, the legend column is narrow.
fn label_of(name: &str) -> &'static str {
    match name {
        "ack" => "producer ack",
        "e2e" => "end-to-end",
        "send_delay" => "send delay",
        _ => "latency",
    }
}

/// The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a
/// power of ten) at or above `value`: an axis that ends close to the data.
fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|nice| *nice >= value * (1.0 - 1e-12))
        .unwrap_or(value)
}

/// Axis labels: 1.5k, 2M, 0.25.
fn format_value(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{}M", trim(v / 1e6)),
        v if v >= 1e3 => format!("{}k", trim(v / 1e3)),
        v => trim(v),
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency_histogram;

    #[test]
    fn axes_round_to_readable_values() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 4.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(1001.0), 1200.0);
        assert_eq!(nice_ceiling(200_192.0), 250_000.0);
        assert_eq!(format_value(1_500_000.0), "1.5M");
        assert_eq!(format_value(2500.0), "2.5k");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn the_spectrum_runs_from_the_minimum_to_the_max_on_a_log_axis() {
        let mut hist = latency_histogram();
        for value in 1..=100_000 {
            hist.record(value).unwrap();
        }
        let points = spectrum_points(&hist);
        assert_eq!(points[0], (0.0, 0.001));
        let (x_last, y_last) = *points.last().unwrap();
        assert_eq!(x_last, SPECTRUM_DECADES);
        assert!((y_last - hist.max() as f64 / 1e3).abs() < 1e-9);
        // Uniform over 0..100 ms: the value at percentile p is p * 100 ms,
        // and x = 2 is p99 (99 ms).
        for (x, y) in &points[..points.len() - 1] {
            let expected = (1.0 - 10f64.powf(-x)) * 100.0;
            assert!((y - expected).abs() <= expected * 0.002 + 0.002, "x {x}: {y} vs {expected}");
        }
        assert!(points.windows(2).all(|pair| pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1));
    }
}
