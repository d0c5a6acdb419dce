//! What a pack makes telegate produce, as an AsyncAPI 3.0 document (`telegate policy
//! asyncapi`): the MQTT channels vehicles publish to and receive requests on, and every Kafka
//! topic of the pack with its record schema (the `.proto` the payload follows), key, headers,
//! and per purpose its legal basis, consent rule, subject form, location precision and
//! retention; each topic's partitions-independent configuration (cleanup policy, retention) as
//! the gateway creates it. The document describes telegate itself: it receives on the MQTT
//! channels and sends on the Kafka ones.

use crate::shape::header;
use crate::{Identity, Pack, RecordEncoding, format_duration};
use serde_json::{Value, json};
use strum::VariantArray;
use telegate_frame::FrameKind;

/// The wire schema of every frame and service record.
pub use telegate_frame::schema::FRAME_PROTO;
/// The rejected topic's and the vehicle requests' schema.
pub const RECORDS_PROTO: &str = include_str!("../../../proto/telegate/v1/records.proto");

const PROTOBUF_FORMAT: &str = "application/vnd.google.protobuf;version=3";

/// A string header, optionally fixed to one value.
fn string(description: &str, fixed: Option<&str>) -> Value {
    let mut s = json!({ "type": "string", "description": description });
    if let Some(v) = fixed {
        s["const"] = v.into();
    }
    s
}

/// The headers of a record of `purpose` (or of a rejection, with `None`).
fn record_headers(pack: &Pack, purpose: Option<&crate::Purpose>) -> Value {
    let Some(p) = purpose else {
        return json!({
            "type": "object",
            "required": [header::REASON, header::POLICY],
            "properties": {
                header::REASON: string("why the frame was rejected (docs/contract.md, rejection reasons)", None),
                header::POLICY: string("the policy pack and version that judged it", Some(&pack.label())),
            },
        });
    };
    let mut required = vec![
        header::PURPOSE,
        header::LEGAL_BASIS,
        header::CONSENT,
        header::SUBJECT,
        header::POLICY,
        header::CAPTURED_AT_MS,
        header::ENCODING,
    ];
    if p.identity == Identity::Pseudonym || p.identity == Identity::Sealed {
        required.push(header::KEY_ID);
    }
    let encoding = pack.service_of(p).encoding;
    json!({
        "type": "object",
        "required": required,
        "properties": {
            header::PURPOSE: string("the purpose the record was released for", Some(p.id.as_str())),
            header::LEGAL_BASIS: string("the purpose's legal basis", Some(p.legal_basis.as_str())),
            header::CONSENT: string("the consent state the decision rested on (granted, not-required, …)", None),
            header::SUBJECT: string("how the vehicle is identified in the record", Some(p.identity.as_str())),
            header::KEY_ID: string("the pseudonym key's id, for pseudonymous and sealed records", None),
            header::POLICY: string("the policy pack and version that decided", Some(&pack.label())),
            header::CAPTURED_AT_MS: string("capture time, UTC milliseconds, at the purpose's time precision", None),
            header::SEQ: string("the vehicle's frame sequence number (not on anonymous records)", None),
            header::ENCODING: string("the payload's encoding", Some(encoding.as_str())),
        },
    })
}

/// The record key of `identity`: the VIN, the purpose's pseudonym, or none.
fn key(identity: Identity) -> Value {
    match identity {
        Identity::Vin => json!({ "type": "string", "description": "the VIN" }),
        Identity::Pseudonym | Identity::Sealed => json!({
            "type": "string",
            "description": "the purpose's pseudonym of the vehicle (hex HMAC of the VIN under the pseudonym key)",
        }),
        Identity::Anonymous => {
            json!({ "type": "null", "description": "no key: anonymous records identify nobody" })
        }
    }
}

/// `proto` with `message` marked as the payload's root (`@RootNode`, the AsyncAPI protobuf
/// schema parser's hint where a file has several top-level messages).
fn rooted(proto: &str, message: &str) -> String {
    let name = message.rsplit('.').next().unwrap_or(message);
    proto.replacen(
        &format!("\nmessage {name} {{"),
        &format!("\n// @RootNode\nmessage {name} {{"),
        1,
    )
}

