//! What a run measured: a table for the terminal, JSON, and a self-contained HTML page.

use crate::procstat::ProcSample;
use crate::tracker::Tracker;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: usize,
    pub published: u64,
    pub delivered: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// PUBACKs received, and the p99 from publish to PUBACK.
    pub acked: u64,
    pub ack_p99_us: u64,
    /// The most frames the vehicles kept unacknowledged at once.
    pub outstanding: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub vehicles: usize,
    pub rate_per_vehicle: f64,
    pub qos: u8,
    pub format: String,
    pub measured_s: f64,
    pub published: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub publish_rate: f64,
    pub delivered_rate: f64,
    /// Publish to consumption from the target's far side.
    pub latency: Latency,
    /// Publish to PUBACK, as the vehicles saw it (from the moment a frame was made, so time
    /// in a full window counts); `None` where nothing is acknowledged (QoS 0, Kafka direct).
    pub puback_latency: Option<Latency>,
    /// PUBACKs received, warm-up included.
    pub acknowledged: u64,
    /// Frames published again: after reconnects, failure reasons, or by the MQTT client on a
    /// resumed session. Each may make a duplicate.
    pub resent: u64,
    /// Ticks on which a vehicle made no frame because its outbox was full.
    pub held_back: u64,
    /// Frames still unacknowledged when the vehicles stopped.
    pub unacknowledged: u64,
    /// Lost frames that had been acknowledged: what a PUBACK promised and the far side lacks.
    pub lost_after_puback: u64,
    /// Target process CPU seconds during the measured window (None when not sampled).
    pub cpu_s: Option<f64>,
    pub cpu_us_per_frame: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// The Kafka broker's CPU per delivered frame and largest resident memory over the same
    /// window, when its pid was given.
    pub broker_cpu_us_per_frame: Option<f64>,
    pub broker_rss_bytes: Option<u64>,
    /// The load generator's own CPU seconds over the same window (this process: vehicles,
    /// observer, tracker), and per frame delivered in it. Beside the target's, it says which
    /// of the two sets the ceiling on a shared machine.
    pub generator_cpu_s: Option<f64>,
    pub generator_cpu_us_per_frame: Option<f64>,
    pub series: Vec<Second>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        target: &str,
        vehicles: usize,
        rate: f64,
        qos: u8,
        format: &str,
        measured_s: f64,
        tracker: &Tracker,
        cpu: Option<(ProcSample, ProcSample)>,
        broker: Option<(ProcSample, ProcSample)>,
        generator: Option<(ProcSample, ProcSample)>,
    ) -> Self {
        let (delivered, lost, duplicates, _) = tracker.totals();
        let series: Vec<Second> = tracker
            .seconds()
            .into_iter()
            .enumerate()
            .map(|(t, s)| Second {
                t,
                published: s.published,
                delivered: s.delivered,
                p50_us: s.latency.value_at_quantile(0.5),
                p99_us: s.latency.value_at_quantile(0.99),
                acked: s.acked,
                ack_p99_us: s.ack_latency.value_at_quantile(0.99),
                outstanding: s.outstanding,
            })
            .collect();
        let measured_published: u64 = series.iter().map(|s| s.published).sum();
        let measured_delivered: u64 = series.iter().map(|s| s.delivered).sum();
        let h = tracker.latency();
        let acks = tracker.ack_latency();
        let d = tracker.delivery();
        let cpu_s = cpu.map(|(a, b)| b.cpu_s - a.cpu_s);
        let per_frame = |cpu_s: f64| cpu_s * 1e6 / measured_delivered.max(1) as f64;
        Self {
            target: target.to_owned(),
            vehicles,
            rate_per_vehicle: rate,
            qos,
            format: format.to_owned(),
            measured_s,
            published: measured_published,
            delivered,
            lost,
            duplicates,
            publish_rate: measured_published as f64 / measured_s.max(1e-9),
            delivered_rate: measured_delivered as f64 / measured_s.max(1e-9),
            latency: Latency::of(&h),
            puback_latency: (!acks.is_empty()).then(|| Latency::of(&acks)),
            acknowledged: d.acknowledged.load(Relaxed),
            resent: d.resent.load(Relaxed),
            held_back: d.held_back.load(Relaxed),
            unacknowledged: d.outstanding.load(Relaxed),
            lost_after_puback: tracker.acked_not_observed(),
            cpu_us_per_frame: cpu_s.map(per_frame),
            cpu_s,
            rss_bytes: cpu.map(|(a, b)| a.rss_bytes.max(b.rss_bytes)),
            broker_cpu_us_per_frame: broker.map(|(a, b)| per_frame(b.cpu_s - a.cpu_s)),
            broker_rss_bytes: broker.map(|(a, b)| a.rss_bytes.max(b.rss_bytes)),
            generator_cpu_s: generator.map(|(a, b)| b.cpu_s - a.cpu_s),
            generator_cpu_us_per_frame: generator.map(|(a, b)| per_frame(b.cpu_s - a.cpu_s)),
            series,
        }
    }

    /// Cores the load generator kept busy over the measured window, on average.
    pub fn generator_cores(&self) -> Option<f64> {
        self.generator_cpu_s.map(|c| c / self.measured_s.max(1e-9))
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The comparison table; ratios are against the first report (the system under test).
pub fn table(reports: &[Report]) -> String {
    let mut s = String::new();
    let w = reports
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(0)
        .max(24);
    let broker = reports.iter().any(|r| r.broker_rss_bytes.is_some());
    let _ = write!(
        s,
        "{:<w$} {:>10} {:>10} {:>7} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9}  telegate/this",
        "target",
        "publish/s",
        "deliver/s",
        "lost",
        "dups",
        "resent",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "ack p50",
        "ack p99",
        "ack max",
        "CPU µs/f",
        "RSS MiB",
    );
    if broker {
        let _ = write!(s, "  {:>14} {:>13}", "Kafka CPU µs/f", "Kafka RSS MiB");
    }
    let _ = write!(s, "  {:>12} {:>9}", "gen CPU µs/f", "gen cores");
    s.push('\n');
    let base = reports
        .first()
        .map(|r| r.delivered_rate)
        .unwrap_or_default();
    let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.0}", b as f64 / 1048576.0));
    let us = |c: Option<f64>| c.map_or("-".into(), |c| format!("{c:.1}"));
    let ack = |f: fn(&Latency) -> u64, r: &Report| {
        r.puback_latency.as_ref().map_or("-".into(), |l| ms(f(l)))
    };
    for r in reports {
        let _ = write!(
            s,
            "{:<w$} {:>10.0} {:>10.0} {:>7} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9}  {:>13.2}",
            r.target,
            r.publish_rate,
            r.delivered_rate,
            r.lost,
            r.duplicates,
            r.resent,
            ms(r.latency.p50_us),
            ms(r.latency.p99_us),
            ms(r.latency.p999_us),
            ms(r.latency.max_us),
            ack(|l| l.p50_us, r),
            ack(|l| l.p99_us, r),
            ack(|l| l.max_us, r),
            us(r.cpu_us_per_frame),
            mib(r.rss_bytes),
            base / r.delivered_rate.max(1e-9),
        );
        if broker {
            let _ = write!(
                s,
                "  {:>14} {:>13}",
                us(r.broker_cpu_us_per_frame),
                mib(r.broker_rss_bytes)
            );
        }
        let _ = write!(
            s,
            "  {:>12} {:>9}",
            us(r.generator_cpu_us_per_frame),
            r.generator_cores()
                .map_or("-".into(), |c| format!("{c:.2}"))
        );
        s.push('\n');
    }
    for r in reports
        .iter()
        .filter(|r| r.lost_after_puback > 0 || r.unacknowledged > 0 || r.held_back > 0)
    {
        let _ = writeln!(
            s,
            "{}: {} lost after their PUBACK, {} still unacknowledged at the end, {} ticks skipped with a full outbox",
            r.target, r.lost_after_puback, r.unacknowledged, r.held_back
        );
    }
    if reports.iter().any(|r| r.generator_cpu_s.is_some()) {
        s.push_str(
            "gen: the load generator itself (vehicles, observer, tracker) over the same window; \
             CPU µs/f: the target\n",
        );
    }
    s
}

