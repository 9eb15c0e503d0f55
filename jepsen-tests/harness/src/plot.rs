//! `plot.svg`: throughput (completions per second, by outcome) and latency (one dot per
//! operation, log scale) over time, with the fault windows shaded. Hand-written SVG: no fonts or
//! plotting crates needed.

use std::fmt::Write;

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`.
    Ok,
    /// `fail`.
    Fail,
    /// `info`, or never completed.
    Info,
}

/// One operation: when it was invoked and how long it took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpPoint {
    /// Invocation time, s since the start.
    pub start_s: f64,
    /// Time to completion, ms.
    pub latency_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A fault's window.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultWindow {
    /// Start, s.
    pub start_s: f64,
    /// Heal, s.
    pub end_s: f64,
    /// What it was.
    pub label: String,
}

/// What to draw.
#[derive(Clone, Debug, Default)]
pub struct PlotData {
    /// Title line.
    pub title: String,
    /// Length of the x axis, s.
    pub duration_s: f64,
    /// Operations.
    pub ops: Vec<OpPoint>,
    /// Fault windows.
    pub faults: Vec<FaultWindow>,
}

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 980.0;
const TPUT: (f64, f64) = (50.0, 250.0);
const LAT: (f64, f64) = (300.0, 520.0);
const HEIGHT: f64 = 570.0;
/// Latency axis: 1 ms .. 100 s, log scale.
const LAT_DECADES: (f64, f64) = (0.0, 5.0);

fn colour(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "#2a9d3a",
        Outcome::Fail => "#d62728",
        Outcome::Info => "#ff9800",
    }
}

/// Completions per whole second, by outcome: index `s` counts operations completing in
/// `[s, s + 1)`.
pub fn per_second(ops: &[OpPoint], outcome: Outcome, seconds: usize) -> Vec<u64> {
    let mut buckets = vec![0u64; seconds];
    for op in ops.iter().filter(|op| op.outcome == outcome) {
        let done = op.start_s + op.latency_ms / 1000.0;
        if done.is_finite() && done >= 0.0 {
            let s = done.floor() as usize;
            if let Some(bucket) = buckets.get_mut(s) {
                *bucket += 1;
            }
        }
    }
    buckets
}

/// Renders the SVG document.
pub fn render(data: &PlotData) -> String {
    let duration = if data.duration_s.is_finite() && data.duration_s > 0.0 {
        data.duration_s
    } else {
        1.0
    };
    let x = |t: f64| LEFT + (t.clamp(0.0, duration) / duration) * (RIGHT - LEFT);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        escape(&data.title)
    );
    for (i, fault) in data.faults.iter().enumerate() {
        let (x0, x1) = (x(fault.start_s), x(fault.end_s));
        // Labels of consecutive (possibly overlapping) faults alternate between two rows.
        let label_y = TPUT.0 - 4.0 - 11.0 * (i % 2) as f64;
        for (top, bottom) in [TPUT, LAT] {
            let _ = writeln!(
                svg,
                r##"<rect class="fault" x="{x0:.1}" y="{top}" width="{:.1}" height="{}" fill="#e0e0ff" fill-opacity="0.7"><title>{}</title></rect>"##,
                (x1 - x0).max(0.5),
                bottom - top,
                escape(&fault.label)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="9" fill="#404080">{}</text>"##,
            x0 + 2.0,
            label_y,
            escape(&short(&fault.label))
        );
    }

    // Throughput.
    let seconds = duration.ceil() as usize;
    let series: Vec<(Outcome, Vec<u64>)> = [Outcome::Ok, Outcome::Info, Outcome::Fail]
        .into_iter()
        .map(|o| (o, per_second(&data.ops, o, seconds)))
        .collect();
    let peak = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let y_tput = |n: f64| TPUT.1 - n / peak * (TPUT.1 - TPUT.0);
    axes(&mut svg, TPUT, duration, &x);
    for i in 0..=4 {
        let n = peak * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{n:.0}</text>"#,
            LEFT - 4.0,
            y_tput(n) + 3.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">ops/s completed</text>"#,
        (TPUT.0 + TPUT.1) / 2.0,
        (TPUT.0 + TPUT.1) / 2.0
    );
    for (outcome, counts) in &series {
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(s, n)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y_tput(*n as f64)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline class="throughput" fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            colour(*outcome),
            points.join(" ")
        );
    }

    // Latency, log scale.
    let y_lat = |ms: f64| {
        let decades = ms.max(1.0).log10().clamp(LAT_DECADES.0, LAT_DECADES.1);
        LAT.1 - (decades - LAT_DECADES.0) / (LAT_DECADES.1 - LAT_DECADES.0) * (LAT.1 - LAT.0)
    };
    axes(&mut svg, LAT, duration, &x);
    for (i, label) in ["1 ms", "10 ms", "100 ms", "1 s", "10 s", "100 s"]
        .iter()
        .enumerate()
    {
        let y = y_lat(10f64.powi(i as i32));
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{label}</text><line x1="{LEFT}" x2="{RIGHT}" y1="{y:.1}" y2="{y:.1}" stroke="#eeeeee"/>"##,
            LEFT - 4.0,
            y + 3.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">latency</text>"#,
        (LAT.0 + LAT.1) / 2.0,
        (LAT.0 + LAT.1) / 2.0
    );
    for op in &data.ops {
        if !(op.start_s.is_finite() && op.latency_ms.is_finite()) {
            continue;
        }
        let _ = writeln!(
            svg,
            r#"<circle class="op" cx="{:.1}" cy="{:.1}" r="1.6" fill="{}" fill-opacity="0.6"/>"#,
            x(op.start_s),
            y_lat(op.latency_ms),
            colour(op.outcome)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">time since start (s)</text>"#,
        (LEFT + RIGHT) / 2.0,
        HEIGHT - 12.0
    );
    for (i, (label, outcome)) in [
        ("ok", Outcome::Ok),
        ("info (unknown)", Outcome::Info),
        ("fail", Outcome::Fail),
    ]
    .iter()
    .enumerate()
    {
        let lx = RIGHT - 330.0 + i as f64 * 110.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="10" width="10" height="10" fill="{}"/><text x="{}" y="19">{label}</text>"#,
            colour(*outcome),
            lx + 14.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn axes(svg: &mut String, (top, bottom): (f64, f64), duration: f64, x: &dyn Fn(f64) -> f64) {
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        RIGHT - LEFT,
        bottom - top
    );
    let step = tick_step(duration);
    let ticks = (duration / step).floor() as u64;
    for i in 0..=ticks.min(100) {
        let t = i as f64 * step;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#,
            x(t),
            bottom + 13.0
        );
    }
}

/// A round tick spacing giving at most about 12 ticks.
fn tick_step(duration: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|step| duration / step <= 12.0)
        .unwrap_or(1200.0)
}

fn short(label: &str) -> String {
    label.chars().take(28).collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(start_s: f64, latency_ms: f64, outcome: Outcome) -> OpPoint {
        OpPoint {
            start_s,
            latency_ms,
            outcome,
        }
    }

    /// Every quoted attribute that looks numeric is a finite number.
    fn assert_finite(svg: &str) {
        for value in svg.split('"').skip(1).step_by(2) {
            let looks_numeric = value
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == 'N' || c == 'i');
            if looks_numeric && !value.contains(' ') && !value.contains(',') {
                let n: f64 = value.trim_end_matches('%').parse().unwrap_or(f64::NAN);
                assert!(n.is_finite(), "attribute {value:?}");
            }
        }
    }

    #[test]
    fn throughput_counts_completions_in_the_second_they_complete() {
        let ops = [
            op(0.1, 100.0, Outcome::Ok),
            op(0.5, 600.0, Outcome::Ok),
            op(1.9, 50.0, Outcome::Ok),
            op(1.0, 10.0, Outcome::Info),
            op(9.5, 1000.0, Outcome::Ok),
        ];
        assert_eq!(per_second(&ops, Outcome::Ok, 3), vec![1, 2, 0]);
        assert_eq!(per_second(&ops, Outcome::Info, 3), vec![0, 1, 0]);
    }

    #[test]
    fn the_svg_shades_each_fault_window_in_both_panels_and_draws_every_op() {
        let data = PlotData {
            title: "queue <partition> & kill".into(),
            duration_s: 30.0,
            ops: vec![
                op(1.0, 5.0, Outcome::Ok),
                op(2.0, 5000.0, Outcome::Info),
                op(3.0, 20.0, Outcome::Fail),
            ],
            faults: vec![FaultWindow {
                start_s: 10.0,
                end_s: 20.0,
                label: "partition: isolate n2".into(),
            }],
        };
        let svg = render(&data);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="fault""#).count(), 2);
        // 10 s of 30 s: a third of the plot width, starting a third of the way in.
        let third = (RIGHT - LEFT) / 3.0;
        assert!(
            svg.contains(&format!(r#"x="{:.1}""#, LEFT + third)),
            "{svg}"
        );
        assert!(svg.contains(&format!(r#"width="{third:.1}""#)));
        assert_eq!(svg.matches(r#"class="op""#).count(), 3);
        assert_eq!(svg.matches(r#"class="throughput""#).count(), 3);
        assert!(svg.contains("queue &lt;partition&gt; &amp; kill"));
        assert_finite(&svg);
        // The slow info op sits above the fast ok op (smaller y is higher).
        let cy = |colour: &str| -> f64 {
            let at = svg
                .find(&format!(r#"fill="{colour}" fill-opacity="0.6""#))
                .expect("dot");
            let start = svg[..at].rfind("cy=\"").expect("cy") + 4;
            svg[start..]
                .split('"')
                .next()
                .expect("value")
                .parse()
                .expect("number")
        };
        assert!(cy("#ff9800") < cy("#2a9d3a"));
    }

    #[test]
    fn an_empty_run_still_renders_a_finite_plot() {
        let svg = render(&PlotData::default());
        assert_finite(&svg);
        assert_eq!(svg.matches(r#"class="op""#).count(), 0);
    }
}
