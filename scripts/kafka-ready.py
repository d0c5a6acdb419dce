#!/usr/bin/env python3
"""Waits until Kafka brokers on 127.0.0.1 answer, for scripts/kafka (see wait_ready there).

Usage: kafka-ready.py TIMEOUT "ID ID.." "PORT PORT.." "PID PID.." [warm]

Each port must answer a Metadata request listing every expected node id; with "warm", a group
coordinator must then be found, which creates __consumer_offsets. Plain Kafka protocol over a
socket (Metadata v4, FindCoordinator v1, both in Kafka 4.x): python3 only, no JVM start.
"""
import socket, struct, sys, time

timeout, ids, ports, pids = sys.argv[1:5]
warm = sys.argv[5:] == ["warm"]
want = {int(i) for i in ids.split()}
ports = [int(p) for p in ports.split()]
pids = [int(p) for p in pids.split()]
deadline = time.monotonic() + float(timeout)

def request(port, api_key, version, body):
    """One request (header v1) on a fresh connection; returns the response after its
    correlation id."""
    client = b"telegate-ready"
    msg = struct.pack(">hhih", api_key, version, 1, len(client)) + client + body
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(2)
        s.sendall(struct.pack(">i", len(msg)) + msg)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
    return buf[8:]

def metadata_broker_ids(port):
    # topics = [] (brokers only), allow_auto_topic_creation = false
    r = request(port, 3, 4, struct.pack(">ib", 0, 0))
    # throttle ms, brokers[node id, host, port, rack]
    (count,) = struct.unpack_from(">i", r, 4)
    pos, seen = 8, set()
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", r, pos)
        pos += 6 + host_len + 4
        (rack_len,) = struct.unpack_from(">h", r, pos)
        pos += 2 + max(rack_len, 0)
        seen.add(node_id)
    return seen

def group_coordinator_ready(port):
    key = b"telegate-warm-up"
    r = request(port, 10, 1, struct.pack(">h", len(key)) + key + b"\0")  # key type 0: group
    (error,) = struct.unpack_from(">h", r, 4)  # after throttle ms
    return error == 0

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def wait_for(what, check):
    while True:
        for pid in pids:
            if not alive(pid):
                sys.exit(f"pid {pid} exited")
        try:
            if check():
                return
        except (OSError, EOFError, struct.error):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"no {what} after {timeout} s")
        time.sleep(0.2)

for port in ports:
    wait_for(f"complete metadata from port {port}", lambda: want <= metadata_broker_ids(port))
if warm:
    wait_for("group coordinator", lambda: group_coordinator_ready(ports[0]))
