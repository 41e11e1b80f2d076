"""An HTTP proxy in front of a real S3 server that injects the faults object stores really produce.

    proxy = FaultProxy("http://127.0.0.1:5000", rate=0.2, seed=1)  # 20% of requests fail transiently
    proxy.start(); os.environ["AWS_ENDPOINT_URL"] = proxy.url
    ...
    proxy.stats  # {"requests": 812, "forwarded": 650, "slow_down": 55, "internal_error": 54, "dropped": 53, ...}

Transient faults, drawn at random per request: 503 SlowDown, 500 InternalError, a connection closed without an
answer, and the two that happen after the server acted: ``lost_reply`` (the request is applied, then the connection
closes before the answer, so the client retries a write that already landed: a conditional put, a commit) and
``short_body`` (the answer's headers promise the whole body, then the connection closes halfway through it).
Permanent faults: ``deny`` is a regular expression over "METHOD /bucket/key"; matching requests always get
403 AccessDenied. ``reject`` is one too; matching requests get 403 InvalidAccessKeyId naming the request's access key
id, as S3 answers a key it does not know (a client that quotes the answer quotes the key). The fault-injection tests
and the soak benchmark run the jobs through it; nothing else does.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

TRANSIENT = ("slow_down", "internal_error", "dropped", "lost_reply", "short_body")
_ERRORS = {
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
    "denied": (403, "AccessDenied", "Access Denied"),
    "rejected": (403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
}
# Hop-by-hop headers are the proxy's own business, not the server's or the client's.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        rate: float = 0.1,
        seed: int = 0,
        deny: str | None = None,
        faults: tuple[str, ...] = TRANSIENT,
        reject: str | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rate, self.deny = rate, re.compile(deny) if deny else None
        self.reject = re.compile(reject) if reject else None
        self.faults = faults  # the transient faults drawn from
        self.random = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def decide(self, request: str) -> str:
        """What happens to this request: "forwarded", "denied", "rejected" or one of TRANSIENT."""
        with self.lock:
            self.stats["requests"] += 1
            if self.deny is not None and self.deny.search(request):
                outcome = "denied"
            elif self.reject is not None and self.reject.search(request):
                outcome = "rejected"
            elif self.random.random() < self.rate:
                outcome = self.random.choice(self.faults)
            else:
                outcome = "forwarded"
            self.stats[outcome] += 1
            return outcome


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # clients drop connections too: not news here
        pass


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the stats say what happened
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            outcome = proxy.decide(f"{self.command} {urlsplit(self.path).path}")
            if outcome == "dropped":
                self.close_connection = True
                self.connection.close()
                return
            if outcome in _ERRORS:
                status, code, message = _ERRORS[outcome]
                xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
                if outcome == "rejected":
                    key = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization") or "")
                    xml += f"<AWSAccessKeyId>{key.group(1) if key else ''}</AWSAccessKeyId>"
                payload = f"{xml}<Resource>{urlsplit(self.path).path}</Resource></Error>".encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            if outcome == "lost_reply":  # applied upstream, and the client never hears so
                self.close_connection = True
                self.connection.close()
                return
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                # A HEAD answer's length is the object's (no body follows): passed on as the server gave it.
                if key.lower() not in _HOP and (key.lower() != "content-length" or self.command == "HEAD"):
                    self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                if outcome == "short_body" and len(data) > 1:  # the length promised, half the bytes sent
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler
