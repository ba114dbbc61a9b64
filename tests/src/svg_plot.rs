//! Draws the swarm benchmark's completion times as an SVG: for each series, the share of agents
//! done (y) against seconds since the pulls started (x), as a step curve, with the link limit
//! S/B as a dashed vertical line. Hand-written SVG: one chart does not need a plotting crate.

use std::fmt::Write;
use std::time::Duration;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const X_TICKS: u32 = 8;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One curve: a legend label and each agent's completion time.
pub struct Series<'a> {
    pub label: &'a str,
    pub times: &'a [Duration],
}

/// The chart as an SVG document.
pub fn completion_chart(title: &str, series: &[Series<'_>], link_limit: f64) -> String {
    let longest = series
        .iter()
        .flat_map(|s| s.times.iter())
        .map(Duration::as_secs_f64)
        .fold(link_limit, f64::max);
    let x_max = nice_ceiling(longest * 1.05);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |seconds: f64| LEFT + seconds / x_max * plot_w;
    let y = |share: f64| TOP + (1.0 - share) * plot_h;

    let mut svg = String::new();
    // Writing to a String cannot fail; the results are ignored through `let _`.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for tick in 0..=X_TICKS {
        let seconds = x_max * f64::from(tick) / f64::from(X_TICKS);
        let px = x(seconds);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{seconds:.0}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
    }
    for tick in 0..=4 {
        let share = f64::from(tick) / 4.0;
        let py = y(share);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            share * 100.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the pulls started</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">agents with the image complete</text>"#,
        TOP + plot_h / 2.0
    );
    let limit_x = x(link_limit);
    let _ = writeln!(
        svg,
        r##"<line x1="{limit_x:.1}" y1="{TOP}" x2="{limit_x:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}" fill="#555">S/B = {link_limit:.1} s</text>"##,
        TOP + plot_h,
        limit_x + 4.0,
        TOP + 14.0
    );
    for (index, s) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let mut sorted: Vec<f64> = s.times.iter().map(Duration::as_secs_f64).collect();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len().max(1) as f64;
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (done, seconds) in sorted.iter().enumerate() {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(*seconds),
                y(done as f64 / count),
                x(*seconds),
                y((done + 1) as f64 / count)
            );
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>"#
        );
        let legend_y = TOP + 20.0 + 18.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + plot_w - 250.0,
            LEFT + plot_w - 225.0,
            LEFT + plot_w - 220.0,
            legend_y + 4.0,
            escape(s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2 or 5 × 10^k that is at least `value` (axis end).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(23.0), 50.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }

    #[test]
    fn the_chart_has_one_curve_per_series_and_a_step_per_agent() {
        let fast = [Duration::from_secs(2), Duration::from_secs(3)];
        let slow = [Duration::from_secs(9)];
        let svg = completion_chart(
            "a <title>",
            &[
                Series {
                    label: "fast",
                    times: &fast,
                },
                Series {
                    label: "slow",
                    times: &slow,
                },
            ],
            1.5,
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;title&gt;"));
        assert!(svg.contains("S/B = 1.5 s"));
        // Origin point plus two points per agent.
        let first = svg
            .lines()
            .find(|line| line.starts_with("<polyline"))
            .unwrap_or_default();
        assert_eq!(first.matches(',').count(), 1 + 2 * fast.len());
    }
}
