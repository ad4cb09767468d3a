//! The latency-percentile plot (`--svg`): one line per op type, latency (µs, log scale) against
//! percentile on the usual HDR axis: x is the number of nines, `-log10(1 - q)`, so each step right
//! is one more nine (0%, 90%, 99%, 99.9% ...) and the tail gets as much room as the median.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::error::BenchError;
use crate::recorder::Recorder;

/// Points per line: enough for a smooth curve, few enough for a small file.
const POINTS_PER_NINE: u32 = 50;

/// The percentile label of x coordinate `x`.
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

/// (nines, latency µs) along a histogram, up to the resolution its count allows, then the max.
pub fn percentile_points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let x_max = (histogram.len() as f64).log10().max(1.0);
    let steps = (x_max * f64::from(POINTS_PER_NINE)).ceil() as u32;
    let mut points: Vec<(f64, f64)> = (0..steps)
        .map(|i| {
            let x = f64::from(i) / f64::from(POINTS_PER_NINE);
            let q = 1.0 - 10f64.powf(-x);
            (x, histogram.value_at_quantile(q).max(1) as f64)
        })
        .collect();
    points.push((x_max, histogram.max().max(1) as f64));
    points
}

/// The plot as an SVG document.
pub fn render_svg(recorder: &Recorder, title: &str) -> Result<String, BenchError> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = recorder
        .kinds()
        .filter(|(_, stats)| stats.ops() > 0)
        .map(|(kind, stats)| (kind.name(), percentile_points(&stats.latency_us)))
        .collect();
    let x_max = lines
        .iter()
        .flat_map(|(_, points)| points.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(10.0, f64::max)
        * 1.5;
    let mut svg = String::new();
    {
        let fail = |e: &dyn std::fmt::Display| BenchError::Setup(format!("drawing the plot: {e}"));
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (1f64..y_max).log_scale())
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_labels(x_max.ceil() as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, (name, points)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// Writes the plot to `path`.
pub fn write_svg(path: &Path, recorder: &Recorder, title: &str) -> Result<(), BenchError> {
    let svg = render_svg(recorder, title)?;
    std::fs::write(path, svg).map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::OpReply;
    use crate::workload::{Mix, OpKind};

    #[test]
    fn axis_labels_count_nines() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }

    #[test]
    fn points_climb_to_the_max() {
        let mut histogram = crate::recorder::new_histogram();
        for v in 1..=10_000u64 {
            histogram.record(v).unwrap();
        }
        let points = percentile_points(&histogram);
        assert_eq!(points.first(), Some(&(0.0, 1.0)));
        assert_eq!(points.last().unwrap().0, 4.0, "10 000 values resolve four nines");
        assert!(
            points.windows(2).all(|w| w[0].1 <= w[1].1),
            "latency never falls with the percentile"
        );
        assert_eq!(points.last().unwrap().1, histogram.max() as f64);
        assert!(percentile_points(&crate::recorder::new_histogram()).is_empty());
    }

    #[test]
    fn one_line_per_op_type() {
        let mut recorder = Recorder::new(&Mix::parse("incr=1,get=1").unwrap());
        for latency in 1..=2000 {
            recorder.record(OpKind::Incr, &OpReply::ok(None, None), latency);
            recorder.record(OpKind::Get, &OpReply::ok(None, None), latency * 3);
        }
        let svg = render_svg(&recorder, "test run").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
        // Data lines and legend marks are drawn 2 px wide, axes and ticks 1 px.
        let wide = svg.matches(r#"stroke-width="2""#).count();
        assert_eq!(wide, 2 + 2, "two lines and two legend marks");
        assert!(
            svg.contains("\nincr\n") && svg.contains("\nget\n"),
            "legend names each op type"
        );
        assert!(svg.contains("test run"));
        assert!(svg.contains("99.9%"));
    }
}
