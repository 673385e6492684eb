//! The sweep's pictures, as SVG and PNG: size against KL divergence with the Pareto
//! front, and every tensor's relative weight error per setting. Text is drawn with the
//! bundled DejaVu Sans (`assets/`), so PNGs look the same on machines without fonts.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::{pareto_front, SweepReport};
use crate::error::{Error, Result};

/// The bundled font (DejaVu Sans, free license in `assets/DejaVuSans.LICENSE`).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// KLD values at or below this are drawn here (a log axis has no zero; a bit-identical
/// file has KLD 0).
const KLD_FLOOR: f64 = 1e-6;

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Colours for settings, in order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

fn plot_err<E: std::error::Error + Send + Sync>(path: &Path, e: DrawingAreaErrorKind<E>) -> Error {
    Error::format(path, format!("cannot draw the plot: {e}"))
}

/// One drawing routine for both backends (closures cannot be generic over the backend).
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String>;
}

fn render<F: Figure>(fig: &F, svg: &Path, png: &Path, size: (u32, u32)) -> Result<()> {
    register_font();
    // The backends pick the format by extension, so the temp names keep it.
    let tmp = |p: &Path| -> Result<std::path::PathBuf> {
        crate::atomic::check_output(p)?;
        let ext = p.extension().map_or("out".to_string(), |e| e.to_string_lossy().to_string());
        Ok(crate::atomic::temp_path(p).with_extension(format!("tmp.{ext}")))
    };
    let (svg_tmp, png_tmp) = (tmp(svg)?, tmp(png)?);
    let result = (|| {
        {
            let root = SVGBackend::new(&svg_tmp, size).into_drawing_area();
            fig.draw(&root).map_err(|e| Error::format(svg, e))?;
            root.present().map_err(|e| plot_err(svg, e))?;
        }
        {
            let root = BitMapBackend::new(&png_tmp, size).into_drawing_area();
            fig.draw(&root).map_err(|e| Error::format(png, e))?;
            root.present().map_err(|e| plot_err(png, e))?;
        }
        std::fs::rename(&svg_tmp, svg).map_err(|e| Error::io(svg, e))?;
        std::fs::rename(&png_tmp, png).map_err(|e| Error::io(png, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&svg_tmp);
        let _ = std::fs::remove_file(&png_tmp);
    }
    result
}

/// A sweep result that is a size target: its setting name ([`super::Setting::name`])
/// `size-90MB` or `bpw-3.4`, optionally `-METHOD`.
fn is_size_target(name: &str) -> bool {
    name.starts_with("size-") || name.starts_with("bpw-")
}

struct Pareto<'a>(&'a SweepReport);

impl Figure for Pareto<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        let r = self.0;
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let pts: Vec<(f64, f64)> =
            r.results.iter().map(|x| (x.file_bytes as f64 / 1e6, x.kld_mean.max(KLD_FLOOR))).collect();
        let (xmin, xmax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (ymin, ymax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        // Labels extend to the right of their points: room on that side for the longest
        // (about 8 px per character of the 14 px font, in a plot ~880 px wide).
        let labels = point_labels(r);
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
        let pad = ((xmax - xmin) * 0.06).max(1.0);
        let share = (8.0 * (longest + 1.0) / 880.0).min(0.45);
        let right = (xmax - xmin + pad) * share / (1.0 - share);
        let source = r.source.rsplit('/').next().unwrap_or(&r.source);
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Size vs. divergence from the source: {source}"), ("sans-serif", 22))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d((xmin - pad)..(xmax + right.max(pad)), (ymin / 2.0..ymax * 2.0).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("file size (MB)")
            .y_desc("mean KL divergence vs. source (nats/token, log scale)")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        let front: Vec<(f64, f64)> = pareto_front(&r.results).into_iter().map(|i| pts[i]).collect();
        chart
            .draw_series(LineSeries::new(front, ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(2)))
            .map_err(e)?
            .label("Pareto front")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5).stroke_width(2)));
        // Size targets (`size:…`, `bpw:…` settings) form lowbit's allocated curve: joined by size.
        let mut allocated: Vec<(f64, f64)> = (0..pts.len())
            .filter(|&i| r.results[i].kind == "lowbit" && is_size_target(&r.results[i].name))
            .map(|i| pts[i])
            .collect();
        allocated.sort_by(|a, b| a.0.total_cmp(&b.0));
        if allocated.len() > 1 {
            chart
                .draw_series(LineSeries::new(allocated, ShapeStyle::from(&PALETTE[0]).stroke_width(3)))
                .map_err(e)?
                .label("lowbit allocated to a size")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[0].stroke_width(3)));
        }
        for (kind, colour, label) in
            [("lowbit", PALETTE[0], "lowbit"), ("compare", RGBColor(214, 39, 40), "compared files")]
        {
            let mine: Vec<usize> = (0..pts.len()).filter(|&i| r.results[i].kind == kind).collect();
            if mine.is_empty() {
                continue;
            }
            let series = chart.draw_series(mine.iter().map(|&i| {
                if kind == "lowbit" {
                    Circle::new(pts[i], 6, colour.filled()).into_dyn()
                } else {
                    TriangleMarker::new(pts[i], 8, colour.filled()).into_dyn()
                }
            }));
            let triangle = kind != "lowbit";
            series.map_err(e)?.label(label).legend(move |(x, y)| {
                if triangle {
                    TriangleMarker::new((x + 10, y), 8, colour.filled()).into_dyn()
                } else {
                    Circle::new((x + 10, y), 6, colour.filled()).into_dyn()
                }
            });
            chart
                .draw_series(mine.iter().map(|&i| {
                    Text::new(format!(" {}", labels[i]), pts[i], ("sans-serif", 14).into_font().color(&BLACK))
                }))
                .map_err(e)?;
        }
        // Small and close to the source is the corner no file reaches: the legend goes
        // there, clear of the points and their labels.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// Each result's label on the Pareto plot: its name, with the prefix all compared files'
