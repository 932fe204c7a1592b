#!/usr/bin/env python3
"""Real libzmq peers (pyzmq) for zdeploy's tests: REP and ROUTER services, REQ and
pipelined DEALER clients. Each prints one line "ready <endpoint>" when listening, and
clients print a JSON summary on exit. A ROUTER service can misbehave on purpose
(--misbehave): answer with a guessed request id, reply twice, or send replies without
a delimiter or a body. A REQ client with --count 0 sends until SIGTERM or until
--stop-file exists, then prints its summary."""

import argparse
import json
import os
import random
import signal
import time

import zmq
import zmq.utils.monitor


def heartbeat(sock, on):
    if on:
        sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 1000)


def answer(args, frames):
    """The reply body for a request body: OK or ERR, the service name, then the request."""
    if args.delay_ms:
        time.sleep(args.delay_ms / 1000.0)
    status = b"ERR" if random.random() < args.error_ratio else b"OK"
    if args.stamp:
        # Comparable across services: no name in the body; when and who in frames of their own.
        if random.random() < args.differ_ratio and args.differ_in in (None, args.name):
            status += b" changed"
        stamp = [b"ts=%d" % time.time_ns(), b"by=" + args.name.encode()]
        return [status] + frames + stamp
    return [status + b" " + args.name.encode()] + frames


def misbehave(how, envelope, reply):
    """The messages a misbehaving ROUTER service sends instead of envelope + reply.
    envelope is [peer, request-id, ""]."""
    peer, rid = envelope[0], envelope[1]
    if how == "guess":
        # The next request id, as a backend that knows ids are sequential would guess it.
        seq = int.from_bytes(rid[:8], "little") + 1
        return [[peer, seq.to_bytes(8, "little") + rid[8:], b""] + reply]
    if how == "short-id":
        return [[peer, rid[:8], b""] + reply]
    if how == "twice":
        return [envelope + reply, envelope + reply]
    if how == "empty":
        return [[peer, rid, b""]]
    if how == "bare":
        return [[peer, rid]]
    if how == "no-delimiter":
        return [[peer, rid] + reply]
    raise ValueError(how)


