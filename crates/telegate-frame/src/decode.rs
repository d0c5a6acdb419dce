//! Bytes → `VehicleFrame`, as binary protobuf or proto3-JSON.

use crate::pb::VehicleFrame;
use prost::Message;

/// How a payload was (or is to be) encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    Protobuf,
    Json,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Protobuf => "protobuf",
            PayloadFormat::Json => "json",
        }
    }

    /// A payload whose first non-blank byte is `{` is JSON. A binary `VehicleFrame` never
    /// starts with 0x7B: that byte is a group-start tag for field 15, and the schema has no
    /// groups.
    pub fn sniff(payload: &[u8]) -> Self {
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => PayloadFormat::Json,
            _ => PayloadFormat::Protobuf,
        }
    }
}

/// Decoding failed. The message names the format, never the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload is not a valid {} VehicleFrame", .0.as_str())]
pub struct DecodeError(pub PayloadFormat);

/// Decodes a payload in whichever format it is in.
pub fn decode(payload: &[u8]) -> Result<(VehicleFrame, PayloadFormat), DecodeError> {
    let format = PayloadFormat::sniff(payload);
    let frame = match format {
        PayloadFormat::Protobuf => {
            VehicleFrame::decode(payload).map_err(|_| DecodeError(format))?
        }
        PayloadFormat::Json => serde_json::from_slice(payload).map_err(|_| DecodeError(format))?,
    };
    Ok((frame, format))
}

/// Encodes a frame (or any generated message) in the format given.
pub fn encode<M: Message + serde::Serialize>(msg: &M, format: PayloadFormat) -> Vec<u8> {
    match format {
        PayloadFormat::Protobuf => msg.encode_to_vec(),
        // Serialising generated types into a Vec cannot fail: no maps with non-string keys.
        PayloadFormat::Json => serde_json::to_vec(msg).unwrap_or_default(),
    }
}
