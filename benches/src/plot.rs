//! SVG plots of the matrix: throughput and latency against clients, one panel per payload,
//! one line per combination.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::combo::Combo;
use crate::load::PointResult;
use crate::report::Results;

/// A fixed colour per combination, so both plots (and every report) agree.
fn colour(c: Combo) -> RGBColor {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    let i = Combo::ALL.iter().position(|x| *x == c).unwrap_or(0);
    COLOURS[i]
}

/// A log-scale range covering `values`, padded.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi { (1.0, 10.0) } else { (lo / 1.6, hi * 1.6) }
}

fn err(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

type Series = (Combo, Vec<(f64, f64)>);

/// For each combination, the points of one payload as (clients, value).
fn series(r: &Results, payload: usize, value: impl Fn(&PointResult) -> f64) -> Vec<Series> {
    r.combos
        .iter()
        .map(|c| {
            let pts = c
                .points
                .iter()
                .filter(|p| p.payload == payload && p.commits > 0)
                .map(|p| (p.clients as f64, value(p)))
                .collect();
            (c.combo, pts)
        })
        .filter(|(_, pts): &Series| !pts.is_empty())
        .collect()
}

fn payloads(r: &Results) -> Vec<usize> {
    let mut v: Vec<usize> =
        r.combos.iter().flat_map(|c| c.points.iter().map(|p| p.payload)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Draws one panel: log-log axes, one line with markers per combination.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    data: &[Series],
    legend: bool,
) -> Result<()> {
    let (x0, x1) = span(data.iter().flat_map(|(_, p)| p.iter().map(|x| x.0)));
    let (y0, y1) = span(data.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(err)?;
    for (combo, pts) in data {
        let c = colour(*combo);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(combo.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(err)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// `1234567` → `1.2M`, `850` → `850`.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Writes `<stem>-throughput.svg` and `<stem>-latency.svg` into `dir`; returns their paths.
pub fn write(r: &Results, dir: &Path, stem: &str) -> Result<Vec<std::path::PathBuf>> {
    let sizes = payloads(r);
    let mut written = Vec::new();
    if sizes.is_empty() {
        return Ok(written);
    }
    let width = 420 * sizes.len() as u32 + 40;

    let path = dir.join(format!("{stem}-throughput.svg"));
    {
        let root = SVGBackend::new(&path, (width, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                &format!("raftkit 3-node cluster: throughput (commits/s), {}", r.machine.profile),
                ("sans-serif", 20),
            )
            .map_err(err)?;
        for (i, (area, payload)) in
            root.split_evenly((1, sizes.len())).iter().zip(&sizes).enumerate()
        {
            let data = series(r, *payload, PointResult::throughput);
            panel(area, &format!("{payload} B payload"), "commits/s", &data, i == 0)?;
        }
        root.present().map_err(err)?;
    }
    written.push(path);

    let path = dir.join(format!("{stem}-latency.svg"));
    {
        let root = SVGBackend::new(&path, (width, 820)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                &format!("raftkit 3-node cluster: write latency (µs), {}", r.machine.profile),
                ("sans-serif", 20),
            )
            .map_err(err)?;
        let areas = root.split_evenly((2, sizes.len()));
        for (i, payload) in sizes.iter().enumerate() {
            let p50 = series(r, *payload, |p| p.latency.p50 as f64);
            panel(&areas[i], &format!("p50, {payload} B payload"), "µs", &p50, i == 0)?;
            let p99 = series(r, *payload, |p| p.latency.p99 as f64);
            panel(
                &areas[sizes.len() + i],
                &format!("p99, {payload} B payload"),
                "µs",
                &p99,
                false,
            )?;
        }
        root.present().map_err(err)?;
    }
    written.push(path);
    Ok(written)
}