def serve(args):
    ctx = zmq.Context()
    kind = zmq.REP if args.mode == "rep" else zmq.ROUTER
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    heartbeat(sock, args.heartbeat)
    sock.bind(args.bind)
    log = open(args.log, "a", buffering=1) if args.log else None
    # A signal may land on one of libzmq's threads and never interrupt a blocking recv:
    # wait in short slices and look at the flag between them.
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sock.setsockopt(zmq.RCVTIMEO, 100)
    print("ready", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    while not stopping:
        try:
            frames = sock.recv_multipart()
        except zmq.Again:
            continue
        if kind == zmq.REP:
            body = frames
            envelope = []
        else:
            # ROUTER: [peer, envelope..., "", body...]; answer with the same envelope.
            d = frames.index(b"", 1)
            envelope, body = frames[: d + 1], frames[d + 1 :]
        if log:
            stamp = "%.6f " % time.time() if args.log_times else ""
            log.write(stamp + body[0][:64].decode("utf-8", "replace") + "\n")
        if args.misbehave and kind == zmq.ROUTER:
            for msg in misbehave(args.misbehave, envelope, answer(args, body)):
                sock.send_multipart(msg)
        else:
            sock.send_multipart(envelope + answer(args, body))


def client(args):
    ctx = zmq.Context()
    kind = zmq.REQ if args.mode == "req" else zmq.DEALER
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, args.recv_timeout_ms)
    if args.identity:
        sock.setsockopt(zmq.ROUTING_ID, args.identity.encode())
    heartbeat(sock, args.heartbeat)
    # Connection events, reported with a loss: was the request's connection dropped?
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    events = []

    def drain_monitor():
        while monitor.poll(0):
            e = zmq.utils.monitor.recv_monitor_message(monitor)
            events.append("%.3f %s" % (time.time(), zmq.Event(e["event"]).name))
            del events[:-20]

    sock.connect(args.connect)
    payload = os.urandom(args.size) if args.size else b""
    summary = {"sent": 0, "received": 0, "by_first_word": {}, "mismatched": 0, "lost": 0}

    def account(reply):
        body = reply[1:] if kind == zmq.DEALER else reply
        summary["received"] += 1
        word = body[0].split(b" ")[0].decode() + " " + (body[0].split(b" ") + [b""])[1].decode()
        summary["by_first_word"][word] = summary["by_first_word"].get(word, 0) + 1
        # The whole first frame (cut at 40 bytes), for services that say more in it.
        head = body[0][:40].decode("utf-8", "replace")
        by_head = summary.setdefault("by_head", {})
        by_head[head] = by_head.get(head, 0) + 1
        if body[-1].startswith(b"by="):
            by = summary.setdefault("by_stamp", {})
            by[body[-1].decode()] = by.get(body[-1].decode(), 0) + 1
        if body[0].startswith(b"OK") and args.size and body[-1] != payload:
            summary["mismatched"] += 1

    def request(i):
        frames = [args.tag.encode() + b"%d" % i] + [b"part%d" % k for k in range(args.parts - 1)]
        if args.size:
            frames.append(payload)
        return ([b""] if kind == zmq.DEALER else []) + frames

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    if kind == zmq.REQ:
        i = 0
        def go_on():
            if stopping or (args.stop_file and os.path.exists(args.stop_file)):
                return False
            return i < args.count or args.count == 0

        while go_on():
            if args.interval_ms:
                time.sleep(args.interval_ms / 1000.0)
            sock.send_multipart(request(i))
            sent_at = time.time()
            i += 1
            summary["sent"] += 1
            try:
                account(sock.recv_multipart())
            except zmq.Again:
                summary["lost"] += 1
                summary["lost_sent_at"] = sent_at
                summary["lost_request"] = i - 1
                drain_monitor()
                summary["connection_events"] = events
                break
            if i % 100 == 0:
                drain_monitor()
    else:
        outstanding = 0
        i = 0
        while i < args.count or outstanding:
            while i < args.count and outstanding < args.pipeline:
                sock.send_multipart(request(i))
                summary["sent"] += 1
                outstanding += 1
                i += 1
            try:
                account(sock.recv_multipart())
                outstanding -= 1
            except zmq.Again:
                summary["lost"] = outstanding
                break
    print(json.dumps(summary), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["rep", "router", "req", "dealer"])
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--connect")
    p.add_argument("--name", default="svc")
    p.add_argument("--error-ratio", type=float, default=0.0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument(
        "--stamp",
        action="store_true",
        help="service: reply [OK, request..., ts=NANOS, by=NAME] (comparable between services)",
    )
    p.add_argument(
        "--differ-ratio",
        type=float,
        default=0.0,
        help="service with --stamp: share of replies whose first frame reads 'OK changed' (not an error)",
    )
    p.add_argument("--differ-in", help="apply --differ-ratio only when --name is this")
    p.add_argument("--heartbeat", action="store_true")
    p.add_argument("--log")
    p.add_argument("--log-times", action="store_true", help="prefix each logged request with the time")
    p.add_argument("--interval-ms", type=float, default=0.0, help="req only: pause between requests")
    p.add_argument("--stop-file", help="req with --count 0: stop once this file exists")
    p.add_argument("--tag", default="", help="client: prefix of each request's number, to tell clients apart")
    p.add_argument("--identity", help="client: its ZeroMQ routing id (ZMQ_ROUTING_ID)")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--pipeline", type=int, default=100)
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--parts", type=int, default=1)
    p.add_argument("--recv-timeout-ms", type=int, default=10000)
    p.add_argument(
        "--misbehave",
        choices=["guess", "short-id", "twice", "empty", "bare", "no-delimiter"],
        help="router only: answer wrongly on purpose",
    )
    p.add_argument("--name-file", help="append -CONTENT (stripped) of this file to --name")
    args = p.parse_args()
    # Which config a server runs shows in its replies: ZMQ_PEER_NAME_SUFFIX, then the file.
    if os.environ.get("ZMQ_PEER_NAME_SUFFIX"):
        args.name += "-" + os.environ["ZMQ_PEER_NAME_SUFFIX"]
    if args.name_file:
        with open(args.name_file) as f:
            args.name += "-" + f.read().strip()
    (serve if args.mode in ("rep", "router") else client)(args)


if __name__ == "__main__":
    main()
