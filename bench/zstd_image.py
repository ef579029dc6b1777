#!/usr/bin/env python3
"""OCI image layouts for bench/zstd, with uncompressed tar layers; skopeo then pushes them
with zstd or gzip layers. Layers of this machine's own files (real binaries and data: they
compress like real images do), or of random bytes (incompressible: an image whose compressed
layers are as large as its tars).

    zstd_image.py DIR LAYERS MB_PER_LAYER [random]   a layout (random: files of random bytes)
    zstd_image.py --tars DIR                         the layers' tars, one after another, to stdout
"""
import hashlib
import io
import json
import os
import sys
import tarfile

ROOTS = ["/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/bin", "/usr/lib", "/usr/local", "/opt", os.path.expanduser("~/.rustup/toolchains")]


def files():
    seen = set()
    for root in ROOTS:
        for dirpath, dirnames, names in os.walk(root):
            dirnames.sort()
            for n in sorted(names):
                p = os.path.join(dirpath, n)
                if os.path.islink(p) or not os.path.isfile(p) or p in seen:
                    continue
                seen.add(p)
                try:
                    yield p, os.path.getsize(p)
                except OSError:
                    continue


def random_files():
    """Files of 16 MiB of random bytes, written to a scratch directory as they are asked for."""
    scratch = "/tmp/zstd-image-random"
    os.makedirs(scratch, exist_ok=True)
    for i in range(1 << 20):
        p = os.path.join(scratch, f"random-{i:05}")
        with open(p, "wb") as f:
            f.write(os.urandom(16 << 20))
        try:
            yield p, 16 << 20
        finally:
            # Also when the layer is full and the generator is dropped: nothing left behind.
            os.remove(p)


def layout(out, layers, per_layer, random=False):
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    it = random_files() if random else files()
    descs, diff_ids = [], []
    for _ in range(layers):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            size = 0
            for path, n in it:
                try:
                    tar.add(path, arcname=path.lstrip("/"), recursive=False)
                except OSError:
                    continue
                size += n
                if size >= per_layer:
                    break
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + digest, "size": len(data)})
        diff_ids.append("sha256:" + digest)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/usr/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cd = hashlib.sha256(config).hexdigest()
    open(os.path.join(blobs, cd), "wb").write(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": len(config)},
                           "layers": descs}).encode()
    md = hashlib.sha256(manifest).hexdigest()
    open(os.path.join(blobs, md), "wb").write(manifest)
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md,
                                                "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    json.dump(index, open(os.path.join(out, "index.json"), "w"))
    open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
    total = sum(d["size"] for d in descs)
    print(f"{out}: {layers} layers, {total / 1e6:.0f} MB of tar", file=sys.stderr)


def tars(out):
    index = json.load(open(os.path.join(out, "index.json")))
    md = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(open(os.path.join(out, "blobs", "sha256", md)))
    for l in manifest["layers"]:
        with open(os.path.join(out, "blobs", "sha256", l["digest"].split(":")[1]), "rb") as f:
            while chunk := f.read(1 << 20):
                sys.stdout.buffer.write(chunk)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "--tars":
        tars(a[1])
    else:
        layout(a[0], int(a[1]), int(a[2]) << 20, random=a[3:4] == ["random"])
