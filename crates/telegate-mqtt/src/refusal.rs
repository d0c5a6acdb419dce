//! Everything the edge refuses, as one bounded set of metric labels.

/// Why the edge refused a connection, a packet or a subscription, or closed a connection.
/// Each is counted in `telegate_mqtt_refused_total{reason}` under its kebab-case name; none
/// names a vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Refusal {
    /// No client certificate, and anonymous clients are not allowed.
    Anonymous,
    /// The client certificate does not name exactly one valid VIN in its subject CN.
    CertificateWithoutVin,
    /// The certificate was revoked (at the handshake, at CONNECT, or while connected).
    CertificateRevoked,
    /// The certificate's validity ended (at the handshake, at CONNECT, or while connected).
    CertificateExpired,
    /// The TLS handshake failed (unknown CA, a certificate not yet valid or outside the
    /// fleet CA's path-length limit, not TLS at all).
    HandshakeFailed,
    /// TLS handshake and CONNECT did not complete within the connect timeout.
    HandshakeTimeout,
    /// Closed before authenticating to make room: unauthenticated connections were at
    /// `max_handshakes`, and this was the oldest of the source address holding the most.
    TooManyHandshakes,
    /// Refused at accept: its source address already had `max_handshakes_per_source`
    /// connections that had not authenticated.
    TooManyFromSource,
    /// The vehicle is blocked or erased.
    VehicleBlocked,
    /// A protocol version this listener does not serve.
    ProtocolVersion,
    /// CONNECT refused (server busy): `max_connections` vehicles are connected.
    TooManyConnections,
    /// A publish outside the vehicle's own prefix.
    PublishNotPermitted,
    /// A subscription that matches none of the platform's topics for the vehicle.
    SubscribeNotPermitted,
    PacketTooLarge,
    MalformedPacket,
    /// A packet out of place (a second CONNECT, QoS 2 flow, a topic alias).
    ProtocolError,
    /// QoS 2: the edge offers QoS 0 and 1.
    QosNotSupported,
    /// MQTT 5 retained publish: the edge retains nothing.
    RetainNotSupported,
    KeepAliveTimeout,
    /// Another connection of the same vehicle took over.
    SessionTakenOver,
    /// The client did not read what the edge had to send it.
    WriteTimeout,
    /// Partial packets of all connections together held `max_buffered_bytes`; the one that
    /// needed more was closed.
    BufferBudget,
    ShuttingDown,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// What was refused, for the log line that reports it.
    pub(crate) fn what(self) -> &'static str {
        match self {
            Refusal::Anonymous
            | Refusal::CertificateWithoutVin
            | Refusal::CertificateRevoked
            | Refusal::CertificateExpired
            | Refusal::VehicleBlocked
            | Refusal::ProtocolVersion
            | Refusal::TooManyConnections => "MQTT connection refused",
            Refusal::HandshakeFailed
            | Refusal::HandshakeTimeout
            | Refusal::TooManyHandshakes
            | Refusal::TooManyFromSource => "connection closed before it authenticated",
            Refusal::PublishNotPermitted => "publish outside the vehicle's own topics refused",
            Refusal::SubscribeNotPermitted => "subscription refused",
            Refusal::PacketTooLarge
            | Refusal::MalformedPacket
            | Refusal::ProtocolError
            | Refusal::QosNotSupported
            | Refusal::RetainNotSupported => "MQTT packet refused; connection closed",
            Refusal::KeepAliveTimeout
            | Refusal::SessionTakenOver
            | Refusal::WriteTimeout
            | Refusal::BufferBudget
            | Refusal::ShuttingDown => "MQTT connection closed",
        }
    }

    /// Its place in [`strum::VariantArray::VARIANTS`], which lists the variants in
    /// declaration order: the index of tables of [`strum::EnumCount::COUNT`] entries.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;
    use strum::{EnumCount, VariantArray};

    #[test]
    fn labels_are_distinct_and_indexed() {
        let mut labels: Vec<_> = Refusal::VARIANTS.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Refusal::COUNT);
        for (i, r) in Refusal::VARIANTS.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    /// The labels of `telegate_mqtt_refused_total{reason}`: pinned, in declaration order (the
    /// order is the index of the edge's counters and of the close signal's code).
    #[test]
    fn labels_are_pinned() {
        let pinned = [
            (Refusal::Anonymous, "anonymous"),
            (Refusal::CertificateWithoutVin, "certificate-without-vin"),
            (Refusal::CertificateRevoked, "certificate-revoked"),
            (Refusal::CertificateExpired, "certificate-expired"),
            (Refusal::HandshakeFailed, "handshake-failed"),
            (Refusal::HandshakeTimeout, "handshake-timeout"),
            (Refusal::TooManyHandshakes, "too-many-handshakes"),
            (Refusal::TooManyFromSource, "too-many-from-source"),
            (Refusal::VehicleBlocked, "vehicle-blocked"),
            (Refusal::ProtocolVersion, "protocol-version"),
            (Refusal::TooManyConnections, "too-many-connections"),
            (Refusal::PublishNotPermitted, "publish-not-permitted"),
            (Refusal::SubscribeNotPermitted, "subscribe-not-permitted"),
            (Refusal::PacketTooLarge, "packet-too-large"),
            (Refusal::MalformedPacket, "malformed-packet"),
            (Refusal::ProtocolError, "protocol-error"),
            (Refusal::QosNotSupported, "qos-not-supported"),
            (Refusal::RetainNotSupported, "retain-not-supported"),
            (Refusal::KeepAliveTimeout, "keep-alive-timeout"),
            (Refusal::SessionTakenOver, "session-taken-over"),
            (Refusal::WriteTimeout, "write-timeout"),
            (Refusal::BufferBudget, "buffer-budget"),
            (Refusal::ShuttingDown, "shutting-down"),
        ];
        assert_eq!(pinned.len(), Refusal::COUNT);
        for (i, (r, label)) in pinned.into_iter().enumerate() {
            assert_eq!(r.as_str(), label);
            assert_eq!(r.index(), i);
            assert_eq!(Refusal::VARIANTS[i], r);
        }
    }
}
