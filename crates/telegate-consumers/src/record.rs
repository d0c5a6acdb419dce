//! A record from a telegate service topic, parsed from its key, headers and value.

use telegate_frame::decode;
use telegate_frame::pb::VehicleFrame;

/// What a consumer gets: the subject as its topic may show it, the decision's headers, and
/// the shaped frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    /// VIN, pseudonym or nothing (anonymous), as the purpose allows.
    pub subject: Option<String>,
    pub purpose: String,
    pub seq: Option<u64>,
    pub captured_at_ms: i64,
    pub frame: VehicleFrame,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record has no {0} header")]
    MissingHeader(&'static str),
    #[error("record value is not a VehicleFrame")]
    Undecodable,
}

impl Record {
    pub fn parse(
        topic: &str,
        key: Option<&[u8]>,
        headers: &[(String, String)],
        value: &[u8],
    ) -> Result<Self, RecordError> {
        let header = |name: &'static str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let purpose =
            header("telegate-purpose").ok_or(RecordError::MissingHeader("telegate-purpose"))?;
        let captured_at_ms = header("telegate-captured-at-ms")
            .and_then(|v| v.parse().ok())
            .ok_or(RecordError::MissingHeader("telegate-captured-at-ms"))?;
        let (frame, _) = decode(value).map_err(|_| RecordError::Undecodable)?;
        Ok(Self {
            topic: topic.to_owned(),
            subject: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            purpose: purpose.to_owned(),
            seq: header("telegate-seq").and_then(|v| v.parse().ok()),
            captured_at_ms,
            frame,
        })
    }
}
