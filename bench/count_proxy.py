#!/usr/bin/env python3
"""A byte-counting HTTP relay in front of bench/fleet's upstream, so that upstream egress is
measured, not estimated (standard library only, loopback only).

Every request is relayed to UPSTREAM as is; the response is streamed back. When a response is
done, one line is appended to LOG: `METHOD PATH STATUS BYTES` (BYTES = response body bytes
relayed; a relay broken off midway logs what was sent, status prefixed with `!`).

usage: count_proxy.py PORT UPSTREAM_URL LOG
"""

import http.client
import http.server
import sys
import threading
import urllib.parse

CHUNK = 1 << 20
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    port = int(sys.argv[1])
    up = urllib.parse.urlsplit(sys.argv[2])
    if up.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("count_proxy.py: only a loopback upstream")
    log = open(sys.argv[3], "a", buffering=1)
    lock = threading.Lock()

    class Relay(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def relay(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=300)
            sent, status = 0, "000"
            try:
                # Header by header: a registry client sends several Accept lines.
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        conn.putheader(k, v)
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                status = str(resp.status)
                self.send_response_only(resp.status, resp.reason)
                known = resp.getheader("Content-Length")
                for k, v in resp.getheaders():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                if known is None and self.command != "HEAD":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
            except (OSError, http.client.HTTPException):
                status = "!" + status
                self.close_connection = True
            finally:
                conn.close()
                with lock:
                    log.write(f"{self.command} {self.path} {status} {sent}\n")

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = relay

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Relay)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