/// names share (`gemma3-270m-llama-`) left out of theirs, so labels stay short.
fn point_labels(r: &SweepReport) -> Vec<String> {
    short_labels(&r.results.iter().map(|x| (x.name.as_str(), x.kind == "compare")).collect::<Vec<_>>())
}

/// `(name, compared?)` → labels: compared names lose the prefix they all share, cut after
/// a `-`, `_` or `.`, where there are two or more and each keeps something.
fn short_labels(items: &[(&str, bool)]) -> Vec<String> {
    let compared: Vec<&str> = items.iter().filter(|x| x.1).map(|x| x.0).collect();
    let first = compared.first().copied().unwrap_or("");
    let mut common = first.len();
    for name in &compared {
        let same = first.char_indices().zip(name.chars()).take_while(|((_, a), b)| a == b).last();
        common = common.min(same.map_or(0, |((i, a), _)| i + a.len_utf8()));
    }
    let cut = first[..common].rfind(['-', '_', '.']).map_or(0, |i| i + 1);
    let cut = if compared.len() > 1 && compared.iter().all(|n| n.len() > cut) { cut } else { 0 };
    items.iter().map(|&(name, cmp)| if cmp { name[cut..].to_string() } else { name.to_string() }).collect()
}

struct Layers<'a>(&'a SweepReport);

impl Figure for Layers<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        let r = self.0;
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        // Tensors by block number (GGUF files list them name-sorted: blk.0, blk.1, blk.10…),
        // the embedding first and the output last.
        let mut names: Vec<String> =
            r.results.first().map(|x| x.tensors.iter().map(|t| t.name.clone()).collect()).unwrap_or_default();
        let block_of = |n: &str| -> i64 {
            match n.strip_prefix("blk.").and_then(|rest| rest.split('.').next()).and_then(|b| b.parse::<i64>().ok()) {
                Some(b) => b,
                None if n.starts_with("token_embd") => -1,
                None => i64::MAX,
            }
        };
        let file_pos = names.clone();
        names.sort_by_key(|n| (block_of(n), file_pos.iter().position(|m| m == n)));
        let n = names.len().max(2);
        let ys = r.results.iter().flat_map(|x| x.tensors.iter().map(|t| t.relative_error).filter(|&v| v > 0.0));
        let (ymin, ymax) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let (ymin, ymax) = if ymin.is_finite() { (ymin / 1.5, ymax * 1.5) } else { (1e-4, 1.0) };
        let short = |i: usize| -> String {
            names.get(i).map_or(String::new(), |s| s.trim_end_matches(".weight").replace("blk.", "").to_string())
        };
        let mut chart = ChartBuilder::on(root)
            .caption(
                if r.calib.is_empty() {
                    "Relative weight error per tensor, ‖W − Ŵ‖ / ‖W‖ (exact copies not drawn)"
                } else {
                    "Relative output error per tensor, importance-weighted (exact copies not drawn)"
                },
                ("sans-serif", 22),
            )
            .margin(18)
            .x_label_area_size(70)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..(n - 1) as f64, (ymin..ymax).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("tensor (block.tensor, embedding first, by block)")
            .y_desc("relative error (log scale)")
            .x_labels(12)
            .x_label_formatter(&|v| short(v.round() as usize))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        for (k, x) in r.results.iter().enumerate() {
            let colour = if x.kind == "compare" {
                RGBColor(214, 39, 40).mix(0.4 + 0.6 / (k as f64 + 1.0))
            } else {
                PALETTE[k % PALETTE.len()].mix(1.0)
            };
            // Tensors copied exactly (error 0) have no place on a log axis and are skipped.
            let mut pts: Vec<(f64, f64)> = x
                .tensors
                .iter()
                .filter(|t| t.relative_error > 0.0)
                .filter_map(|t| names.iter().position(|n| *n == t.name).map(|i| (i as f64, t.relative_error)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(e)?
                .label(x.name.clone())
                .legend(move |(px, py)| PathElement::new(vec![(px, py), (px + 20, py)], colour.stroke_width(3)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, colour.filled()))).map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

struct Tasks<'a>(&'a SweepReport);

impl Figure for Tasks<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        let r = self.0;
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let base = r.source_result.behaviour.hellaswag_acc_norm.unwrap_or(0.0);
        let pts: Vec<(usize, (f64, f64))> = r
            .results
            .iter()
            .enumerate()
            .filter_map(|(i, x)| {
                x.behaviour.hellaswag_acc_norm.map(|a| (i, (x.kld_mean.max(KLD_FLOOR), 100.0 * (base - a))))
            })
            .collect();
        let (xmin, xmax) =
            pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, p)| (a.min(p.0), b.max(p.0)));
        let (ymin, ymax) = pts.iter().fold((0.0f64, 0.0f64), |(a, b), (_, p)| (a.min(p.1), b.max(p.1)));
        let ypad = ((ymax - ymin) * 0.1).max(1.0);
        let source = r.source.rsplit('/').next().unwrap_or(&r.source);
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Divergence vs. HellaSwag accuracy drop: {source}"), ("sans-serif", 22))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d((xmin / 2.0..xmax * 4.0).log_scale(), (ymin - ypad)..(ymax + ypad))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("mean KL divergence vs. source (nats/token, log scale)")
            .y_desc("acc_norm drop vs. source (points)")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                vec![(xmin / 2.0, 0.0), (xmax * 4.0, 0.0)],
                ShapeStyle::from(&BLACK.mix(0.4)).stroke_width(1),
            ))
            .map_err(e)?;
        for (kind, colour) in [("lowbit", PALETTE[0]), ("compare", RGBColor(214, 39, 40))] {
            let mine: Vec<&(usize, (f64, f64))> = pts.iter().filter(|(i, _)| r.results[*i].kind == kind).collect();
            chart
                .draw_series(mine.iter().map(|(_, p)| {
                    if kind == "lowbit" {
                        Circle::new(*p, 6, colour.filled()).into_dyn()
                    } else {
                        TriangleMarker::new(*p, 8, colour.filled()).into_dyn()
                    }
                }))
                .map_err(e)?;
            chart
                .draw_series(mine.iter().map(|(i, p)| {
                    Text::new(format!(" {}", r.results[*i].name), *p, ("sans-serif", 14).into_font().color(&BLACK))
                }))
                .map_err(e)?;
        }
        Ok(())
    }
}

