"""Reads one of telegate's service topics the way a backend team would: confluent-kafka for
Kafka, and for the value either classes that protoc generates from telegate's proto/ folder or,
with --registry, the schema the gateway registered in a Confluent-compatible schema registry.

    python telegate_consume.py --bootstrap HOST:PORT --topic telegate.smart-service \
        [--max N] [--timeout SECONDS] [--group NAME] \
        [--registry URL [--registry-auth USER:PASSWORD]] [--otlp-endpoint URL]

Each record becomes one JSON line on stdout: the topic, the key, the purpose, legal basis,
consent and subject form from the headers, the value's encoding (the telegate-encoding header)
and schema id, and what the value holds (frame kind, VIN if the purpose may see it, sequence
number, capture time).

The telegate-encoding header says how the value is written: "protobuf" (a VehicleFrame),
"json" (its proto3-JSON form) or "confluent-protobuf": the Confluent wire format, that is the
magic byte 0x00, the schema id (4 bytes, big-endian), the message indexes (a zigzag varint
count, then that many zigzag varints; a count of 0 stands for [0], the first message of the
schema's file), then the VehicleFrame. schema_id is the id from that framing, null for the
other encodings.

Where the VehicleFrame class comes from, one way or the other, never both:
  - without --registry, from proto/: the classes are generated on first use into a cache folder
    (PROTO_OUT, default ~/.cache/telegate/python-proto) with grpcio-tools' protoc; nothing
    generated is kept in the repository. A confluent-protobuf value is unframed here; its
    message indexes must point at telegate.v1.VehicleFrame in frame.proto.
  - with --registry URL (the registry's Confluent-compatible base URL), from the registry
    alone, as a consumer without a copy of proto/ would do: the latest schema of the subject
    <topic>-value, fetched as a serialized FileDescriptorProto (format=serialized; Apicurio
    Registry 3.0 answers that only for a schema registered in that form, which is the gateway's
    default), gives the class. confluent-protobuf values are then decoded by confluent-kafka's
    ProtobufDeserializer, which fetches the writer schema by the id in each value's framing;
    the message indexes must point at telegate.v1.VehicleFrame in that schema. protobuf and json
    values are parsed with the class from the registry too.
    --registry-auth (default: the environment variable TELEGATE_REGISTRY_AUTH) gives HTTP basic
    credentials for the registry.

With --otlp-endpoint URL (an OTLP/HTTP collector's base URL, e.g. http://jaeger:4318), a record
whose W3C traceparent header says it is sampled gets a span of this consumer's
("telegate.consume", service telegate-consume-python) continuing the gateway's trace, exported
with OpenTelemetry's Python SDK; its attributes name the topic and the group, nothing of the
record's subject. The line then also carries the record's trace id.

A record that cannot be read (a bad framing, a schema the registry does not have, a value that
does not parse) ends the run: a message on stderr, exit status 1.
"""

import argparse
import base64
import importlib
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaError
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.message import DecodeError

CONFLUENT_MAGIC = 0
FRAME_TYPE = "telegate.v1.VehicleFrame"


class RecordError(Exception):
    """A record (or schema) this consumer cannot read: the run ends with this message."""


# ---------------------------------------------------------------------------------------------
# The Confluent wire format


def zigzag_varint(data, pos):
    """The zigzag-encoded varint at data[pos:], and the position after it."""
    raw, shift = 0, 0
    while True:
        if pos >= len(data):
            raise RecordError("the framing ends inside a message index")
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift >= 64:
            raise RecordError("a message index is longer than 10 bytes")


