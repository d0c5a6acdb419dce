//! The few MQTT 3.1.1 packets the load generator's own clients write (CONNECT, PUBLISH,
//! PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT) and read (CONNACK, PUBACK, PUBLISH, SUBACK,
//! PINGRESP), by hand: a publish is written straight into the connection's write buffer,
//! topic and payload included, and read in place, with no packet value in between.

/// The largest packet accepted from the target: frames are a few hundred bytes.
const MAX_INCOMING: usize = 1024 * 1024;

pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Appends MQTT's variable-length "remaining length".
fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

/// A CONNECT without credentials. A vehicle asks for a clean session: what it has not seen
/// acknowledged it publishes again itself, so the target keeps no session for it. The
/// observer asks for a session kept across connections, so that nothing published while it
/// reconnects is lost to it.
pub(crate) fn connect(out: &mut Vec<u8>, client_id: &str, keep_alive_s: u16, clean: bool) {
    let id = client_id.as_bytes();
    out.push(0x10);
    remaining_length(out, 10 + 2 + id.len());
    let flags = if clean { 0x02 } else { 0x00 };
    out.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, flags]);
    out.extend_from_slice(&keep_alive_s.to_be_bytes());
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id);
}

/// Appends a PUBLISH whose topic is `topic`'s parts joined. `pkid` is QoS 1 (QoS 0 without);
/// `dup` marks a frame written before, on this connection or an earlier one.
pub(crate) fn publish(
    out: &mut Vec<u8>,
    topic: &[&str],
    pkid: Option<u16>,
    dup: bool,
    payload: &[u8],
) {
    let topic_len: usize = topic.iter().map(|p| p.len()).sum();
    let mut flags = 0x30;
    if pkid.is_some() {
        flags |= 0x02;
        if dup {
            flags |= 0x08;
        }
    }
    out.push(flags);
    let id_len = if pkid.is_some() { 2 } else { 0 };
    remaining_length(out, 2 + topic_len + id_len + payload.len());
    out.extend_from_slice(&(topic_len as u16).to_be_bytes());
    for part in topic {
        out.extend_from_slice(part.as_bytes());
    }
    if let Some(id) = pkid {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A SUBSCRIBE to one filter.
pub(crate) fn subscribe(out: &mut Vec<u8>, pkid: u16, filter: &str, qos: u8) {
    out.push(0x82);
    remaining_length(out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&pkid.to_be_bytes());
    out.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    out.extend_from_slice(filter.as_bytes());
    out.push(qos);
}

/// The PUBACK of a received QoS 1 publish.
pub(crate) fn puback(out: &mut Vec<u8>, pkid: u16) {
    let [hi, lo] = pkid.to_be_bytes();
    out.extend_from_slice(&[0x40, 0x02, hi, lo]);
}

/// A packet from the target, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    PubAck(u16),
    Publish {
        /// QoS 1 and 2's packet id.
        pkid: Option<u16>,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    /// The QoS granted (0x80: refused) for the one filter asked for.
    SubAck {
        pkid: u16,
        granted: u8,
    },
    PingResp,
    /// Anything else (of this packet type): these clients have no use for it.
    Other(u8),
}

/// What the target sent cannot be MQTT: the connection is to be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// Reads one packet from the front of `buf`: the packet and its length, or `None` while it is
/// incomplete.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Incoming<'_>, usize)>, Malformed> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(Malformed);
        }
    }
    if len > MAX_INCOMING {
        return Err(Malformed);
    }
    let Some(body) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let packet = match (first, body) {
        (0x20, [flags, code]) => Incoming::ConnAck {
            session_present: flags & 1 == 1,
            code: *code,
        },
        (0x40, [hi, lo]) => Incoming::PubAck(u16::from_be_bytes([*hi, *lo])),
        (0xD0, []) => Incoming::PingResp,
        (0x90, [hi, lo, granted]) => Incoming::SubAck {
            pkid: u16::from_be_bytes([*hi, *lo]),
            granted: *granted,
        },
        (0x30..=0x3F, _) => publish_in(first, body)?,
        (0x20 | 0x40 | 0xD0 | 0x90, _) => return Err(Malformed),
        (other, _) => Incoming::Other(other >> 4),
    };
    Ok(Some((packet, at + len)))
}

