#!/usr/bin/env python3
"""paho-mqtt (Python) client for telegate's interoperability test.

The command line and the JSON events on stdout are the contract in interop/README.md. The
library does the MQTT work: its own in-flight window (20 by default), its own automatic
reconnect (loop_start) and its own resending of unacknowledged QoS 1 publishes. paho-mqtt has
no on-disk persistence: --store is accepted and means nothing, --resume is a usage error.
"""

import argparse
import json
import logging
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# A session kept for a client that asks for one (MQTT 5 --clean false); the gateway caps it.
SESSION_EXPIRY_SECS = 3600


class Usage(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Usage(message)


def boolean(text):
    if text in ("true", "false"):
        return text == "true"
    raise argparse.ArgumentTypeError("expected true or false, got %r" % text)


def parse(argv):
    p = Parser(prog="client.py", add_help=False)
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-id", required=True)
    p.add_argument("--mqtt", required=True, choices=["3", "5"])
    p.add_argument("--keep-alive", type=int, default=30)
    p.add_argument("--clean", type=boolean, default=True)
    p.add_argument("--store")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--reconnect", type=boolean, default=True)
    p.add_argument("--publish")
    p.add_argument("--topic")
    p.add_argument("--qos", type=int, choices=[0, 1])
    p.add_argument("--resume", action="store_true")
    p.add_argument("--subscribe")
    p.add_argument("--idle", type=float)
    a = p.parse_args(argv)
    actions = [x for x in (a.publish is not None, a.resume, a.subscribe is not None,
                           a.idle is not None) if x]
    if len(actions) != 1:
        raise Usage("exactly one of --publish, --resume, --subscribe, --idle")
    if (a.cert is None) != (a.key is None):
        raise Usage("--cert and --key go together")
    if a.publish is not None and (a.topic is None or a.qos is None):
        raise Usage("--publish needs --topic and --qos")
    if a.subscribe is not None and a.qos is None:
        raise Usage("--subscribe needs --qos")
    if a.resume:
        raise Usage("paho-mqtt (Python) has no on-disk persistence: --resume is not supported")
    return a


class Run:
    """The client's state, shared between the library's network thread and the main one."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Condition()
        self.out_lock = threading.Lock()
        self.up = False            # a connection is up now
        self.connections = 0       # CONNACKs with success
        self.lost = 0              # connections that were up and went down
        self.failed = False        # the first connection failed and nothing will retry it
        self.dead = False          # down, and the library will not reconnect
        self.acked = 0             # QoS 1 publishes acknowledged with success
        self.refused = 0           # QoS 1 publishes acknowledged with a failure reason code
        self.written = 0           # QoS 0 publishes written to the socket
        self.suback = None
        self.closing = False       # the run ended and disconnects on purpose
        self.attempt = False       # a connection attempt whose end was not reported yet

    def emit(self, **event):
        with self.out_lock:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            sys.stdout.flush()

    # The library's callbacks (API version 2).

    def on_pre_connect(self, client, userdata):
        with self.lock:
            self.attempt = True

    def on_connect(self, client, userdata, flags, reason, properties):
        with self.lock:
            self.attempt = False
        if reason.is_failure:
            self.emit(event="connect_failed", reason=str(reason))
            with self.lock:
                if not self.args.reconnect:
                    self.dead = True
                    self.failed = True
                self.lock.notify_all()
            return
        with self.lock:
            self.up = True
            self.connections += 1
            self.lock.notify_all()
        self.emit(event="connected", session_present=bool(flags.session_present))

    def on_connect_fail(self, client, userdata):
        # A TCP connect or TLS handshake that failed (the library retries it with --reconnect).
        with self.lock:
            self.attempt = False
        self.emit(event="connect_failed", reason="TCP connect or TLS handshake failed")
        with self.lock:
            if not self.args.reconnect:
                self.dead = True
                self.failed = True
            self.lock.notify_all()

    def on_disconnect(self, client, userdata, flags, reason, properties):
        with self.lock:
            was_up, attempt = self.up, self.attempt
            self.up = self.attempt = False
            if was_up:
                self.lost += 1
            if not self.args.reconnect:
                self.dead = True
            self.lock.notify_all()
        if self.closing:
            return
        if was_up:
            self.emit(event="lost", reason=str(reason))
        elif attempt:
            # Closed before a CONNACK: a refused certificate shows up here with TLS 1.3,
            # whose client side of the handshake ends before the server has checked it.
            self.emit(event="connect_failed", reason=str(reason))
        # else: the library reports one loss twice; the first report said it.

    def on_publish(self, client, userdata, mid, reason, properties):
        # Every publish of a run has the run's QoS: a QoS 0 one is written, a QoS 1 one
        # acknowledged (MQTT 5: possibly with a failure reason code).
        with self.lock:
            if self.args.qos == 0:
                self.written += 1
                self.lock.notify_all()
                return
            if reason.is_failure:
                self.refused += 1
                event = dict(event="error", message="publish refused: %s (%d)"
                             % (reason, reason.value))
            else:
                self.acked += 1
                event = dict(event="acked", count=self.acked)
            self.lock.notify_all()
        self.emit(**event)

    def on_subscribe(self, client, userdata, mid, reasons, properties):
        with self.lock:
            self.suback = [r.value for r in reasons]
            self.lock.notify_all()
        self.emit(event="suback", codes=self.suback)

    # Waiting.

    def wait(self, predicate, deadline):
        """Waits until predicate() holds (True) or the deadline passes (False)."""
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.5))
            return True


def main(argv):
    try:
        args = parse(argv)
    except Usage as e:
        sys.stdout.write(json.dumps({"event": "error", "message": str(e)}) + "\n")
        sys.stdout.flush()
        print("usage error: %s" % e, file=sys.stderr)
        return 2

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s paho %(levelname)s %(message)s")
    deadline = time.monotonic() + args.timeout
    run = Run(args)
    if args.store is not None:
        print("paho-mqtt keeps its session in memory; --store %s is not used" % args.store,
              file=sys.stderr)

    v5 = args.mqtt == "5"
    if v5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=args.reconnect)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                             clean_session=args.clean, protocol=mqtt.MQTTv311,
                             reconnect_on_failure=args.reconnect)
    client.enable_logger(logging.getLogger("paho"))
    client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key)
    client.on_pre_connect = run.on_pre_connect
    client.on_connect = run.on_connect
    client.on_connect_fail = run.on_connect_fail
    client.on_disconnect = run.on_disconnect
    client.on_publish = run.on_publish
    client.on_subscribe = run.on_subscribe

    if v5:
        props = None
        if not args.clean:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_SECS
        client.connect_async(args.host, args.port, keepalive=args.keep_alive,
                             clean_start=args.clean, properties=props)
    else:
        client.connect_async(args.host, args.port, keepalive=args.keep_alive)
    client.loop_start()

    published = 0
    ok = run.wait(lambda: run.connections > 0 or run.failed, deadline) and not run.failed
    if ok and args.publish is not None:
        with open(args.publish, "rb") as f:
            payloads = [line.rstrip(b"\n") for line in f]
        for payload in payloads:
            # Queued by the library when its window is full or the connection is down.
            info = client.publish(args.topic, payload, qos=args.qos)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                run.emit(event="error", message="publish: %s" % mqtt.error_string(info.rc))
                continue
            published += 1
        want = published

        def settled():
            return run.dead or run.acked + run.refused + run.written >= want

        ok = run.wait(settled, deadline) and run.acked + run.written == want == len(payloads)
    elif ok and args.subscribe is not None:
        client.subscribe(args.subscribe, qos=args.qos)
        ok = run.wait(lambda: run.suback is not None or run.dead, deadline) \
            and run.suback is not None and all(c < 0x80 for c in run.suback)
    elif ok and args.idle is not None:
        end = time.monotonic() + args.idle
        if end > deadline:
            run.emit(event="error", message="--idle is longer than --timeout")
            ok = False
        else:
            lost = run.wait(lambda: run.lost > 0 or run.dead, end)
            ok = not lost and run.up

    with run.lock:
        acked, lost = run.acked, run.lost
        run.closing = True
    run.emit(event="done", published=published, acked=acked)
    try:
        client.disconnect()
    except Exception:  # noqa: BLE001 (the connection may be gone already)
        pass
    client.loop_stop()
    print("done: connections=%d lost=%d ok=%s" % (run.connections, lost, ok), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
