//! What reached Kafka: how often each `telegate-seq` is in each service topic. Every frame in
//! this test has a seq no other frame has, so a seq names one frame.

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Reads `topics` from the beginning up to their end as of now, and counts each seq per
/// topic.
pub(crate) async fn seq_counts(topics: &[String]) -> HashMap<(String, u64), u32> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let c = telegate_tests::consumer(&names);
    // Where each partition ends now: everything the gateway acknowledged is before it.
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for t in topics {
        let md = c
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .expect("topic metadata");
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = c
                .fetch_watermarks(t, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            if high > 0 {
                ends.insert((t.clone(), p.id()), high);
            }
        }
    }
    let mut counts: HashMap<(String, u64), u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "could not read the service topics to their end within 60 s: {ends:?} left"
        );
        let Ok(Ok(m)) = tokio::time::timeout(left, c.recv()).await else {
            continue;
        };
        let key = (m.topic().to_owned(), m.partition());
        if let Some(end) = ends.get(&key)
            && m.offset() + 1 >= *end
        {
            ends.remove(&key);
        }
        let seq = m
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "telegate-seq"))
            .and_then(|x| x.value)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        if let Some(seq) = seq {
            *counts.entry((m.topic().to_owned(), seq)).or_default() += 1;
        }
    }
    counts
}

/// What is wrong with `seqs` in `counts` when each should be in every one of `topics`
/// exactly once (`want` 1) or in none (`want` 0); None when all is well.
pub(crate) fn judge(
    counts: &HashMap<(String, u64), u32>,
    topics: &[String],
    seqs: &[u64],
    want: u32,
) -> Option<String> {
    let mut problems = Vec::new();
    for t in topics {
        let short = t.rsplit('.').next().unwrap_or(t);
        let n = |s: &u64| counts.get(&(t.clone(), *s)).copied().unwrap_or(0);
        let missing: Vec<u64> = seqs.iter().filter(|s| n(s) < want).copied().collect();
        let extra: Vec<u64> = seqs.iter().filter(|s| n(s) > want).copied().collect();
        if want == 0 {
            if !extra.is_empty() {
                problems.push(format!(
                    "{short}: {} of {} that must not arrive did (seq {})",
                    extra.len(),
                    seqs.len(),
                    extra[0]
                ));
            }
            continue;
        }
        if !missing.is_empty() {
            problems.push(format!(
                "{short}: {} of {} missing (seq {}…)",
                missing.len(),
                seqs.len(),
                missing[0]
            ));
        }
        if !extra.is_empty() {
            let most = extra.iter().map(n).max().unwrap_or(0);
            problems.push(format!(
                "{short}: {} of {} duplicated (up to {most}×, seq {}…)",
                extra.len(),
                seqs.len(),
                extra[0]
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// What is wrong with `seqs` in `counts` when each may be in every one of `topics` once or
/// not at all, but in no topic twice; None when all is well.
pub(crate) fn judge_at_most_once(
    counts: &HashMap<(String, u64), u32>,
    topics: &[String],
    seqs: &[u64],
) -> Option<String> {
    let mut problems = Vec::new();
    for t in topics {
        let short = t.rsplit('.').next().unwrap_or(t);
        for s in seqs {
            let n = counts.get(&(t.clone(), *s)).copied().unwrap_or(0);
            if n > 1 {
                problems.push(format!("{short}: seq {s} (at most once) is there {n}×"));
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}
