#!/usr/bin/env python3
"""A stand-in push service for the Web Push test (crates/notify/tests/webpush.rs).

It checks a push request as a real push service and browser would, with implementations
independent of ours: the VAPID token (RFC 8292) is verified with py_vapid against the
`k=` key of the Authorization header, and the body is decrypted with http_ece (RFC 8188
aes128gcm, RFC 8291 keys) using the private key and auth secret of a subscription made
here at start.

Usage: webpush-fake.py --cert CERT.pem --key KEY.pem --dir DIR

Listens on 127.0.0.1 (a free port) over HTTPS and writes DIR/subscription.json once it is
ready: {"endpoint", "gone_endpoint", "p256dh", "auth"} (keys base64url, as a browser's
PushSubscription.toJSON() gives them). Every request is appended to DIR/received.jsonl as
one JSON line: what was checked, the decrypted payload, or why it was refused. Answers
201 (Created, with a Location), 410 for endpoints under /gone/, 400/401 for a request a
push service would refuse. Stops on SIGTERM or when its standard input closes.
"""

import argparse
import base64
import http.server
import json
import os
import ssl
import sys
import threading
import time

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import jwt as vapid_jwt

MAX_BODY = 4096


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_vapid(header):
    """`vapid t=<jwt>, k=<key>` -> (t, k); auth-params may be separated by ',' and spaces."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError("scheme is not vapid: %r" % scheme)
    values = {}
    for part in params.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            values[name.strip().lower()] = value.strip()
    if "t" not in values or "k" not in values:
        raise ValueError("missing t= or k=")
    return values["t"], values["k"]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the test reads received.jsonl
        pass

    def answer(self, status, record, body=b""):
        record["status"] = status
        with self.server.lock:
            with open(self.server.received, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.send_response(status)
        if status == 201:
            self.send_header("Location", "/message/%d" % time.time_ns())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        record = {
            "path": self.path,
            "length": len(body),
            "headers": {
                name: self.headers.get(name)
                for name in ("TTL", "Content-Encoding", "Urgency", "Topic")
            },
        }
        try:
            self.check(record, body)
        except Exception as e:  # anything wrong is a refusal the test can read
            record["error"] = "%s: %s" % (type(e).__name__, e)
            self.answer(400, record, record["error"].encode())
            return
        if self.path.startswith("/gone/"):
            self.answer(410, record)
        else:
            self.answer(201, record)

    def check(self, record, body):
        if not (self.path.startswith("/push/") or self.path.startswith("/gone/")):
            raise ValueError("unknown endpoint %s" % self.path)
        if self.headers.get("Content-Encoding") != "aes128gcm":
            raise ValueError("Content-Encoding is not aes128gcm")
        ttl = self.headers.get("TTL")
        if ttl is None or not ttl.isdigit():
            raise ValueError("TTL missing or not a number")
        if self.headers.get("Urgency") not in ("very-low", "low", "normal", "high"):
            raise ValueError("bad Urgency")
        topic = self.headers.get("Topic")
        if topic is not None:
            alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
            if len(topic) > 32 or not set(topic) <= alphabet:
                raise ValueError("Topic is not <= 32 base64url characters")
        if len(body) > MAX_BODY:
            raise ValueError("body is %d bytes (at most %d)" % (len(body), MAX_BODY))

        # VAPID: the signature with the key given beside it, then the claims.
        token, key = parse_vapid(self.headers.get("Authorization", ""))
        claims = vapid_jwt.decode(token, key)  # raises InvalidSignature
        header = json.loads(unb64u(token.split(".")[0]))
        if header.get("alg") != "ES256":
            raise ValueError("JWT alg is not ES256")
        now = time.time()
        if claims.get("aud") != self.server.origin:
            raise ValueError("aud %r is not %r" % (claims.get("aud"), self.server.origin))
        if not (now < claims.get("exp", 0) <= now + 24 * 3600):
            raise ValueError("exp is not within the next 24 hours")
        sub = claims.get("sub", "")
        if not (sub.startswith("mailto:") or sub.startswith("https:")):
            raise ValueError("sub is not a mailto: or https: contact")
        record["vapid"] = {"t": token, "k": key, "claims": claims}

        # The payload, decrypted as the browser would.
        plain = http_ece.decrypt(
            body,
            private_key=self.server.private_key,
            auth_secret=self.server.auth,
            version="aes128gcm",
        )
        record["payload"] = plain.decode("utf-8")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]

    # The subscription, as a browser makes it: a P-256 key pair and a 16-byte secret.
    server.private_key = ec.generate_private_key(ec.SECP256R1())
    server.auth = os.urandom(16)
    server.origin = "https://127.0.0.1:%d" % port
    server.received = os.path.join(args.dir, "received.jsonl")
    server.lock = threading.Lock()
    public = server.private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    subscription = {
        "endpoint": server.origin + "/push/" + b64u(os.urandom(12)),
        "gone_endpoint": server.origin + "/gone/" + b64u(os.urandom(12)),
        "p256dh": b64u(public),
        "auth": b64u(server.auth),
    }
    # Written whole, then renamed: the test never reads half a file.
    tmp = os.path.join(args.dir, "subscription.json.tmp")
    with open(tmp, "w") as f:
        json.dump(subscription, f)
    os.replace(tmp, os.path.join(args.dir, "subscription.json"))

    # Stop when the test goes away, even if it could not kill us.
    def watch_stdin():
        sys.stdin.read()
        server.shutdown()

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