fn polyline(points: &[(f64, f64)], max_x: f64, max_y: f64, color: &str) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            format!(
                "{:.1},{:.1}",
                40.0 + x / max_x.max(1e-9) * 540.0,
                190.0 - y / max_y.max(1e-9) * 170.0
            )
        })
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
        pts.join(" ")
    )
}

/// A named, coloured line of (x, y) points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn chart(title: &str, lines: &[Line<'_>], unit: &str) -> String {
    let max_x = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let max_y = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max);
    let mut svg = format!(
        "<figure><figcaption>{title}</figcaption><svg viewBox=\"0 0 600 210\" width=\"600\" height=\"210\">\
         <line x1=\"40\" y1=\"190\" x2=\"580\" y2=\"190\" stroke=\"#888\"/><line x1=\"40\" y1=\"20\" x2=\"40\" y2=\"190\" stroke=\"#888\"/>\
         <text x=\"2\" y=\"24\" font-size=\"10\">{max_y:.0}</text><text x=\"2\" y=\"190\" font-size=\"10\">0</text>\
         <text x=\"560\" y=\"205\" font-size=\"10\">{max_x:.0} s</text><text x=\"44\" y=\"14\" font-size=\"10\">{unit}</text>"
    );
    for (i, (name, color, points)) in lines.iter().enumerate() {
        svg.push_str(&polyline(points, max_x, max_y, color));
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"14\" font-size=\"10\" fill=\"{color}\">{name}</text>",
            200 + i * 120
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A self-contained HTML page: the table, then throughput and latency over time per target.
pub fn html(reports: &[Report]) -> String {
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>telegate load report</title>\
         <style>body{font-family:sans-serif;margin:2em}pre{background:#f4f4f4;padding:1em}figure{display:inline-block;margin:1em}</style>\
         </head><body><h1>telegate load report</h1>",
    );
    let _ = write!(s, "<pre>{}</pre>", table(reports).replace('<', "&lt;"));
    for r in reports {
        let pts = |f: &dyn Fn(&Second) -> f64| {
            r.series
                .iter()
                .map(|x| (x.t as f64, f(x)))
                .collect::<Vec<_>>()
        };
        let _ = write!(
            s,
            "<h2>{}</h2><p>{} vehicles × {} frames/s, QoS {}, {}</p>",
            r.target, r.vehicles, r.rate_per_vehicle, r.qos, r.format
        );
        if let (Some(us), Some(cores)) = (r.generator_cpu_us_per_frame, r.generator_cores()) {
            let _ = write!(
                s,
                "<p>The load generator itself: {us:.1} µs of CPU per frame delivered, \
                 {cores:.2} cores over the measured window.</p>"
            );
        }
        s.push_str(&chart(
            "throughput",
            &[
                ("published", "#1f77b4", pts(&|x| x.published as f64)),
                ("delivered", "#2ca02c", pts(&|x| x.delivered as f64)),
            ],
            "frames/s",
        ));
        s.push_str(&chart(
            "end-to-end latency",
            &[
                ("p50", "#ff7f0e", pts(&|x| x.p50_us as f64 / 1000.0)),
                ("p99", "#d62728", pts(&|x| x.p99_us as f64 / 1000.0)),
                (
                    "PUBACK p99",
                    "#9467bd",
                    pts(&|x| x.ack_p99_us as f64 / 1000.0),
                ),
            ],
            "ms",
        ));
        s.push_str(&chart(
            "kept by the vehicles, not yet acknowledged",
            &[("frames", "#8c564b", pts(&|x| x.outstanding as f64))],
            "frames",
        ));
    }
    let _ = write!(
        s,
        "<h2>data</h2><pre>{}</pre></body></html>",
        serde_json::to_string_pretty(reports)
            .unwrap_or_default()
            .replace('<', "&lt;")
    );
    s
}
