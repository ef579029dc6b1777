#!/usr/bin/env python3
"""Pushes the benchmark's fixtures to a Distribution registry through the plain distribution API
and prints their names and digests as JSON (standard library only, loopback only).

Fixtures (all deterministic from a seed, so digests are stable from run to run):
  bench/small:v1  a Docker schema2 image: a config and one ~4 KB layer (the small blob)
  bench/multi:v1  an OCI index of linux/amd64 and linux/arm64 OCI manifests (for the rewrite)
  bench/big       a 50 MB random blob (cached-throughput figures)
                  and COLD more 50 MB random blobs that no proxy has seen (cold figures)

usage: fixtures.py http://127.0.0.1:PORT [COLD]
"""

import hashlib
import http.client
import json
import random
import sys
import urllib.parse

MB = 1000 * 1000
BIG = 50 * MB
SMALL = 4096

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("fixtures.py: only loopback registries")
        self.host, self.port = u.hostname, u.port

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.headers, data
        finally:
            conn.close()

    def push_blob(self, repo, data):
        digest = sha256(data)
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status == 200:
            return digest
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        if status != 202:
            sys.exit(f"fixtures.py: starting an upload to {repo}: {status} {body[:200]!r}")
        loc = urllib.parse.urlsplit(headers["Location"])
        query = (loc.query + "&" if loc.query else "") + "digest=" + urllib.parse.quote(digest)
        status, _, body = self.request(
            "PUT",
            f"{loc.path}?{query}",
            body=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )
        if status != 201:
            sys.exit(f"fixtures.py: uploading {digest} to {repo}: {status} {body[:200]!r}")
        return digest

    def push_manifest(self, repo, ref, media_type, data):
        status, _, body = self.request(
            "PUT", f"/v2/{repo}/manifests/{ref}", body=data, headers={"Content-Type": media_type}
        )
        if status != 201:
            sys.exit(f"fixtures.py: manifest {repo}:{ref}: {status} {body[:200]!r}")
        return sha256(data)


def dumps(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def descriptor(media_type, data, **extra):
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    d.update(extra)
    return d


def image(reg, repo, rng, os_, arch, oci):
    config = dumps(
        {
            "architecture": arch,
            "os": os_,
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(rng.randbytes(32))]},
        }
    )
    layer = rng.randbytes(SMALL)
    reg.push_blob(repo, config)
    reg.push_blob(repo, layer)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, config),
            "layers": [descriptor(OCI_LAYER if oci else DOCKER_LAYER, layer)],
        }
    )
    return media_type, manifest, sha256(layer)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    reg = Registry(sys.argv[1])
    cold = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rng = random.Random(20240501)
    out = {}

    media_type, manifest, small_blob = image(reg, "bench/small", rng, "linux", "amd64", oci=False)
    out["small_manifest"] = reg.push_manifest("bench/small", "v1", media_type, manifest)
    out["small_blob"] = small_blob

    children = []
    for arch in ("amd64", "arm64"):
        media_type, manifest, _ = image(reg, "bench/multi", rng, "linux", arch, oci=True)
        reg.push_manifest("bench/multi", sha256(manifest), media_type, manifest)
        children.append(descriptor(media_type, manifest, platform={"os": "linux", "architecture": arch}))
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    out["multi_index"] = reg.push_manifest("bench/multi", "v1", OCI_INDEX, index)

    out["big_blob"] = reg.push_blob("bench/big", rng.randbytes(BIG))
    out["big_size"] = BIG
    out["cold_blobs"] = [reg.push_blob("bench/big", rng.randbytes(BIG)) for _ in range(cold)]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
