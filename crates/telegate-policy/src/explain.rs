//! What a pack does and what happens to a given frame, and why, in words: the text of
//! `telegate policy check|explain` and of the admin API's `Explain`.

use crate::{
    ConsentRule, Keyring, LocationPrecision, Pack, StateFile, SubjectRecord, Verdict, decide_all,
    format_duration, shape,
};
use std::fmt::Write as _;
use std::time::Duration;
use telegate_frame::{
    DecodeError, PayloadFormat, ValidationConfig, classify, decode, encode, validate, vehicle_topic,
};

/// Why a frame could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("the frame is not a VehicleFrame in proto3-JSON: {0}")]
    NotAFrame(DecodeError),
    #[error("the frame has no body (status, location, …)")]
    NoBody,
    #[error("a shaped record did not decode: {0}")]
    Shaped(DecodeError),
}

/// The pack's services, purposes and rules, one block per purpose.
pub fn check(pack: &Pack) -> String {
    let mut s = format!("{}: valid ({})\n", pack.label(), pack.title);
    for p in &pack.purposes {
        let kinds: Vec<_> = p.kinds.iter().map(|k| k.as_str()).collect();
        let cats: Vec<_> = p.categories.iter().map(|c| c.as_str()).collect();
        let off: Vec<_> = p.off_when.iter().map(|o| o.as_str()).collect();
        let _ = writeln!(s, "\n  {} -> {}", p.id, pack.service_of(p).topic);
        let _ = writeln!(
            s,
            "    basis {}, consent {}, identity {}",
            p.legal_basis.as_str(),
            consent(&p.consent),
            p.identity.as_str()
        );
        let _ = writeln!(
            s,
            "    kinds {}; categories {}",
            kinds.join(", "),
            cats.join(", ")
        );
        let _ = writeln!(
            s,
            "    location {}, time {}, retention {}",
            location(p.location),
            time(p.time_precision),
            format_duration(p.retention)
        );
        if !off.is_empty() || !p.requires.is_empty() {
            let _ = writeln!(
                s,
                "    off when {}; requires {}",
                list(&off),
                list(&p.requires)
            );
        }
        if let Some(period) = p.once_per_vehicle {
            let _ = writeln!(
                s,
                "    at most one record per vehicle and kind every {}",
                format_duration(period)
            );
        }
        if !p.recipients.is_empty() {
            let _ = writeln!(s, "    recipients {}", p.recipients.join("; "));
        }
        let _ = writeln!(s, "    cites {}", list(&p.cite));
    }
    let _ = writeln!(s, "\n  topic retention (the strictest purpose it carries):");
    for t in pack.topics() {
        let _ = writeln!(s, "    {:<30} {}", t.name, format_duration(t.retention));
    }
    s
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A purpose's consent rule in words: `none`, `standing`, `event:SCOPE`, `activation:FEATURE`.
pub fn consent(c: &ConsentRule) -> String {
    match c {
        ConsentRule::None => "none".into(),
        ConsentRule::Standing => "standing".into(),
        ConsentRule::Event(s) => format!("event:{}", s.as_str()),
        ConsentRule::Activation(f) => format!("activation:{f}"),
    }
}

/// A purpose's location precision in words: `exact`, `none`, `N m grid`.
pub fn location(l: LocationPrecision) -> String {
    match l {
        LocationPrecision::Exact => "exact".into(),
        LocationPrecision::None => "none".into(),
        LocationPrecision::Coarse { metres } => format!("{metres} m grid"),
    }
}

fn time(t: Option<Duration>) -> String {
    t.map_or_else(
        || "exact".into(),
        |d| format!("truncated to {}", humantime::format_duration(d)),
    )
}

/// What happens to `frame_json` (a `VehicleFrame` in proto3-JSON) under `pack`, given the
/// subjects in `state` (a state file), with validation judged as at `now_ms` (default: the
/// frame's own capture time, so an example frame does not go stale).
pub fn explain(
    pack: &Pack,
    frame_json: &str,
    state: Option<&StateFile>,
    now_ms: Option<i64>,
) -> Result<String, ExplainError> {
    let (raw, _) = decode(frame_json.trim().as_bytes()).map_err(ExplainError::NotAFrame)?;
    let body = raw.body.as_ref().ok_or(ExplainError::NoBody)?;
    let kind = telegate_frame::FrameKind::of_body(body);
    let topic = vehicle_topic(&raw.vin, kind);
    let now = now_ms.unwrap_or(raw.captured_at_ms);
    let mut s = String::new();
    let frame = match validate(
        &topic,
        &encode(&raw, PayloadFormat::Protobuf),
        now,
        &ValidationConfig::default(),
    ) {
        Ok(f) => f,
        Err(rej) => {
            let _ = writeln!(
                s,
                "REJECTED before policy: {} ({})",
                rej.reason.as_str(),
                rej.detail
            );
            let _ = writeln!(
                s,
                "  telegate.rejected receives the reason and a keyed hash of the VIN, never the payload"
            );
            return Ok(s);
        }
    };
    let recorded: Option<&SubjectRecord> =
        state.and_then(|st| st.subjects.get(frame.vin().expose()));
    // The gateway gives every vehicle key material on first sight; so does the explanation
    // (a throwaway one, like the pseudonym key below).
    let mut subject = recorded.cloned().unwrap_or_default();
    if subject.secret.is_none() {
        subject.secret = Some(crate::SubjectSecret::from_random([0x11; 16], [0x22; 32]));
    }
    let cats: Vec<_> = classify(&frame).iter().map(|c| c.as_str()).collect();
    let _ = writeln!(
        s,
        "frame: {} seq {} captured at {} ms; categories {}",
        kind,
        frame.seq(),
        frame.captured_at_ms(),
        cats.join(", ")
    );
    let _ = writeln!(s, "policy: {}", pack.label());
    let _ = writeln!(
        s,
        "state: {}",
        if recorded.is_some() {
            "recorded for this VIN"
        } else {
            "nothing recorded for this VIN (factory settings, no consents)"
        }
    );
    if let Some(when) = crate::offline(frame.captured_at_ms(), Some(&subject)) {
        let _ = writeln!(
            s,
            "\nOFFLINE MODE ({when:?}): no service receives anything and nothing of the frame is kept, not even in telegate.rejected"
        );
    }
    let keys = Keyring::ephemeral([0x42; 32]);
    let mut any = false;
    for (purpose, decision) in decide_all(pack, &frame, Some(&subject)) {
        any = true;
        let topic = &pack.service_of(purpose).topic;
        match decision.verdict {
            Verdict::Forward(c) => {
                let rec = shape(
                    pack,
                    &pack.label(),
                    &frame,
                    purpose,
                    c,
                    &keys,
                    Some(&subject),
                );
                let _ = writeln!(
                    s,
                    "\n{topic}: FORWARD through purpose {} ({})",
                    purpose.id,
                    purpose.legal_basis.as_str()
                );
                let _ = writeln!(s, "  rule: {}", decision.rule);
                let _ = writeln!(s, "  cites: {}", list(&purpose.cite));
                let headers: Vec<_> = rec
                    .headers
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(s, "  headers: {}", headers.join(" "));
                let (shaped, _) = decode(&rec.payload).map_err(ExplainError::Shaped)?;
                let json = serde_json::to_string(&shaped).unwrap_or_default();
                let _ = writeln!(s, "  value: {json}");
                if purpose.identity == crate::Identity::Pseudonym {
                    let _ = writeln!(
                        s,
                        "  (the pseudonym key above is a throwaway key for this explanation)"
                    );
                }
            }
            Verdict::Drop(reason) => {
                let _ = writeln!(
                    s,
                    "\n{topic}: DROP ({}) for purpose {}",
                    reason.as_str(),
                    purpose.id
                );
                let _ = writeln!(s, "  rule: {}", decision.rule);
                let _ = writeln!(s, "  cites: {}", list(&purpose.cite));
            }
        }
    }
    if !any {
        let _ = writeln!(
            s,
            "\nno purpose in this pack takes {kind} frames: counted as unrouted, sent nowhere"
        );
    }
    Ok(s)
}
