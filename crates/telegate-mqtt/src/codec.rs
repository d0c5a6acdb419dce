//! MQTT 3.1.1 and 5 on the wire, through rumqttc's codec (`rumqttc::mqttbytes`), which
//! reads and writes every packet of both versions with public fields. rumqttd's codec
//! (`rumqttd::protocol`) keeps a publish's QoS and packet id crate-private, so a server built
//! on it could not acknowledge a publish by its packet id.
//!
//! The edge speaks in the version-neutral terms below; this module is the only place that
//! knows which version a connection speaks.

use crate::Refusal;
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (and 3.1).
    V4,
    V5,
}

/// What a CONNECT asks for.
#[derive(Debug)]
pub struct Hello {
    pub version: Version,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// MQTT 5 only; 3.1.1 sessions that are not clean never expire on their own.
    pub session_expiry: Option<u32>,
    /// MQTT 5 only: how many unacknowledged QoS 1 publishes the client takes from us.
    pub receive_maximum: Option<u16>,
}

/// A packet from a vehicle, after CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Publish {
        qos: u8,
        pkid: u16,
        /// A resend of a publish the vehicle got no PUBACK for.
        dup: bool,
        retain: bool,
        topic: Bytes,
        payload: Bytes,
        /// MQTT 5: the user property `traceparent` (W3C trace context), as sent, unchecked.
        traceparent: Option<String>,
    },
    PubAck {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        /// Filter and requested QoS.
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet a client never sends to a server after CONNECT (a second CONNECT, QoS 2
    /// flow, server packets, MQTT 5 AUTH).
    Unexpected,
}

/// Why a read produced no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Not a whole packet yet: read more bytes.
    Incomplete,
    /// A refusal that ends the connection.
    Refused(Refusal),
}

fn read_error_v4(e: m4::Error) -> ReadError {
    match e {
        m4::Error::InsufficientBytes(_) => ReadError::Incomplete,
        m4::Error::PayloadSizeLimitExceeded(_) => ReadError::Refused(Refusal::PacketTooLarge),
        _ => ReadError::Refused(Refusal::MalformedPacket),
    }
}

fn read_error_v5(e: m5::Error) -> ReadError {
    match e {
        m5::Error::InsufficientBytes(_) => ReadError::Incomplete,
        m5::Error::PayloadSizeLimitExceeded { .. } => ReadError::Refused(Refusal::PacketTooLarge),
        _ => ReadError::Refused(Refusal::MalformedPacket),
    }
}

/// The length of the whole packet at the front of `buf`, once it is there and within `max`.
/// The fixed header is the same in both versions. `max` bounds the whole packet, fixed header
/// included, as MQTT 5 defines Maximum Packet Size (§3.1.2.11.4); the library's check bounds
/// the remaining length, so it is given `max` less the header's own bytes once they are known.
fn framed(buf: &BytesMut, max: usize) -> Result<usize, ReadError> {
    let header = buf
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(0, |i| i + 2);
    m4::check(buf.iter(), max.saturating_sub(header))
        .map(|header| header.frame_length())
        .map_err(read_error_v4)
}

/// Whether a fixed header's flags are what both versions fix them to: PUBLISH carries DUP,
/// QoS (never 3) and RETAIN; PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0b0010; every other
/// packet 0 (MQTT 3.1.1 §2.2.2, MQTT 5 §2.1.3). rumqttc's readers do not check them.
fn flags_valid(first: u8) -> bool {
    let flags = first & 0x0F;
    match first >> 4 {
        3 => (flags >> 1) & 0b11 != 0b11,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    }
}

/// Frames the next packet and checks its fixed header's flags.
fn framed_checked(buf: &BytesMut, max: usize) -> Result<usize, ReadError> {
    let len = framed(buf, max)?;
    if !flags_valid(buf[0]) {
        return Err(ReadError::Refused(Refusal::MalformedPacket));
    }
    Ok(len)
}

/// A decoding error of a packet that was framed whole. The readers have consumed it by then,
/// so running out of bytes inside it (a length that points past its end) cannot mean "read
/// more": the packet is malformed.
fn after_framing(e: ReadError) -> ReadError {
    match e {
        ReadError::Incomplete => ReadError::Refused(Refusal::MalformedPacket),
        e => e,
    }
}

