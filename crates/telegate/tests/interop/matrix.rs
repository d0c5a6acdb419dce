//! The checks, their outcomes, and the table the test ends with.

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Check {
    Connect,
    NoCert,
    Qos0,
    Qos1,
    OtherVin,
    Subscribe,
    KeepAlive,
    Oversize,
    Burst,
    Drop,
    Kill9,
}

pub(crate) const CHECKS: [Check; 11] = [
    Check::Connect,
    Check::NoCert,
    Check::Qos0,
    Check::Qos1,
    Check::OtherVin,
    Check::Subscribe,
    Check::KeepAlive,
    Check::Oversize,
    Check::Burst,
    Check::Drop,
    Check::Kill9,
];

impl Check {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Check::Connect => "connect",
            Check::NoCert => "no-cert",
            Check::Qos0 => "qos0",
            Check::Qos1 => "qos1",
            Check::OtherVin => "other-vin",
            Check::Subscribe => "subscribe",
            Check::KeepAlive => "keep-alive",
            Check::Oversize => "oversize",
            Check::Burst => "burst",
            Check::Drop => "drop",
            Check::Kill9 => "kill-9",
        }
    }

    /// A seq no other frame of the run has: cell, check, frame.
    pub(crate) fn seq(self, cell: usize, i: u64) -> u64 {
        let check = CHECKS.iter().position(|c| *c == self).expect("a check") as u64;
        (cell as u64 + 1) * 1_000_000 + (check + 1) * 10_000 + i
    }
}

/// One check of one stack and version.
pub(crate) struct Outcome {
    pub(crate) check: Check,
    /// What the client did wrong by its own report.
    pub(crate) problems: Vec<String>,
    /// Why the check does not apply to this stack.
    pub(crate) not_applicable: Option<&'static str>,
    /// Frames that must be in each service topic exactly once.
    pub(crate) present: Vec<u64>,
    /// Frames that must be in none.
    pub(crate) absent: Vec<u64>,
    /// Frames that may be in each service topic once or not at all, never twice.
    pub(crate) at_most_once: Vec<u64>,
    /// What the clients reported, shown when the check fails.
    pub(crate) context: Vec<String>,
    pub(crate) took: Duration,
}

impl Outcome {
    pub(crate) fn new(check: Check) -> Self {
        Self {
            check,
            problems: Vec::new(),
            not_applicable: None,
            present: Vec::new(),
            absent: Vec::new(),
            at_most_once: Vec::new(),
            context: Vec::new(),
            took: Duration::ZERO,
        }
    }

    /// Records a problem unless `ok`.
    pub(crate) fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(what());
        }
    }
}

/// The matrix (ok, FAIL, n/a, missing) and each failure's details.
/// `results`: each stack and version's label and outcomes.
pub(crate) fn report(results: &[(String, Vec<Outcome>)], missing: &[String]) -> String {
    let mut s = String::from("\nMQTT client interoperability (stack × check):\n");
    let _ = write!(s, "{:<18}", "");
    for c in CHECKS {
        let _ = write!(s, "{:>11}", c.label());
    }
    s.push('\n');
    let mut details = Vec::new();
    for (label, outcomes) in results {
        let _ = write!(s, "{:<18}", label);
        for c in CHECKS {
            let mark = match outcomes.iter().find(|o| o.check == c) {
                None => "missing",
                Some(o) if !o.problems.is_empty() => {
                    for p in &o.problems {
                        details.push(format!("{} {}: {p}", label, c.label()));
                    }
                    for x in &o.context {
                        details.push(format!("    (the client: {x})"));
                    }
                    "FAIL"
                }
                Some(o) if o.not_applicable.is_some() => "n/a",
                Some(_) => "ok",
            };
            let _ = write!(s, "{mark:>11}");
        }
        s.push('\n');
    }
    for m in missing {
        details.push(format!("missing client: {m}"));
    }
    if !details.is_empty() {
        s.push_str("\nfailures:\n");
        for d in details {
            let _ = writeln!(s, "  {d}");
        }
    }
    let na: Vec<String> = results
        .iter()
        .flat_map(|(label, o)| {
            o.iter().filter_map(move |o| {
                o.not_applicable
                    .map(|w| format!("{} {}: {w}", label, o.check.label()))
            })
        })
        .collect();
    if !na.is_empty() {
        s.push_str("not applicable:\n");
        for n in na {
            let _ = writeln!(s, "  {n}");
        }
    }
    s
}
