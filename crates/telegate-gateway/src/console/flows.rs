//! What flows where, live: frames by kind, records by topic, drops by purpose and reason,
//! rejections, refusals at the edge and how fresh the consent state is. The page is rendered
//! with the counters as they are and then updates itself from `/flows/events` (server-sent
//! events: the last two minutes' snapshots at once, then one a second), drawing each group's
//! rate as a small chart.

use super::Shared;
use super::access::Operator;
use super::page::{layout, respond};
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use maud::html;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;
use strum::VariantArray;
use telegate_frame::now_ms;
use telegate_frame::{FrameKind, RejectReason};
use telegate_mqtt::Refusal;
use telegate_policy::DropReason;
use tokio_util::sync::CancellationToken;

/// One group of series, e.g. frames by kind.
#[derive(Debug, Serialize)]
struct Group {
    id: &'static str,
    title: &'static str,
    /// Label → counter value (or gauge, for `state`).
    series: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct Snapshot {
    at_ms: i64,
    groups: Vec<Group>,
}

/// The series of a group, leaving out those still at 0.
fn counted(series: impl IntoIterator<Item = (String, u64)>) -> BTreeMap<String, f64> {
    let mut kept = BTreeMap::new();
    for (name, n) in series.into_iter().filter(|(_, n)| *n > 0) {
        *kept.entry(name).or_insert(0.0) += n as f64;
    }
    kept
}

fn snapshot(console: &Shared) -> Snapshot {
    let ctx = &console.admin;
    let (pack, frames) = (&ctx.pack, &ctx.frames);
    let purposes = || pack.purposes.iter().enumerate();
    let kinds = FrameKind::VARIANTS
        .iter()
        .map(|k| (k.as_str().to_owned(), frames.valid(*k)));
    let records = purposes().map(|(i, p)| (pack.service_of(p).topic.clone(), frames.forwarded(i)));
    let drops = purposes().flat_map(|(i, p)| {
        DropReason::VARIANTS
            .iter()
            .map(move |r| (format!("{} / {}", p.id, r.as_str()), frames.dropped(i, *r)))
    });
    let rejected = RejectReason::VARIANTS
        .iter()
        .map(|r| (r.as_str().to_owned(), frames.rejected(*r)));
    let edge = ctx.edge.stats();
    let refused = Refusal::VARIANTS
        .iter()
        .map(|r| (r.as_str().to_owned(), edge.refused(*r)));
    let mut state = BTreeMap::new();
    let newest = ctx.state.newest_applied_ms();
    if newest > 0 {
        state.insert(
            "seconds since the last change read".to_owned(),
            ((now_ms() - newest) as f64 / 1000.0).max(0.0).round(),
        );
    }
    state.insert(
        "vehicles in the consent state".to_owned(),
        ctx.state.len() as f64,
    );
    let group = |id, title, series| Group { id, title, series };
    Snapshot {
        at_ms: now_ms(),
        groups: vec![
            group("frames", "Frames accepted, by kind", counted(kinds)),
            group("records", "Records written, by topic", counted(records)),
            group(
                "drops",
                "Records dropped by policy, by purpose and reason",
                counted(drops),
            ),
            group(
                "rejections",
                "Frames rejected, by reason",
                counted(rejected),
            ),
            group(
                "refusals",
                "Refusals at the edge, by reason",
                counted(refused),
            ),
            group("state", "Consent state", state),
        ],
    }
}

fn number(v: f64) -> String {
    format!("{v:.0}")
}

pub(super) async fn show(
    State(console): State<Shared>,
    Extension(op): Extension<Operator>,
) -> Response {
    let snap = snapshot(&console);
    let body = html! {
        h1 { "Flows" }
        p { "Totals since this gateway started; each chart shows the group's rate per second over the last minutes, updated every second." }
        section #flows data-events="/flows/events" {
            @for g in &snap.groups {
                figure.group data-group=(g.id) aria-labelledby={ "g-" (g.id) } {
                    figcaption #{ "g-" (g.id) } { (g.title) }
                    @if g.id != "state" {
                        svg.chart viewBox="0 0 300 60" role="img" aria-label={ (g.title) ", rate per second" } {
                            polyline points="" {}
                        }
                        p.rate { "Rate: " span.now { "—" } " per second" }
                    }
                    dl.totals {
                        @if g.series.is_empty() { dt.none { "none so far" } dd.none { "0" } }
                        @for (name, v) in &g.series {
                            dt { (name) }
                            dd data-metric={ (g.id) ":" (name) } { (number(*v)) }
                        }
                    }
                }
            }
        }
    };
    respond(StatusCode::OK, layout("Flows", Some(&op), body))
}

/// Snapshots kept: two minutes at one a second, as many points as a chart draws.
const HISTORY: usize = 120;

/// The last [`HISTORY`] snapshots, as JSON, oldest first: a page opened now draws the recent
/// rates at once instead of from an empty chart.
#[derive(Debug, Default)]
pub(super) struct History(Mutex<VecDeque<String>>);

impl History {
    fn push(&self, snapshot: String) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(snapshot);
    }

    /// Every kept snapshot, as one JSON array.
    fn json(&self) -> String {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "[{}]",
            h.iter().map(String::as_str).collect::<Vec<_>>().join(",")
        )
    }
}

/// Takes a snapshot into the history every second until `stop` is cancelled.
pub(super) async fn record(console: Shared, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let data = serde_json::to_string(&snapshot(&console)).unwrap_or_default();
        console.history.push(data);
    }
}

/// The history at once, then one snapshot a second until the client goes or the console
/// stops.
pub(super) async fn events(
    State(console): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = console.stop.clone();
    let history = Event::default()
        .event("history")
        .data(console.history.json());
    let ticks =
        tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(Duration::from_secs(1)));
    let live = ticks.map(move |_| {
        let data = serde_json::to_string(&snapshot(&console)).unwrap_or_default();
        Ok(Event::default().event("snapshot").data(data))
    });
    let stream = futures::stream::once(async move { Ok(history) })
        .chain(live)
        .take_until(stop.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_history_keeps_the_latest_snapshots_oldest_first() {
        let h = super::History::default();
        assert_eq!(h.json(), "[]");
        for i in 0..super::HISTORY + 5 {
            h.push(format!("{{\"at_ms\":{i}}}"));
        }
        let kept: Vec<serde_json::Value> = serde_json::from_str(&h.json()).expect("JSON");
        assert_eq!(kept.len(), super::HISTORY);
        assert_eq!(kept[0]["at_ms"], 5);
        assert_eq!(kept[super::HISTORY - 1]["at_ms"], super::HISTORY + 4);
    }
}