/// Reads the CONNECT that opens every connection, in whichever version the client speaks:
/// the protocol level byte decides before the packet is decoded.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Hello, ReadError> {
    // Frame first (length and size limit), then look at the level: fixed header, then
    // the protocol name (2 + 4 bytes for "MQTT", 2 + 6 for 3.1's "MQIsdp"), then the level,
    // all within this packet (what follows it is not its business).
    let packet = &buf[..framed(buf, max)?];
    if packet[0] >> 4 != 1 {
        return Err(ReadError::Refused(Refusal::ProtocolError));
    }
    if !flags_valid(packet[0]) {
        return Err(ReadError::Refused(Refusal::MalformedPacket));
    }
    let header = 1 + packet[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let name_len = packet
        .get(header..header + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(ReadError::Refused(Refusal::MalformedPacket))?;
    let level = *packet
        .get(header + 2 + name_len)
        .ok_or(ReadError::Refused(Refusal::MalformedPacket))?;
    match level {
        3 | 4 => match v4::Packet::read(buf, max)
            .map_err(read_error_v4)
            .map_err(after_framing)?
        {
            v4::Packet::Connect(c) => Ok(Hello {
                version: Version::V4,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                session_expiry: None,
                receive_maximum: None,
            }),
            _ => Err(ReadError::Refused(Refusal::ProtocolError)),
        },
        5 => match v5::Packet::read(buf, Some(max_u32(max)))
            .map_err(read_error_v5)
            .map_err(after_framing)?
        {
            v5::Packet::Connect(c, _, _) => Ok(Hello {
                version: Version::V5,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                session_expiry: c
                    .properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval),
                receive_maximum: c.properties.as_ref().and_then(|p| p.receive_maximum),
            }),
            _ => Err(ReadError::Refused(Refusal::ProtocolError)),
        },
        _ => Err(ReadError::Refused(Refusal::ProtocolVersion)),
    }
}

fn max_u32(max: usize) -> u32 {
    u32::try_from(max).unwrap_or(u32::MAX)
}

/// The first `traceparent` among a publish's user properties: moved out, not copied.
pub(crate) fn traceparent(properties: Vec<(String, String)>) -> Option<String> {
    properties
        .into_iter()
        .find_map(|(name, value)| (name == "traceparent").then_some(value))
}

/// Reads the next packet after CONNECT.
pub fn read(version: Version, buf: &mut BytesMut, max: usize) -> Result<Inbound, ReadError> {
    match version {
        Version::V4 => read_v4(buf, max),
        Version::V5 => read_v5(buf, max),
    }
}

fn read_v4(buf: &mut BytesMut, max: usize) -> Result<Inbound, ReadError> {
    framed_checked(buf, max)?;
    let packet = v4::Packet::read(buf, max)
        .map_err(read_error_v4)
        .map_err(after_framing)?;
    Ok(match packet {
        v4::Packet::Publish(p) => Inbound::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            retain: p.retain,
            topic: Bytes::from(p.topic),
            payload: p.payload,
            traceparent: None,
        },
        v4::Packet::PubAck(a) => Inbound::PubAck { pkid: a.pkid },
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect,
        _ => Inbound::Unexpected,
    })
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Result<Inbound, ReadError> {
    // A DISCONNECT without a reason code (remaining length 0) is a normal disconnection;
    // the codec only takes the long form.
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Inbound::Disconnect);
    }
    framed_checked(buf, max)?;
    let packet = v5::Packet::read(buf, Some(max_u32(max)))
        .map_err(read_error_v5)
        .map_err(after_framing)?;
    Ok(match packet {
        v5::Packet::Publish(p) => {
            // Topic aliases are not offered (topic alias maximum 0): a publish must name
            // its topic.
            if p.topic.is_empty() {
                return Err(ReadError::Refused(Refusal::ProtocolError));
            }
            Inbound::Publish {
                qos: p.qos as u8,
                pkid: p.pkid,
                dup: p.dup,
                retain: p.retain,
                topic: p.topic,
                payload: p.payload,
                traceparent: p
                    .properties
                    .and_then(|props| traceparent(props.user_properties)),
            }
        }
        v5::Packet::PubAck(a) => Inbound::PubAck { pkid: a.pkid },
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(_) => Inbound::Disconnect,
        _ => Inbound::Unexpected,
    })
}

/// How a CONNECT is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectCode {
    Accepted,
    NotAuthorized,
    UnsupportedVersion,
    /// The edge holds as many vehicles as it may.
    ServerBusy,
}