def unframe(value):
    """(schema id, message indexes, protobuf bytes) of a value in the Confluent wire format."""
    if value is None or len(value) < 6:
        size = "no value" if value is None else f"{len(value)} bytes"
        raise RecordError(f"{size}: too short for the Confluent framing (6 bytes at least)")
    if value[0] != CONFLUENT_MAGIC:
        raise RecordError(f"magic byte {value[0]:#04x}, not {CONFLUENT_MAGIC:#04x}")
    schema_id = int.from_bytes(value[1:5], "big")
    count, pos = zigzag_varint(value, 5)
    # Every index takes one byte at least.
    if count < 0 or count > len(value) - pos:
        raise RecordError(
            f"impossible message index count {count} ({len(value) - pos} bytes left)"
        )
    if count == 0:
        return schema_id, [0], value[pos:]
    indexes = []
    for _ in range(count):
        index, pos = zigzag_varint(value, pos)
        if index < 0:
            raise RecordError(f"negative message index {index}")
        indexes.append(index)
    return schema_id, indexes, value[pos:]


def message_at(proto, indexes):
    """Full name of the message the indexes point at in a file (a FileDescriptorProto): [i] is
    the file's i-th message, [i, j] the j-th message nested in that one, and so on."""
    names, messages = [proto.package] if proto.package else [], proto.message_type
    for index in indexes:
        if index >= len(messages):
            raise RecordError(f"message indexes {indexes} point past the messages of {proto.name}")
        names.append(messages[index].name)
        messages = messages[index].nested_type
    return ".".join(names)


# ---------------------------------------------------------------------------------------------
# Where VehicleFrame comes from: proto/ or the registry, never both


def frame_class_from_proto_folder():
    """telegate.v1.VehicleFrame, generated from proto/ if the cache does not have it yet.
    Only without --registry."""
    from grpc_tools import protoc

    proto_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
    out = os.environ.get(
        "PROTO_OUT", os.path.expanduser("~/.cache/telegate/python-proto")
    )
    os.makedirs(out, exist_ok=True)
    source = os.path.join(proto_dir, "telegate", "v1", "frame.proto")
    generated = os.path.join(out, "telegate", "v1", "frame_pb2.py")
    if not os.path.exists(generated) or os.path.getmtime(generated) < os.path.getmtime(source):
        code = protoc.main(
            ["protoc", "-I", proto_dir, "--python_out", out, "telegate/v1/frame.proto"]
        )
        if code != 0:
            sys.exit(f"protoc failed on {source}")
    sys.path.insert(0, out)
    from telegate.v1 import frame_pb2  # noqa: E402  (generated above)

    return frame_pb2.VehicleFrame


def add_with_imports(pool, file_proto):
    """Adds a file to a descriptor pool, after the well-known types it imports (they come
    with protobuf). telegate's frame.proto imports nothing; other imports, which a registry
    serves as schema references, are not followed."""
    from google.protobuf import descriptor_pool

    for name in file_proto.dependency:
        try:
            pool.FindFileByName(name)
            continue
        except KeyError:
            pass
        if not name.startswith("google/protobuf/"):
            raise RecordError(f"{file_proto.name} imports {name}: this consumer cannot resolve it")
        importlib.import_module(name[: -len(".proto")].replace("/", ".") + "_pb2")
        imported = descriptor_pb2.FileDescriptorProto()
        descriptor_pool.Default().FindFileByName(name).CopyToProto(imported)
        add_with_imports(pool, imported)
    pool.Add(file_proto)