fn publish_in(first: u8, body: &[u8]) -> Result<Incoming<'_>, Malformed> {
    let qos = (first >> 1) & 0x03;
    let [hi, lo, rest @ ..] = body else {
        return Err(Malformed);
    };
    let topic_len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let topic = rest.get(..topic_len).ok_or(Malformed)?;
    let rest = &rest[topic_len..];
    let (pkid, payload) = match (qos, rest) {
        (0, payload) => (None, payload),
        (1 | 2, [hi, lo, payload @ ..]) => (Some(u16::from_be_bytes([*hi, *lo])), payload),
        _ => return Err(Malformed),
    };
    Ok(Incoming::Publish {
        pkid,
        topic,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_is_what_a_codec_reads() {
        let mut out = Vec::new();
        let payload = vec![7u8; 300];
        publish(
            &mut out,
            &["/tenants/", "V", "/v1/", "status"],
            Some(513),
            true,
            &payload,
        );
        // QoS 1 with DUP; 2 + 20 + 2 + 300 = 324 bytes follow, in two length bytes.
        assert_eq!(&out[..3], &[0x3A, 0xC4, 0x02]);
        assert_eq!(&out[3..5], &[0, 20]);
        assert_eq!(&out[5..25], b"/tenants/V/v1/status");
        assert_eq!(&out[25..27], &[2, 1]);
        assert_eq!(out.len(), 27 + 300);

        out.clear();
        publish(&mut out, &["t"], None, true, b"x");
        assert_eq!(
            out,
            [0x30, 4, 0, 1, b't', b'x'],
            "QoS 0 has no id and no DUP"
        );
    }

    #[test]
    fn a_connect_asks_for_a_clean_session_or_a_kept_one() {
        let mut out = Vec::new();
        connect(&mut out, "lg-7", 60, true);
        assert_eq!(
            out,
            [
                0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b'l', b'g', b'-',
                b'7'
            ]
        );
        out.clear();
        connect(&mut out, "lg-7", 60, false);
        assert_eq!(out[9], 0x00);
    }

    #[test]
    fn what_a_publisher_writes_a_subscriber_reads() {
        let mut out = Vec::new();
        publish(
            &mut out,
            &["/tenants/", "V", "/v1/status"],
            Some(9),
            false,
            b"frame",
        );
        publish(&mut out, &["t"], None, false, b"");
        let (p, n) = parse(&out).expect("valid").expect("complete");
        assert_eq!(
            p,
            Incoming::Publish {
                pkid: Some(9),
                topic: b"/tenants/V/v1/status",
                payload: b"frame"
            }
        );
        let (p, _) = parse(&out[n..]).expect("valid").expect("complete");
        assert_eq!(
            p,
            Incoming::Publish {
                pkid: None,
                topic: b"t",
                payload: b""
            }
        );
        assert_eq!(
            parse(&[0x32, 3, 0, 9, b'x']),
            Err(Malformed),
            "topic past the end"
        );
        assert_eq!(
            parse(&[0x32, 3, 0, 1, b'x']),
            Err(Malformed),
            "no packet id"
        );

        out.clear();
        subscribe(&mut out, 1, "/tenants/+/v1/+", 1);
        assert_eq!(out[..6], [0x82, 20, 0, 1, 0, 15]);
        assert_eq!(out[21], 1);
        assert_eq!(
            parse(&[0x90, 3, 0, 1, 0x80])
                .expect("valid")
                .expect("complete")
                .0,
            Incoming::SubAck {
                pkid: 1,
                granted: 0x80
            }
        );
        out.clear();
        puback(&mut out, 0x0102);
        assert_eq!(out, [0x40, 2, 1, 2]);
    }

    #[test]
    fn acknowledgements_are_read_one_at_a_time_and_partial_ones_wait() {
        let bytes = [0x40, 2, 0x01, 0x02, 0xD0, 0, 0x20, 2, 1, 0, 0x40, 2, 0];
        let (p, n) = parse(&bytes).expect("valid").expect("complete");
        assert_eq!((p, n), (Incoming::PubAck(0x0102), 4));
        let (p, n) = parse(&bytes[4..]).expect("valid").expect("complete");
        assert_eq!((p, n), (Incoming::PingResp, 2));
        let (p, _) = parse(&bytes[6..]).expect("valid").expect("complete");
        assert_eq!(
            p,
            Incoming::ConnAck {
                session_present: true,
                code: 0
            }
        );
        assert_eq!(parse(&bytes[10..]), Ok(None), "incomplete");
        assert_eq!(parse(&[0x40, 3, 0, 0, 0]), Err(Malformed));
        assert_eq!(parse(&[0x40, 0xff, 0xff, 0xff, 0xff]), Err(Malformed));
        assert_eq!(
            parse(&[0x40, 0xff, 0xff, 0x7f]),
            Err(Malformed),
            "too large"
        );
        assert_eq!(
            parse(&[0xB0, 2, 0, 1]).expect("valid").expect("complete"),
            (Incoming::Other(11), 4)
        );
    }
}