/// What the edge tells an MQTT 5 client it supports, in the CONNACK.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    pub receive_maximum: u16,
    pub max_packet_bytes: usize,
    /// Set when the edge imposes a keep-alive other than the client's.
    pub server_keep_alive: Option<u16>,
    /// Set when the edge caps the session expiry the client asked for.
    pub session_expiry: Option<u32>,
}

/// How a QoS 1 publish from a vehicle ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The pipeline has taken the frame.
    Accepted,
    /// The pipeline could not take it; the vehicle must keep it and send it again.
    Failed,
    /// The vehicle may not publish there.
    NotAuthorized,
}

impl AckOutcome {
    /// The outcome of a frame whose records were all written (`true`) or not.
    pub fn of_delivery(written: bool) -> Self {
        match written {
            true => AckOutcome::Accepted,
            false => AckOutcome::Failed,
        }
    }
}

/// Encodes packets for one connection's version into its write buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoder(pub Version);

impl Encoder {
    fn put4(buf: &mut BytesMut, p: v4::Packet) {
        // Everything written here is small and well-formed; a failure would be a bug in
        // the edge, and the connection is closed by the caller's next read anyway.
        if let Err(e) = p.write(buf, usize::MAX) {
            tracing::error!(error = %e, "encoding an MQTT 3.1.1 packet failed");
        }
    }

    fn put5(buf: &mut BytesMut, p: v5::Packet) {
        if let Err(e) = p.write(buf, None) {
            tracing::error!(error = %e, "encoding an MQTT 5 packet failed");
        }
    }

    pub(crate) fn connack(
        self,
        buf: &mut BytesMut,
        code: ConnectCode,
        session_present: bool,
        o: Offer,
    ) {
        match self.0 {
            Version::V4 => {
                let code = match code {
                    ConnectCode::Accepted => v4::ConnectReturnCode::Success,
                    ConnectCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                    ConnectCode::UnsupportedVersion => {
                        v4::ConnectReturnCode::RefusedProtocolVersion
                    }
                    ConnectCode::ServerBusy => v4::ConnectReturnCode::ServiceUnavailable,
                };
                Self::put4(
                    buf,
                    v4::Packet::ConnAck(v4::ConnAck::new(code, session_present)),
                );
            }
            Version::V5 => {
                let code = match code {
                    ConnectCode::Accepted => v5::ConnectReturnCode::Success,
                    ConnectCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    ConnectCode::UnsupportedVersion => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                    ConnectCode::ServerBusy => v5::ConnectReturnCode::ServerBusy,
                };
                let properties = v5::ConnAckProperties {
                    session_expiry_interval: o.session_expiry,
                    receive_max: Some(o.receive_maximum),
                    max_qos: Some(1),
                    retain_available: Some(0),
                    max_packet_size: Some(max_u32(o.max_packet_bytes)),
                    assigned_client_identifier: None,
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: Some(0),
                    server_keep_alive: o.server_keep_alive,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                };
                Self::put5(
                    buf,
                    v5::Packet::ConnAck(v5::ConnAck {
                        session_present,
                        code,
                        properties: (code == v5::ConnectReturnCode::Success).then_some(properties),
                    }),
                );
            }
        }
    }

    /// The PUBACK for a QoS 1 publish. An MQTT 3.1.1 PUBACK can only mean success: the
    /// caller disconnects instead of sending one for anything else.
    pub(crate) fn puback(self, buf: &mut BytesMut, pkid: u16, outcome: AckOutcome) {
        match self.0 {
            Version::V4 => Self::put4(buf, v4::Packet::PubAck(v4::PubAck::new(pkid))),
            Version::V5 => {
                let mut ack = v5::PubAck::new(pkid, None);
                ack.reason = match outcome {
                    AckOutcome::Accepted => v5::PubAckReason::Success,
                    AckOutcome::Failed => v5::PubAckReason::ImplementationSpecificError,
                    AckOutcome::NotAuthorized => v5::PubAckReason::NotAuthorized,
                };
                Self::put5(buf, v5::Packet::PubAck(ack));
            }
        }
    }

