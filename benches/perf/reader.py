#!/usr/bin/env python3
"""A well-behaved reader for the flood benchmark: one keep-alive HTTP/1.1 connection from its
own loopback address, a fixed pace, every answer timed. Prints one JSON line:
{"sent", "ok", "failed", "p50_ms", "p99_ms", "max_ms"}. A request that errors or gets a
non-200 answer counts as failed (and the connection is opened again).

    reader.py --from 127.0.0.2 --to 127.0.0.1:8370 --path /1k.bin --rate 50 --seconds 10
"""
import argparse
import json
import socket
import time


def connect(src, host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((src, 0))
    s.settimeout(5)
    s.connect((host, port))
    return s


def exchange(s, request):
    """Sends one request and reads one answer with a Content-Length; returns the status."""
    s.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return status


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--from", dest="src", default="127.0.0.2")
    p.add_argument("--to", required=True)
    p.add_argument("--path", default="/1k.bin")
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    host, port = a.to.rsplit(":", 1)
    port = int(port)
    request = f"GET {a.path} HTTP/1.1\r\nHost: portal\r\n\r\n".encode()
    interval = 1.0 / a.rate
    latencies, failed, sent = [], 0, 0
    s = None
    start = time.perf_counter()
    next_at = start
    while time.perf_counter() - start < a.seconds:
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        sent += 1
        t0 = time.perf_counter()
        try:
            if s is None:
                s = connect(a.src, host, port)
            status = exchange(s, request)
            if status == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                failed += 1
        except (OSError, ConnectionError, ValueError, IndexError):
            failed += 1
            if s is not None:
                s.close()
            s = None
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None
    print(json.dumps({
        "sent": sent, "ok": len(latencies), "failed": failed,
        "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": round(latencies[-1], 3) if latencies else None,
    }))


if __name__ == "__main__":
    main()