def frame_class_from_registry(client, subject):
    """telegate.v1.VehicleFrame as the registry describes it: the latest schema of the subject,
    a serialized FileDescriptorProto, built into a class. Nothing of proto/ is used."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from google.protobuf import descriptor_pool, message_factory

    try:
        latest = client.get_latest_version(subject, fmt="serialized")
    except SchemaRegistryError as e:
        if e.http_status_code in (401, 403):
            why = "refused: credentials are given with --registry-auth or TELEGATE_REGISTRY_AUTH"
        elif e.http_status_code == 404:
            why = "no such subject"
        else:
            why = "failed"
        raise RecordError(f"the registry's latest schema for {subject}: {why} ({e})") from e
    except Exception as e:  # the HTTP client's own errors: refused, timed out, ...
        raise RecordError(f"could not ask the registry for subject {subject}: {e}") from e
    try:
        serialized = base64.b64decode(latest.schema.schema_str, validate=True)
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    except (ValueError, DecodeError) as e:
        raise RecordError(
            f"the registry's schema for {subject} (version {latest.version}, id "
            f"{latest.schema_id}) is not a serialized FileDescriptorProto: a schema registered "
            "as .proto text, which Apicurio Registry 3.0 returns as text even when asked for "
            "format=serialized?"
        ) from e
    pool = descriptor_pool.DescriptorPool()
    add_with_imports(pool, file_proto)
    try:
        descriptor = pool.FindMessageTypeByName(FRAME_TYPE)
    except KeyError as e:
        raise RecordError(f"the registry's schema for {subject} has no {FRAME_TYPE}") from e
    return message_factory.GetMessageClass(descriptor)


# ---------------------------------------------------------------------------------------------
# Reading values


class ProtoFolderReader:
    """Values parsed with the classes generated from proto/."""

    def __init__(self):
        self.frame_class = frame_class_from_proto_folder()
        self.file_proto = descriptor_pb2.FileDescriptorProto()
        self.frame_class.DESCRIPTOR.file.CopyToProto(self.file_proto)

    def confluent(self, message):
        schema_id, indexes, payload = unframe(message.value())
        name = message_at(self.file_proto, indexes)
        if name != FRAME_TYPE:
            raise RecordError(f"message indexes {indexes} name {name}, not {FRAME_TYPE}")
        return schema_id, self.frame_class.FromString(payload)


class RegistryReader:
    """Values decoded with the schemas in the registry, through confluent-kafka's own
    SchemaRegistryClient and ProtobufDeserializer."""

    def __init__(self, url, auth, topic):
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer

        conf = {"url": url}
        if auth:
            conf["basic.auth.user.info"] = auth
        self.client = SchemaRegistryClient(conf)
        self.subject = f"{topic}-value"
        self.frame_class = frame_class_from_registry(self.client, self.subject)
        # The gateway registers under <topic>-value, Confluent's TopicNameStrategy; named here
        # so that the deserializer does not first look for subject associations, a Confluent
        # API that other registries lack.
        self.deserializer = ProtobufDeserializer(
            self.frame_class,
            {"use.deprecated.format": False, "subject.name.strategy.type": "TOPIC"},
            self.client,
        )

    def confluent(self, message):
        from confluent_kafka.serialization import MessageField, SerializationContext

        # The framing is read here too: the deserializer does not hand the schema id out, and
        # it parses the payload as the class it was given whatever message the indexes name,
        # so they are checked against the writer schema (the same request the deserializer
        # makes, answered once: the client caches schemas by id). A bad framing gets the same
        # message in both modes.
        schema_id, indexes, _ = unframe(message.value())
        try:
            writer = self.client.get_schema(schema_id, self.subject, fmt="serialized")
            writer_file = descriptor_pb2.FileDescriptorProto.FromString(
                base64.b64decode(writer.schema_str, validate=True)
            )
        except Exception as e:  # SchemaRegistryError, the HTTP client's, base64's, protobuf's
            raise RecordError(f"writer schema id {schema_id} from the registry: {e}") from e
        name = message_at(writer_file, indexes)
        if name != FRAME_TYPE:
            raise RecordError(f"message indexes {indexes} name {name}, not {FRAME_TYPE}")
        context = SerializationContext(message.topic(), MessageField.VALUE, message.headers())
        try:
            return schema_id, self.deserializer(message.value(), context)
        except Exception as e:  # SerializationError, SchemaRegistryError, the HTTP client's
            raise RecordError(f"ProtobufDeserializer (schema id {schema_id}): {e}") from e


def read_value(reader, message, encoding):
    """(schema id or None, the VehicleFrame) of a record."""
    try:
        if encoding == "confluent-protobuf":
            return reader.confluent(message)
        frame = reader.frame_class()
        if encoding == "json":
            json_format.Parse(message.value() or b"", frame)
        else:
            frame.ParseFromString(message.value() or b"")
        return None, frame
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as e:
        raise RecordError(f"{encoding or 'protobuf'} value does not parse: {e}") from e


def headers_of(message):
    return {k: (v or b"").decode() for k, v in (message.headers() or [])}


class Tracing:
    """Continues the traces records carry: one consumer span per sampled record."""

    def __init__(self, endpoint, group):
        # Imported only when asked for: reading a topic needs none of it.
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "telegate-consume-python"})
        )
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        self.tracer = self.provider.get_tracer("telegate_consume")
        self.propagator = TraceContextTextMapPropagator()
        self.kind = SpanKind.CONSUMER
        self.current_span = trace.get_current_span
        self.group = group

    def span(self, headers, topic):
        """A span for a record whose traceparent is sampled, or None."""
        if "traceparent" not in headers:
            return None
        # Only traceparent is read: tracestate is free text, and the gateway writes none.
        context = self.propagator.extract({"traceparent": headers["traceparent"]})
        parent = self.current_span(context).get_span_context()
        if not parent.is_valid or not parent.trace_flags.sampled:
            return None
        return self.tracer.start_span(
            "telegate.consume",
            context=context,
            kind=self.kind,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": self.group,
            },
        )

    def close(self):
        self.provider.shutdown()


def main():
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--bootstrap", required=True)
    args.add_argument("--topic", required=True)
    args.add_argument("--group", default=f"telegate-python-{os.getpid()}")
    args.add_argument("--max", type=int, default=0, help="stop after this many records")
    args.add_argument("--timeout", type=float, default=30.0, help="stop after this long")
    args.add_argument(
        "--registry",
        metavar="URL",
        help="Confluent-compatible schema registry: the VehicleFrame class and the writer "
        "schemas come from there, not from proto/",
    )
    args.add_argument(
        "--registry-auth",
        metavar="USER:PASSWORD",
        default=os.environ.get("TELEGATE_REGISTRY_AUTH"),
        help="HTTP basic credentials for --registry (default: $TELEGATE_REGISTRY_AUTH)",
    )
    args.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="continue the traces records carry: a span per sampled record, exported over "
        "OTLP/HTTP to this collector",
    )
    a = args.parse_args()
    if a.registry_auth and ":" not in a.registry_auth:
        args.error("--registry-auth needs USER:PASSWORD")
    try:
        reader = (
            RegistryReader(a.registry, a.registry_auth, a.topic)
            if a.registry
            else ProtoFolderReader()
        )
    except RecordError as e:
        sys.exit(f"telegate_consume: {e}")
    consumer = Consumer(
        {
            "bootstrap.servers": a.bootstrap,
            "group.id": a.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([a.topic])
    tracing = Tracing(a.otlp_endpoint, a.group) if a.otlp_endpoint else None
    seen, deadline = 0, time.monotonic() + a.timeout
    try:
        while time.monotonic() < deadline and (a.max == 0 or seen < a.max):
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    print(f"kafka: {m.error()}", file=sys.stderr)
                continue
            h = headers_of(m)
            encoding = h.get("telegate-encoding")
            span = tracing.span(h, m.topic()) if tracing else None
            try:
                schema_id, frame = read_value(reader, m, encoding)
            except RecordError as e:
                if span is not None:
                    span.end()
                sys.exit(
                    f"telegate_consume: {m.topic()} partition {m.partition()} offset "
                    f"{m.offset()}: {e}"
                )
            trace_id = None
            if span is not None:
                trace_id = format(span.get_span_context().trace_id, "032x")
                span.end()
            print(
                json.dumps(
                    {
                        "topic": m.topic(),
                        "key": m.key().decode() if m.key() is not None else None,
                        "purpose": h.get("telegate-purpose"),
                        "legal_basis": h.get("telegate-legal-basis"),
                        "consent": h.get("telegate-consent"),
                        "subject": h.get("telegate-subject"),
                        "encoding": encoding,
                        "schema_id": schema_id,
                        "kind": frame.WhichOneof("body"),
                        "vin": frame.vin,
                        "seq": frame.seq,
                        "captured_at_ms": frame.captured_at_ms,
                        "trace_id": trace_id,
                    }
                ),
                flush=True,
            )
            seen += 1
    finally:
        consumer.close()
        if tracing is not None:
            tracing.close()


if __name__ == "__main__":
    main()