fn payload(encoding: RecordEncoding, message: &str, proto: &str) -> Value {
    match encoding {
        RecordEncoding::Protobuf | RecordEncoding::ConfluentProtobuf => json!({
            "schemaFormat": PROTOBUF_FORMAT,
            "schema": rooted(proto, message),
            "x-telegate-message": message,
        }),
        RecordEncoding::Json => json!({
            "schemaFormat": "application/schema+json;version=draft-07",
            "schema": {
                "type": "object",
                "description": format!("the proto3-JSON mapping of {message} (proto/telegate/v1)"),
            },
        }),
    }
}

/// A record's Kafka binding: its key and, in the Confluent wire format, where the schema id is
/// and which registry subject it belongs to.
fn message_binding(encoding: RecordEncoding, identity: Identity) -> Value {
    let mut binding = json!({ "key": key(identity), "bindingVersion": "0.5.0" });
    if encoding == RecordEncoding::ConfluentProtobuf {
        binding["schemaIdLocation"] = "payload".into();
        binding["schemaIdPayloadEncoding"] = "confluent".into();
        binding["schemaLookupStrategy"] = "TopicNameStrategy".into();
    }
    binding
}

/// The pack's AsyncAPI 3.0 document.
pub fn asyncapi(pack: &Pack) -> Value {
    let kinds: Vec<&str> = FrameKind::VARIANTS.iter().map(|k| k.as_str()).collect();
    let mut channels = serde_json::Map::new();
    let mut operations = serde_json::Map::new();
    let mut messages = serde_json::Map::new();
    channels.insert(
        "vehicleFrames".into(),
        json!({
            "address": "/tenants/{vin}/v1/{kind}",
            "title": "Frames a vehicle publishes (MQTT 3.1.1 or 5, QoS 0 or 1; PUBACK once Kafka holds the frame)",
            "servers": [{ "$ref": "#/servers/mqtt" }],
            "parameters": {
                "vin": { "description": "the vehicle's VIN, as its client certificate names it" },
                "kind": { "enum": kinds, "description": "the frame kind" },
            },
            "messages": { "vehicleFrame": { "$ref": "#/components/messages/vehicleFrame" } },
        }),
    );
    channels.insert(
        "vehicleRequests".into(),
        json!({
            "address": "/tenants/{vin}/v1/request",
            "title": "Requests from the platform to a vehicle (e.g. a breakdown snapshot)",
            "servers": [{ "$ref": "#/servers/mqtt" }],
            "parameters": { "vin": { "description": "the vehicle's VIN" } },
            "messages": { "platformRequest": { "$ref": "#/components/messages/platformRequest" } },
        }),
    );
    operations.insert(
        "receiveVehicleFrames".into(),
        json!({ "action": "receive", "channel": { "$ref": "#/channels/vehicleFrames" } }),
    );
    operations.insert(
        "sendVehicleRequests".into(),
        json!({ "action": "send", "channel": { "$ref": "#/channels/vehicleRequests" } }),
    );
    messages.insert(
        "vehicleFrame".into(),
        json!({
            "name": "VehicleFrame",
            "contentType": "application/x-protobuf",
            "summary": "telegate.v1.VehicleFrame, binary protobuf or proto3-JSON",
            "payload": payload(RecordEncoding::Protobuf, "telegate.v1.VehicleFrame", FRAME_PROTO),
        }),
    );
    messages.insert(
        "platformRequest".into(),
        json!({
            "name": "PlatformRequest",
            "contentType": "application/x-protobuf",
            "payload": payload(RecordEncoding::Protobuf, "telegate.v1.PlatformRequest", RECORDS_PROTO),
        }),
    );
    for (i, service) in pack.services.iter().enumerate() {
        let spec = pack.topics().into_iter().find(|t| t.name == service.topic);
        let retention_ms = spec.map(|s| s.retention.as_millis() as u64).unwrap_or(0);
        let mut refs = serde_json::Map::new();
        for p in pack.purposes.iter().filter(|p| p.service == i) {
            let name = format!("{}Record", p.id.as_str());
            messages.insert(
                name.clone(),
                json!({
                    "name": p.id.as_str(),
                    "title": format!("A record released for purpose {}", p.id.as_str()),
                    "summary": p.description,
                    "contentType": match service.encoding {
                        RecordEncoding::Protobuf => "application/x-protobuf",
                        RecordEncoding::Json => "application/json",
                        RecordEncoding::ConfluentProtobuf => "application/vnd.confluent.protobuf",
                    },
                    "headers": record_headers(pack, Some(p)),
                    "payload": payload(service.encoding, "telegate.v1.VehicleFrame", FRAME_PROTO),
                    "bindings": { "kafka": message_binding(service.encoding, p.identity) },
                    "x-telegate-purpose": {
                        "legal_basis": p.legal_basis.as_str(),
                        "consent": crate::describe_consent(&p.consent),
                        "subject_form": p.identity.as_str(),
                        "location": crate::describe_location(p.location),
                        "retention": format_duration(p.retention),
                        "frame_kinds": p.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                        "cites": p.cite,
                    },
                }),
            );
            refs.insert(
                name.clone(),
                json!({ "$ref": format!("#/components/messages/{name}") }),
            );
        }
        let id = format!("service-{}", service.id);
        channels.insert(
            id.clone(),
            json!({
                "address": service.topic,
                "title": format!("Service {}", service.id),
                "description": service.description,
                "servers": [{ "$ref": "#/servers/kafka" }],
                "messages": refs,
                "bindings": { "kafka": {
                    "topic": service.topic,
                    "topicConfiguration": { "cleanup.policy": ["delete"], "retention.ms": retention_ms },
                    "bindingVersion": "0.5.0",
                } },
            }),
        );
        operations.insert(
            format!("send-{}", service.id),
            json!({ "action": "send", "channel": { "$ref": format!("#/channels/{id}") } }),
        );
    }
    messages.insert(
        "rejectedFrame".into(),
        json!({
            "name": "RejectedFrame",
            "contentType": "application/x-protobuf",
            "headers": record_headers(pack, None),
            "payload": payload(RecordEncoding::Protobuf, "telegate.v1.RejectedFrame", RECORDS_PROTO),
            "bindings": { "kafka": {
                "key": { "type": "string", "description": "a keyed hash of the VIN, never the VIN" },
                "bindingVersion": "0.5.0",
            } },
        }),
    );
    channels.insert(
        "rejected".into(),
        json!({
            "address": pack.rejected_topic,
            "title": "Frames that failed validation: the reason, never the payload",
            "servers": [{ "$ref": "#/servers/kafka" }],
            "messages": { "rejectedFrame": { "$ref": "#/components/messages/rejectedFrame" } },
            "bindings": { "kafka": {
                "topic": pack.rejected_topic,
                "topicConfiguration": {
                    "cleanup.policy": ["delete"],
                    "retention.ms": pack.rejected_retention.as_millis() as u64,
                },
                "bindingVersion": "0.5.0",
            } },
        }),
    );
    operations.insert(
        "sendRejected".into(),
        json!({ "action": "send", "channel": { "$ref": "#/channels/rejected" } }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": format!("telegate: {}", pack.title),
            "version": pack.label(),
            "description": "What telegate receives from vehicles over MQTT and produces to Kafka under this policy pack. Generated by `telegate policy asyncapi`; docs/contract.md is the prose contract.",
        },
        "defaultContentType": "application/x-protobuf",
        "servers": {
            "mqtt": {
                "host": "gateway.example:8883",
                "protocol": "mqtt",
                "description": "telegate's closed MQTT edge: mutual TLS, one client certificate per VIN",
                "security": [{ "$ref": "#/components/securitySchemes/vehicleCertificate" }],
            },
            "kafka": {
                "host": "kafka.example:9092",
                "protocol": "kafka",
                "description": "the operator's Kafka cluster; topic names as here, behind the deployment's topic namespace",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {
                "vehicleCertificate": {
                    "type": "X509",
                    "description": "a client certificate from the fleet CA whose subject CN is the vehicle's VIN",
                },
            },
        },
    })
}
