//! `streams bench --plot FILE.svg`: throughput over time and the latency percentile
//! curve of every case of a run, side by side.

use std::path::Path;

use plotters::prelude::*;
use streams::BoxError;

use super::stats::{percentile_curve, throughput_over_time};
use super::{BenchArgs, Case};

/// Intervals of the throughput curve.
const BUCKETS: usize = 50;

/// Colours of the cases, in order: streams, bare, raw.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Draws `cases` to `path`, an `.svg` file.
pub(super) fn draw(
    path: &Path,
    platform: &str,
    args: &BenchArgs,
    cases: &[Case],
) -> Result<(), BoxError> {
    let svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !svg {
        return Err(format!(
            "--plot {}: only .svg is supported (convert it to PNG with any SVG tool)",
            path.display()
        )
        .into());
    }
    draw_on(SVGBackend::new(path, (1200, 480)), platform, args, cases)
        .map_err(|e| format!("--plot {}: {e}", path.display()).into())
}

fn draw_on<DB: DrawingBackend>(
    backend: DB,
    platform: &str,
    args: &BenchArgs,
    cases: &[Case],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let paced = args.rate.map_or("as fast as possible".to_owned(), |r| {
        format!("paced at {r} msg/s")
    });
    let title = format!(
        "streams bench on {platform}: {} messages of {} B, {paced}",
        args.count, args.size
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(600);

    let series: Vec<_> = cases
        .iter()
        .map(|c| throughput_over_time(&c.handled_us, BUCKETS))
        .collect();
    let x_max = series
        .iter()
        .filter_map(|s| s.last().map(|p| p.0))
        .fold(0.001, f64::max);
    let y_max = series.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("messages handled per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds after the first write")
        .y_label_formatter(&|v| super::thousands(*v))
        .draw()?;
    for ((case, points), colour) in cases.iter().zip(&series).zip(COLOURS.iter().cycle()) {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(case.report.case.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let curves: Vec<_> = cases
        .iter()
        .map(|c| percentile_curve(&c.latencies))
        .collect();
    let nines_max = curves
        .iter()
        .filter_map(|c| c.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let us_max = curves
        .iter()
        .flatten()
        .map(|p| p.1)
        .max()
        .unwrap_or(1)
        .max(2) as f64
        * 1.5;
    let mut chart = ChartBuilder::on(&right)
        .caption("write-to-handler latency", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..nines_max, (1.0..us_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|n| format!("p{}", trim(100.0 * (1.0 - 10f64.powf(-n)))))
        .y_label_formatter(&|us| super::micros(*us as u64))
        .draw()?;
    for ((case, points), colour) in cases.iter().zip(&curves).zip(COLOURS.iter().cycle()) {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(n, us)| (n, us.max(1) as f64)),
                colour.stroke_width(2),
            ))?
            .label(case.report.case.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

/// A percentage without trailing zeros: `99.9`, `50`.
fn trim(p: f64) -> String {
    let s = format!("{p:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::{CaseReport, Latency};
    use super::*;

    fn case(name: &str, n: u64) -> Case {
        Case {
            report: CaseReport {
                case: name.into(),
                published: n,
                publish_secs: 1.0,
                received: n,
                duplicates: 0,
                consume_secs: 1.0,
                latency: Latency::default(),
                allocations_per_message: None,
            },
            latencies: (1..=n).collect(),
            handled_us: (1..=n).map(|i| i * 100).collect(),
        }
    }

    #[test]
    fn draws_every_case_to_an_svg_file() {
        let path = std::env::temp_dir().join(format!("bench-{}.svg", uuid::Uuid::now_v7()));
        let cases = [case("streams", 1000), case("raw", 2000)];
        draw(&path, "memory", &BenchArgs::default(), &cases).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("streams") && svg.contains("raw"));
        assert!(svg.contains("write-to-handler latency"));
        assert!(svg.contains("p99"), "percentile labels");

        let err = draw(Path::new("x.gif"), "memory", &BenchArgs::default(), &cases);
        assert!(err.unwrap_err().to_string().contains("only .svg"));
        let empty = draw(&path, "memory", &BenchArgs::default(), &[]);
        let _ = std::fs::remove_file(&path);
        assert!(empty.is_ok(), "{empty:?}");
    }

    #[test]
    fn percent_labels() {
        assert_eq!(trim(50.0), "50");
        assert_eq!(trim(99.9), "99.9");
        assert_eq!(trim(99.99), "99.99");
    }
}
