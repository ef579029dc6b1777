#!/usr/bin/env python3
"""A loopback registry whose tag manifests answer late: how long a client waits for a manifest.

    slow_registry.py PORT LOG

Any repository; tag `sN` answers its manifest (HEAD or GET) after N seconds, then serves a
one-layer image of its own (a gzip tar holding one file naming the tag) by digest at once.
Each manifest-by-tag request is logged to LOG as one JSON line when it ends: when it came, the
delay, and whether the answer could still be written (`sent`) or the client had gone (`gone`,
with the error).
"""
import gzip
import hashlib
import http.server
import io
import json
import sys
import tarfile
import threading
import time

IMAGES = {}
BLOBS = {}
LOCK = threading.Lock()
LOG = None


def image(tag):
    with LOCK:
        if tag in IMAGES:
            return IMAGES[tag]
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w", format=tarfile.GNU_FORMAT) as t:
            data = f"manifest answered late: {tag}\n".encode()
            info = tarfile.TarInfo("waited")
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
        raw = tar.getvalue()
        layer = gzip.compress(raw, mtime=0)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/waited"]},
                             "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode()
        for b in (layer, config):
            BLOBS["sha256:" + hashlib.sha256(b).hexdigest()] = b
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                               "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                                          "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
                               "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                                           "digest": "sha256:" + hashlib.sha256(layer).hexdigest()}]}).encode()
        IMAGES[tag] = manifest
        IMAGES["sha256:" + hashlib.sha256(manifest).hexdigest()] = manifest
        return manifest


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, ctype, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        p = self.path.split("?")[0]
        if p in ("/v2", "/v2/"):
            return self.answer(200, b"{}", "application/json")
        if "/manifests/" in p:
            ref = p.rsplit("/manifests/", 1)[1]
            if ref.startswith("sha256:"):
                m = IMAGES.get(ref)
                if m is None:
                    return self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json")
                return self.answer(200, m, "application/vnd.docker.distribution.manifest.v2+json",
                                   [("Docker-Content-Digest", ref)])
            try:
                delay = float(ref[1:]) if ref.startswith("s") else 0.0
            except ValueError:
                delay = 0.0
            m = image(ref)
            came = time.time()
            time.sleep(delay)
            entry = {"path": p, "method": self.command, "ua": self.headers.get("User-Agent", ""),
                     "came": came, "delay": delay, "answered_after": round(time.time() - came, 1)}
            try:
                self.answer(200, m, "application/vnd.docker.distribution.manifest.v2+json",
                            [("Docker-Content-Digest", "sha256:" + hashlib.sha256(m).hexdigest())])
                entry["result"] = "sent"
            except OSError as e:
                entry["result"] = "gone"
                entry["error"] = str(e)
            with LOCK:
                LOG.write(json.dumps(entry) + "\n")
                LOG.flush()
            return
        if "/blobs/" in p:
            b = BLOBS.get(p.rsplit("/blobs/", 1)[1])
            if b is None:
                return self.answer(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', "application/json")
            return self.answer(200, b, "application/octet-stream")
        self.answer(404, b"{}", "application/json")


if __name__ == "__main__":
    LOG = open(sys.argv[2], "a")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    srv.daemon_threads = True
    srv.serve_forever()
