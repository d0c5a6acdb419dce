"""A vehicle that keeps its TLS session and comes back with it, through Python's ssl
(OpenSSL): the client the attack review resumed revoked and expired certificates with.

Arguments: HOST PORT CA CERT KEY TLS_VERSION (1.2 or 1.3). Reads one command a line from
stdin and answers each with one JSON line:
  connect   a new TLS session, MQTT CONNECT, CONNACK
  resume    offers the kept session, MQTT CONNECT, CONNACK
(after each accepted connection its session is kept for the next)
  hold      as resume, then waits until the server closes the connection (at most 30 s)
Each answer: {"handshake": bool, "reused": bool, "connack": code or null, "held_s": float}.
"""

import json
import socket
import ssl
import sys
import time

host, port, ca, cert, key, version = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
if version == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
else:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3


def connect_packet():
    client_id = b"resume"
    body = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10, len(body)]) + body


def read_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def attempt(offer, hold):
    answer = {"handshake": False, "reused": False, "connack": None, "held_s": 0.0}
    raw = socket.create_connection((host, int(port)), timeout=30)
    try:
        s = ctx.wrap_socket(raw, server_hostname="localhost", session=offer)
    except (ssl.SSLError, OSError):
        raw.close()
        return answer, None
    answer["handshake"] = True
    answer["reused"] = s.session_reused
    try:
        s.sendall(connect_packet())
        ack = read_exactly(s, 4)
    except (ssl.SSLError, OSError):
        ack = b""
    if len(ack) == 4 and ack[0] == 0x20:
        answer["connack"] = ack[3]
    if hold and answer["connack"] == 0:
        start = time.monotonic()
        try:
            while s.recv(4096):
                pass
        except (ssl.SSLError, OSError):
            pass
        answer["held_s"] = time.monotonic() - start
    session = s.session
    s.close()
    return answer, session


kept = None
for line in sys.stdin:
    command = line.strip()
    offer = None if command == "connect" else kept
    answer, session = attempt(offer, command == "hold")
    # The newest session of an accepted connection is the one a vehicle would offer next.
    if answer["connack"] == 0 and session is not None:
        kept = session
    print(json.dumps(answer), flush=True)