    /// `granted[i]` is the QoS granted for the i-th filter, or `None` if it was refused.
    pub(crate) fn suback(self, buf: &mut BytesMut, pkid: u16, granted: &[Option<u8>]) {
        match self.0 {
            Version::V4 => {
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(0) => v4::SubscribeReasonCode::Success(m4::QoS::AtMostOnce),
                        Some(_) => v4::SubscribeReasonCode::Success(m4::QoS::AtLeastOnce),
                        None => v4::SubscribeReasonCode::Failure,
                    })
                    .collect();
                Self::put4(buf, v4::Packet::SubAck(v4::SubAck::new(pkid, codes)));
            }
            Version::V5 => {
                let return_codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(0) => v5::SubscribeReasonCode::Success(m5::QoS::AtMostOnce),
                        Some(_) => v5::SubscribeReasonCode::Success(m5::QoS::AtLeastOnce),
                        None => v5::SubscribeReasonCode::NotAuthorized,
                    })
                    .collect();
                Self::put5(
                    buf,
                    v5::Packet::SubAck(v5::SubAck {
                        pkid,
                        return_codes,
                        properties: None,
                    }),
                );
            }
        }
    }

    pub(crate) fn unsuback(self, buf: &mut BytesMut, pkid: u16, existed: &[bool]) {
        match self.0 {
            Version::V4 => Self::put4(buf, v4::Packet::UnsubAck(v4::UnsubAck::new(pkid))),
            Version::V5 => {
                let reasons = existed
                    .iter()
                    .map(|&e| match e {
                        true => v5::UnsubAckReason::Success,
                        false => v5::UnsubAckReason::NoSubscriptionExisted,
                    })
                    .collect();
                Self::put5(
                    buf,
                    v5::Packet::UnsubAck(v5::UnsubAck {
                        pkid,
                        reasons,
                        properties: None,
                    }),
                );
            }
        }
    }

    pub(crate) fn pingresp(self, buf: &mut BytesMut) {
        match self.0 {
            Version::V4 => Self::put4(buf, v4::Packet::PingResp),
            Version::V5 => Self::put5(buf, v5::Packet::PingResp(v5::PingResp)),
        }
    }

    /// A publish to the vehicle, at QoS 0 or 1.
    pub(crate) fn publish(
        self,
        buf: &mut BytesMut,
        qos: u8,
        pkid: u16,
        topic: &str,
        payload: &Bytes,
        dup: bool,
    ) {
        match self.0 {
            Version::V4 => {
                let qos = if qos == 0 {
                    m4::QoS::AtMostOnce
                } else {
                    m4::QoS::AtLeastOnce
                };
                let mut p = v4::Publish::new(topic, qos, payload.to_vec());
                p.pkid = pkid;
                p.dup = dup;
                Self::put4(buf, v4::Packet::Publish(p));
            }
            Version::V5 => {
                let qos = if qos == 0 {
                    m5::QoS::AtMostOnce
                } else {
                    m5::QoS::AtLeastOnce
                };
                let mut p = v5::Publish::new(topic, qos, payload.clone(), None);
                p.pkid = pkid;
                p.dup = dup;
                Self::put5(buf, v5::Packet::Publish(p));
            }
        }
    }

    /// The server's DISCONNECT, MQTT 5 only: a 3.1.1 server just closes the connection.
    pub(crate) fn disconnect(self, buf: &mut BytesMut, why: Refusal) {
        // Written here: rumqttc 0.25 announces a remaining length of 1 for a reason code
        // without properties and then writes a property length too, a byte that a client reads
        // as the start of another packet. The reason code with an explicit empty property
        // length is what every reader takes (rumqttc's own refuses the reason code alone,
        // which MQTT 5 allows).
        if self.0 == Version::V5 {
            buf.extend_from_slice(&[0xE0, 0x02, why.disconnect_code() as u8, 0x00]);
        }
    }
}

