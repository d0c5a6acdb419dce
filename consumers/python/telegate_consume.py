"""Reads one of telegate's service topics the way a backend team would: confluent-kafka for
Kafka, and classes that protoc generates from telegate's proto/ folder for the value.

    python telegate_consume.py --bootstrap HOST:PORT --topic telegate.smart-service \
        [--max N] [--timeout SECONDS] [--group NAME]

Each record becomes one JSON line on stdout: the topic, the key, the purpose, legal basis,
consent and subject form from the headers, and what the value holds (frame kind, VIN if the
purpose may see it, sequence number, capture time). The classes are generated on first use
into a cache folder (PROTO_OUT, default ~/.cache/telegate/python-proto) with grpcio-tools'
protoc; nothing generated is kept in the repository.
"""

import argparse
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaError
from google.protobuf import json_format
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "proto")


def frame_class():
    """telegate.v1.VehicleFrame, generated from proto/ if the cache does not have it yet."""
    out = os.environ.get(
        "PROTO_OUT", os.path.expanduser("~/.cache/telegate/python-proto")
    )
    os.makedirs(out, exist_ok=True)
    source = os.path.join(PROTO_DIR, "telegate", "v1", "frame.proto")
    generated = os.path.join(out, "telegate", "v1", "frame_pb2.py")
    if not os.path.exists(generated) or os.path.getmtime(generated) < os.path.getmtime(source):
        code = protoc.main(
            ["protoc", "-I", PROTO_DIR, "--python_out", out, "telegate/v1/frame.proto"]
        )
        if code != 0:
            sys.exit(f"protoc failed on {source}")
    sys.path.insert(0, out)
    from telegate.v1 import frame_pb2  # noqa: E402  (generated above)

    return frame_pb2.VehicleFrame


def headers_of(message):
    return {k: (v or b"").decode() for k, v in (message.headers() or [])}


def main():
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--bootstrap", required=True)
    args.add_argument("--topic", required=True)
    args.add_argument("--group", default=f"telegate-python-{os.getpid()}")
    args.add_argument("--max", type=int, default=0, help="stop after this many records")
    args.add_argument("--timeout", type=float, default=30.0, help="stop after this long")
    a = args.parse_args()
    VehicleFrame = frame_class()
    consumer = Consumer(
        {
            "bootstrap.servers": a.bootstrap,
            "group.id": a.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([a.topic])
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
            frame = VehicleFrame()
            if h.get("telegate-encoding") == "json":
                json_format.Parse(m.value(), frame)
            else:
                frame.ParseFromString(m.value())
            print(
                json.dumps(
                    {
                        "topic": m.topic(),
                        "key": m.key().decode() if m.key() is not None else None,
                        "purpose": h.get("telegate-purpose"),
                        "legal_basis": h.get("telegate-legal-basis"),
                        "consent": h.get("telegate-consent"),
                        "subject": h.get("telegate-subject"),
                        "kind": frame.WhichOneof("body"),
                        "vin": frame.vin,
                        "seq": frame.seq,
                        "captured_at_ms": frame.captured_at_ms,
                    }
                ),
                flush=True,
            )
            seen += 1
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
