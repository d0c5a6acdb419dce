//! A record from a telegate service topic, parsed from its key, headers and value.

use telegate_frame::decode;
use telegate_frame::pb::VehicleFrame;
use telegate_frame::schema::confluent_unframe;

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
    /// The registry's id of the record's schema, in the Confluent wire format.
    pub schema_id: Option<u32>,
    pub frame: VehicleFrame,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record has no {0} header")]
    MissingHeader(&'static str),
    #[error("record value is not a VehicleFrame")]
    Undecodable,
    #[error("record value is not in the Confluent wire format: {0}")]
    Unframed(telegate_frame::schema::FramingError),
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
        // `telegate-encoding: confluent-protobuf`: the registry's framing, then the protobuf.
        let (schema_id, value) = if header("telegate-encoding") == Some("confluent-protobuf") {
            let framed = confluent_unframe(value).map_err(RecordError::Unframed)?;
            if framed.message_indexes != [0] {
                return Err(RecordError::Undecodable);
            }
            (Some(framed.schema_id), framed.payload)
        } else {
            (None, value)
        };
        let (frame, _) = decode(value).map_err(|_| RecordError::Undecodable)?;
        Ok(Self {
            topic: topic.to_owned(),
            subject: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            purpose: purpose.to_owned(),
            seq: header("telegate-seq").and_then(|v| v.parse().ok()),
            captured_at_ms,
            schema_id,
            frame,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegate_frame::schema::confluent_encode;
    use telegate_frame::{PayloadFormat, encode};

    fn headers(encoding: &str) -> Vec<(String, String)> {
        [
            ("telegate-purpose", "trip-log"),
            ("telegate-captured-at-ms", "1700000000000"),
            ("telegate-encoding", encoding),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }

    #[test]
    fn a_record_in_the_confluent_wire_format_reads_with_its_schema_id() {
        let frame = VehicleFrame {
            seq: 3,
            ..Default::default()
        };
        let framed = Record::parse(
            "t",
            Some(b"p"),
            &headers("confluent-protobuf"),
            &confluent_encode(7, &frame),
        )
        .expect("framed record");
        assert_eq!((framed.schema_id, framed.frame.seq), (Some(7), 3));
        let plain = Record::parse(
            "t",
            None,
            &headers("protobuf"),
            &encode(&frame, PayloadFormat::Protobuf),
        )
        .expect("plain record");
        assert_eq!((plain.schema_id, plain.frame.seq), (None, 3));
        assert!(matches!(
            Record::parse("t", None, &headers("confluent-protobuf"), &[1, 2]),
            Err(RecordError::Unframed(_))
        ));
    }
}
