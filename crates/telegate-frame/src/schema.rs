//! The schema of every service record, as a schema registry takes it, and the Confluent wire
//! format that names it in each record: magic byte `0`, the schema's id (4 bytes, big-endian),
//! the message indexes (which message of the schema file; `[0]`, `telegate.v1.VehicleFrame`,
//! is written as the single byte `0`), then the protobuf payload.

/// `proto/telegate/v1/frame.proto` as written: the `.proto` text form of the schema.
pub const FRAME_PROTO: &str = include_str!("../../../proto/telegate/v1/frame.proto");

/// The registry's name for the schema file.
pub const FRAME_PROTO_FILE: &str = "telegate/v1/frame.proto";

/// The message every service record holds.
pub const FRAME_MESSAGE: &str = "telegate.v1.VehicleFrame";

/// frame.proto compiled: its `google.protobuf.FileDescriptorProto`, serialized (no source
/// positions). It imports nothing, so a registry needs no references to resolve it.
pub fn frame_descriptor() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/frame_descriptor.bin"))
}

/// The Confluent magic byte.
const MAGIC: u8 = 0;

/// Bytes before the payload of a `telegate.v1.VehicleFrame` record under schema `id`.
pub const PREFIX_LEN: usize = 6;

/// The prefix of a record under schema `id` holding the schema file's first message.
pub fn confluent_prefix(id: u32) -> [u8; PREFIX_LEN] {
    let [a, b, c, d] = id.to_be_bytes();
    // Message indexes `[0]` are written as a count of 0 (zigzag varint 0).
    [MAGIC, a, b, c, d, 0]
}

/// `msg` (the schema file's first message) in the Confluent wire format under schema `id`,
/// written once into a buffer of its final size.
pub fn confluent_encode<M: prost::Message>(id: u32, msg: &M) -> Vec<u8> {
    let mut value = Vec::with_capacity(PREFIX_LEN + msg.encoded_len());
    value.extend_from_slice(&confluent_prefix(id));
    msg.encode_raw(&mut value);
    value
}

/// What a record's Confluent framing said, and the payload after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    /// Which message of the schema file, outermost first; `[0]` is the first.
    pub message_indexes: Vec<i64>,
    pub payload: &'a [u8],
}

/// A value that is not in the Confluent wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("shorter than the 5 bytes of a Confluent header")]
    Short,
    #[error("magic byte {0}, not 0")]
    Magic(u8),
    #[error("message indexes cut short or malformed")]
    Indexes,
}

/// Reads a record's Confluent framing.
pub fn confluent_unframe(value: &[u8]) -> Result<Framed<'_>, FramingError> {
    let (&magic, rest) = value.split_first().ok_or(FramingError::Short)?;
    if magic != MAGIC {
        return Err(FramingError::Magic(magic));
    }
    let (id, mut rest) = rest.split_first_chunk::<4>().ok_or(FramingError::Short)?;
    let count = zigzag_varint(&mut rest).ok_or(FramingError::Indexes)?;
    let message_indexes = if count == 0 {
        vec![0]
    } else {
        let count = usize::try_from(count).map_err(|_| FramingError::Indexes)?;
        // Each index takes at least one byte: a count past what is left is malformed.
        if count > rest.len() {
            return Err(FramingError::Indexes);
        }
        (0..count)
            .map(|_| zigzag_varint(&mut rest).ok_or(FramingError::Indexes))
            .collect::<Result<_, _>>()?
    };
    Ok(Framed {
        schema_id: u32::from_be_bytes(*id),
        message_indexes,
        payload: rest,
    })
}

/// One zigzag-encoded varint from the front of `bytes`, which then starts after it.
fn zigzag_varint(bytes: &mut &[u8]) -> Option<i64> {
    let raw = prost::encoding::decode_varint(bytes).ok()?;
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::VehicleFrame;
    use prost::Message;

    #[test]
    fn a_framed_record_reads_back_with_its_id_and_the_first_message() {
        let frame = VehicleFrame {
            vin: "WVWZZZ1JZXW000001".into(),
            seq: 7,
            ..Default::default()
        };
        let value = confluent_encode(0x0102_0304, &frame);
        assert_eq!(&value[..6], &[0, 1, 2, 3, 4, 0]);
        let framed = confluent_unframe(&value).expect("framed");
        assert_eq!(framed.schema_id, 0x0102_0304);
        assert_eq!(framed.message_indexes, [0]);
        assert_eq!(
            VehicleFrame::decode(framed.payload).expect("payload"),
            frame
        );
    }

    #[test]
    fn explicit_message_indexes_are_read_as_zigzag_varints() {
        // count 2, then indexes 1 and 3 (zigzag 2 and 6), then a one-byte payload
        let value = [0, 0, 0, 0, 9, 4, 2, 6, 0x42];
        let framed = confluent_unframe(&value).expect("framed");
        assert_eq!(framed.schema_id, 9);
        assert_eq!(framed.message_indexes, [1, 3]);
        assert_eq!(framed.payload, [0x42]);
    }

    #[test]
    fn bad_framing_is_an_error_not_a_panic() {
        assert_eq!(confluent_unframe(&[]), Err(FramingError::Short));
        assert_eq!(confluent_unframe(&[0, 0, 0]), Err(FramingError::Short));
        assert_eq!(
            confluent_unframe(&[1, 0, 0, 0, 1, 0]),
            Err(FramingError::Magic(1))
        );
        assert_eq!(
            confluent_unframe(&[0, 0, 0, 0, 1]),
            Err(FramingError::Indexes)
        );
        assert_eq!(
            confluent_unframe(&[0, 0, 0, 0, 1, 0x7e]),
            Err(FramingError::Indexes),
            "63 indexes announced, none there"
        );
        assert_eq!(
            confluent_unframe(&[0, 0, 0, 0, 1, 0x80]),
            Err(FramingError::Indexes)
        );
    }

    #[test]
    fn the_descriptor_is_frame_proto_alone() {
        let file = prost_types_free_name(frame_descriptor());
        assert_eq!(file, FRAME_PROTO_FILE);
    }

    /// Field 1 (`name`) of a FileDescriptorProto, read by hand: the crate does not depend on
    /// prost-types outside its build script.
    fn prost_types_free_name(descriptor: &[u8]) -> String {
        assert_eq!(
            descriptor[0], 0x0a,
            "field 1, length-delimited, comes first"
        );
        let mut rest = &descriptor[1..];
        let len = prost::encoding::decode_varint(&mut rest).expect("length") as usize;
        String::from_utf8(rest[..len].to_vec()).expect("UTF-8")
    }
}