impl Refusal {
    fn disconnect_code(self) -> v5::DisconnectReasonCode {
        use v5::DisconnectReasonCode as D;
        match self {
            Refusal::PublishNotPermitted | Refusal::SubscribeNotPermitted => D::NotAuthorized,
            Refusal::VehicleBlocked | Refusal::CertificateRevoked | Refusal::CertificateExpired => {
                D::AdministrativeAction
            }
            Refusal::BufferBudget => D::ServerBusy,
            Refusal::PacketTooLarge => D::PacketTooLarge,
            Refusal::MalformedPacket => D::MalformedPacket,
            Refusal::QosNotSupported => D::QoSNotSupported,
            Refusal::RetainNotSupported => D::RetainNotSupported,
            Refusal::KeepAliveTimeout => D::KeepAliveTimeout,
            Refusal::SessionTakenOver => D::SessionTakenOver,
            Refusal::ShuttingDown => D::ServerShuttingDown,
            _ => D::ProtocolError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mqtt5_publish_hands_on_its_traceparent_user_property_and_3_1_1_has_none() {
        let publish = |properties| {
            let mut p = v5::Publish::new(
                "/tenants/x/v1/status",
                m5::QoS::AtLeastOnce,
                "f",
                properties,
            );
            p.pkid = 1;
            let mut buf = BytesMut::new();
            v5::Packet::Publish(p)
                .write(&mut buf, None)
                .expect("encodes");
            match read(Version::V5, &mut buf, 1024) {
                Ok(Inbound::Publish { traceparent, .. }) => traceparent,
                other => panic!("{other:?}"),
            }
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let properties = v5::PublishProperties {
            user_properties: vec![
                ("tracestate".into(), "vendor=free text".into()),
                ("traceparent".into(), tp.into()),
            ],
            ..Default::default()
        };
        assert_eq!(publish(Some(properties)).as_deref(), Some(tp));
        assert_eq!(publish(None), None);
        let mut buf = BytesMut::new();
        let mut p = v4::Publish::new("/tenants/x/v1/status", m4::QoS::AtLeastOnce, "f");
        p.pkid = 1;
        v4::Packet::Publish(p)
            .write(&mut buf, 1024)
            .expect("encodes");
        assert!(matches!(
            read(Version::V4, &mut buf, 1024),
            Ok(Inbound::Publish {
                traceparent: None,
                ..
            })
        ));
    }

    fn connect_v4() -> BytesMut {
        let mut buf = BytesMut::new();
        let mut c = v4::Connect::new("car");
        c.keep_alive = 30;
        c.clean_session = false;
        v4::Packet::Connect(c)
            .write(&mut buf, 1024)
            .expect("encodes");
        buf
    }

    #[test]
    fn the_protocol_level_picks_the_version() {
        let mut buf = connect_v4();
        let hello = read_connect(&mut buf, 1024).expect("reads");
        assert_eq!(hello.version, Version::V4);
        assert!(!hello.clean_start);
        assert_eq!(hello.keep_alive, 30);
        assert!(buf.is_empty());

        let mut buf = BytesMut::new();
        let connect = v5::Connect {
            keep_alive: 5,
            client_id: "car".into(),
            clean_start: true,
            properties: Some(v5::ConnectProperties {
                session_expiry_interval: Some(60),
                ..v5::ConnectProperties::new()
            }),
        };
        v5::Packet::Connect(connect, None, None)
            .write(&mut buf, None)
            .expect("encodes");
        let hello = read_connect(&mut buf, 1024).expect("reads");
        assert_eq!(hello.version, Version::V5);
        assert_eq!(hello.session_expiry, Some(60));
    }

    #[test]
    fn partial_oversize_and_foreign_first_packets() {
        let whole = connect_v4();
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(
            read_connect(&mut part, 1024).expect_err("refused"),
            ReadError::Incomplete
        );
        let mut small = whole.clone();
        assert_eq!(
            read_connect(&mut small, 4).expect_err("refused"),
            ReadError::Refused(Refusal::PacketTooLarge)
        );
        let mut ping = BytesMut::from(&[0xC0u8, 0][..]);
        assert_eq!(
            read_connect(&mut ping, 1024).expect_err("refused"),
            ReadError::Refused(Refusal::ProtocolError)
        );
        let mut level6 = whole.clone();
        level6[2 + 6] = 6;
        assert_eq!(
            read_connect(&mut level6, 1024).expect_err("refused"),
            ReadError::Refused(Refusal::ProtocolVersion)
        );
    }

    /// Maximum Packet Size is the whole packet: a PUBLISH whose remaining length is the
    /// limit is two header bytes over it (found by a client that sent 262,148 bytes).
    #[test]
    fn the_packet_limit_counts_the_fixed_header() {
        // PUBLISH QoS 0, topic "t", remaining length 126: 128 bytes in all.
        let publish = |remaining: u8| {
            let mut p = vec![0x30, remaining, 0x00, 0x01, b't'];
            p.resize(2 + usize::from(remaining), b'x');
            // MQTT 5: no properties (a payload byte for 3.1.1).
            p[5] = 0;
            BytesMut::from(&p[..])
        };
        for version in [Version::V4, Version::V5] {
            let mut fits = publish(126);
            assert!(read(version, &mut fits, 128).is_ok(), "{version:?}");
            let mut over = publish(127);
            assert_eq!(
                read(version, &mut over, 128).expect_err("refused"),
                ReadError::Refused(Refusal::PacketTooLarge),
                "{version:?}"
            );
            // Refused from its header on, before the rest arrives.
            let mut head = BytesMut::from(&publish(127)[..2]);
            assert_eq!(
                read(version, &mut head, 128).expect_err("refused"),
                ReadError::Refused(Refusal::PacketTooLarge)
            );
        }
    }

    /// Found by the mqtt_codec fuzz target: an MQTT 5 CONNECT whose property length runs
    /// past its end was consumed and reported as incomplete, so the connection waited for
    /// more and read what followed as a new CONNECT.
    #[test]
    fn a_packet_whose_contents_overrun_it_is_malformed_not_incomplete() {
        let overrun = b"\x10\x0d\x00\x04MQTT\x05\x02\xa1\xa1\xa1\xf7\xfe\xc0\x00";
        let mut buf = BytesMut::from(&overrun[..]);
        assert_eq!(
            read_connect(&mut buf, 1024).expect_err("refused"),
            ReadError::Refused(Refusal::MalformedPacket)
        );
        // The same after CONNECT: a SUBSCRIBE whose property length runs past its end.
        let mut buf = BytesMut::from(&b"\x82\x03\x00\x01\xff"[..]);
        assert_eq!(
            read(Version::V5, &mut buf, 1024).expect_err("refused"),
            ReadError::Refused(Refusal::MalformedPacket)
        );
    }

    /// Reading a CONNECT's protocol level stays within the packet: a CONNECT too short to
    /// have one is malformed, whatever the bytes after it say.
    #[test]
    fn the_protocol_level_is_read_within_the_connect() {
        for after in [&b"MQTT\x06"[..], b"MQTT\x04", b""] {
            let mut buf = BytesMut::from(&b"\x10\x02\x00\x04"[..]);
            buf.extend_from_slice(after);
            assert_eq!(
                read_connect(&mut buf, 1024).expect_err("refused"),
                ReadError::Refused(Refusal::MalformedPacket),
                "followed by {after:?}"
            );
        }
    }

    /// A SUBSCRIBE whose fixed header says 0x80 instead of 0x82 is malformed (MQTT 3.1.1
    /// §3.8.1); rumqttc's reader had granted it. Found by the under-attack test.
    #[test]
    fn fixed_header_flags_are_checked() {
        for version in [Version::V4, Version::V5] {
            let subscribe: &[u8] = match version {
                Version::V4 => b"\x00\x01\x00\x01a\x01",
                Version::V5 => b"\x00\x01\x00\x00\x01a\x01",
            };
            for (first, ok) in [(0x82u8, true), (0x80, false), (0x83, false)] {
                let mut buf = BytesMut::from(&[first, subscribe.len() as u8][..]);
                buf.extend_from_slice(subscribe);
                let got = read(version, &mut buf, 1024);
                assert_eq!(got.is_ok(), ok, "{version:?} SUBSCRIBE {first:#x}: {got:?}");
                if !ok {
                    assert_eq!(
                        got.expect_err("refused"),
                        ReadError::Refused(Refusal::MalformedPacket)
                    );
                }
            }
            // PINGREQ with a flag set; a QoS 3 PUBLISH.
            let mut ping = BytesMut::from(&[0xC1u8, 0][..]);
            assert!(read(version, &mut ping, 1024).is_err());
            assert!(flags_valid(0x30) && flags_valid(0x3B) && !flags_valid(0x36));
        }
        let mut connect = connect_v4();
        connect[0] = 0x11;
        assert_eq!(
            read_connect(&mut connect, 1024).expect_err("refused"),
            ReadError::Refused(Refusal::MalformedPacket)
        );
    }

    #[test]
    fn the_servers_v5_disconnect_is_one_whole_packet() {
        let mut buf = BytesMut::new();
        Encoder(Version::V5).disconnect(&mut buf, Refusal::KeepAliveTimeout);
        match v5::Packet::read(&mut buf, None) {
            Ok(v5::Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, v5::DisconnectReasonCode::KeepAliveTimeout)
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty(), "a stray byte after the DISCONNECT: {buf:?}");
        Encoder(Version::V4).disconnect(&mut buf, Refusal::KeepAliveTimeout);
        assert!(buf.is_empty(), "MQTT 3.1.1 has no server DISCONNECT");
    }

    #[test]
    fn a_short_v5_disconnect_is_normal() {
        let mut buf = BytesMut::from(&[0xE0u8, 0][..]);
        assert!(matches!(
            read(Version::V5, &mut buf, 1024),
            Ok(Inbound::Disconnect)
        ));
    }
}
