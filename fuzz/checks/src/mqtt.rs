//! The MQTT edge's own part of the packet path: reading a connection's bytes into packets
//! (`telegate_mqtt`'s codec over rumqttc's MQTT 3.1.1 and 5 readers), and the topic rules a
//! vehicle's publishes and subscriptions meet.

use crate::fixtures::{OTHER_VIN, VIN};
use bytes::BytesMut;
use rumqttc::mqttbytes::{matches, valid_filter};
use telegate_frame::Vin;
use telegate_mqtt::fuzzing::{
    Inbound, ReadError, Version, is_concrete, may_publish, may_subscribe, named_vin, read,
    read_connect,
};
use telegate_mqtt::{Refusal, request_topic};

/// Largest packet sizes to read with: tiny, small, the edge's default.
const MAX_PACKET: [usize; 3] = [64, 1024, 256 * 1024];

/// Byte 0 steers (the largest packet, the size of the pieces the bytes arrive in); the rest
/// is what a client sends on a fresh connection: CONNECT, then anything. Checks that
/// - what a connection reads (packets, then a refusal or a wait for more bytes) is the same
///   whether the bytes arrive at once or in pieces;
/// - a read that asks for more bytes has consumed none;
/// - every publish's topic and every subscription's filter meets the topic rules' properties
///   ([`mqtt_rules`]).
pub fn mqtt_codec(data: &[u8]) {
    let Some((&steer, stream)) = data.split_first() else {
        return;
    };
    let max = MAX_PACKET[usize::from(steer & 3) % MAX_PACKET.len()];
    let piece = usize::from(steer >> 2) + 1;
    let at_once = connection(stream, stream.len().max(1), max);
    let in_pieces = connection(stream, piece, max);
    assert_eq!(
        at_once, in_pieces,
        "what a connection reads depends on how its bytes were cut"
    );
}

/// One thing a connection read: the CONNECT (as its `Debug`), then each packet as read.
#[derive(Debug, PartialEq)]
enum Seen {
    Connect(String),
    Packet(Inbound),
    Waiting,
    Refused(Refusal),
}

/// What a connection reads from `stream`, fed `piece` bytes at a time, the way the edge reads
/// (crates/telegate-mqtt/src/conn.rs): CONNECT first, whose protocol level sets the version,
/// then packets until a refusal, a DISCONNECT, a packet out of place, or the end of the bytes.
fn connection(stream: &[u8], piece: usize, max: usize) -> Vec<Seen> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut version: Option<Version> = None;
    let mut seen = Vec::new();
    loop {
        let unread = buf.len();
        let read = match version {
            None => read_connect(&mut buf, max).map(|hello| {
                version = Some(hello.version);
                (Seen::Connect(format!("{hello:?}")), false)
            }),
            Some(v) => read(v, &mut buf, max).map(|packet| {
                judge(&packet);
                let last = matches!(packet, Inbound::Disconnect | Inbound::Unexpected);
                (Seen::Packet(packet), last)
            }),
        };
        match read {
            Ok((packet, last)) => {
                seen.push(packet);
                if last {
                    return seen;
                }
            }
            Err(ReadError::Incomplete) => {
                // The buffer holds the stream's unconsumed bytes up to what was fed.
                assert_eq!(
                    buf.len(),
                    unread,
                    "a read that waits for more bytes consumed some"
                );
                assert_eq!(&buf[..], &stream[fed - unread..fed]);
                if fed == stream.len() {
                    seen.push(Seen::Waiting);
                    return seen;
                }
                let more = piece.min(stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + more]);
                fed += more;
            }
            Err(ReadError::Refused(why)) => {
                seen.push(Seen::Refused(why));
                return seen;
            }
        }
    }
}

fn judge(packet: &Inbound) {
    match packet {
        Inbound::Publish { topic, .. } => publish_rules(topic),
        Inbound::Subscribe { filters, .. } => {
            for (filter, _) in filters {
                subscribe_rules(filter);
            }
        }
        _ => {}
    }
}

/// The topic rules on `data` as a publish's topic and, if it is UTF-8, as a subscription's
/// filter (see [`publish_rules`] and [`subscribe_rules`]).
pub fn mqtt_rules(data: &[u8]) {
    publish_rules(data);
    if let Ok(filter) = std::str::from_utf8(data) {
        subscribe_rules(filter);
    }
}

fn vins() -> [Vin; 2] {
    [
        Vin::parse(VIN).expect("valid VIN"),
        Vin::parse(OTHER_VIN).expect("valid VIN"),
    ]
}

/// A vehicle may publish to a topic exactly when the topic names it at the second level:
/// `/tenants/{its VIN}/…`.
fn publish_rules(topic: &[u8]) {
    let named = named_vin(topic);
    for vin in vins().into_iter().chain(named) {
        assert_eq!(
            may_publish(&vin, topic),
            named == Some(vin),
            "may publish to {:?}",
            String::from_utf8_lossy(topic)
        );
    }
}

/// A subscription a vehicle is granted is a valid filter, not shared, that matches its request
/// topic; a filter without wildcards is granted only as that very topic, so it binds an
/// anonymous connection to one vehicle at most.
fn subscribe_rules(filter: &str) {
    let [a, b] = vins();
    for vin in [a, b] {
        assert!(may_subscribe(&vin, &request_topic(&vin)));
        if may_subscribe(&vin, filter) {
            assert!(valid_filter(filter) && !filter.starts_with("$share/"));
            assert!(matches(&request_topic(&vin), filter));
            if is_concrete(filter) {
                assert_eq!(filter, request_topic(&vin), "a concrete filter granted");
                assert_eq!(named_vin(filter.as_bytes()), Some(vin));
            }
        }
    }
    if is_concrete(filter) {
        assert!(!(may_subscribe(&a, filter) && may_subscribe(&b, filter)));
    }
}