/// Draws mean KLD (x, log) against the HellaSwag acc_norm drop from the source (y):
/// whether divergence predicts lost task accuracy.
pub fn plot_tasks(r: &SweepReport, svg: &Path, png: &Path) -> Result<()> {
    render(&Tasks(r), svg, png, (1000, 650))
}

/// Draws size (x) against mean KLD (y, log) with labelled points and the Pareto front.
pub fn plot_pareto(r: &SweepReport, svg: &Path, png: &Path) -> Result<()> {
    render(&Pareto(r), svg, png, (1000, 650))
}

/// Draws every setting's per-tensor relative weight error.
pub fn plot_layers(r: &SweepReport, svg: &Path, png: &Path) -> Result<()> {
    render(&Layers(r), svg, png, (1200, 650))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_target_settings_are_recognised_by_their_result_names() {
        for (text, target) in [("size:90MB", true), ("bpw:3.4:gptq", true), ("Q4_K_M", false), ("Q4_K_M:gptq", false)] {
            let name = super::super::Setting::parse(text).unwrap().name();
            assert_eq!(is_size_target(&name), target, "{text} → {name}");
        }
    }

    #[test]
    fn compared_labels_lose_their_shared_prefix_only() {
        let got = short_labels(&[
            ("size-150MB", false),
            ("gemma3-270m-llama-IQ2_XS", true),
            ("gemma3-270m-llama-Q2_K", true),
            ("gemma3-270m-llama-Q3_K_M", true),
        ]);
        assert_eq!(got, ["size-150MB", "IQ2_XS", "Q2_K", "Q3_K_M"]);
        // One compared file: its name as it is; a name that is the whole shared prefix
        // keeps what follows its last separator.
        assert_eq!(short_labels(&[("a-Q4", true), ("Q8_0", false)]), ["a-Q4", "Q8_0"]);
        assert_eq!(short_labels(&[("m-q", true), ("m-q-x", true)]), ["q", "q-x"]);
        assert_eq!(short_labels(&[("m-", true), ("m-x", true)]), ["m-", "m-x"]);
        // A shared prefix ending inside a word is cut at the last separator before it.
        assert_eq!(short_labels(&[("ggml-model-q4", true), ("ggml-model-q5", true)]), ["q4", "q5"]);
        assert_eq!(short_labels(&[("zürich-ä1", true), ("zürich-ä2", true)]), ["ä1", "ä2"]);
    }
}
