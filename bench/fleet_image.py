#!/usr/bin/env python3
"""Pushes bench/fleet's image to a Distribution registry with bench/fixtures.py's client and
prints it as JSON: `bench/fleet:v1`, a Docker schema2 image of a config and one random
(incompressible) layer per size given, deterministic from the seed.

usage: fleet_image.py http://127.0.0.1:PORT SIZES_MB [SEED]     e.g. 120,60,20
"""

import json
import random
import sys

from fixtures import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    MB,
    Registry,
    descriptor,
    dumps,
    sha256,
)

REPO, TAG = "bench/fleet", "v1"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    reg = Registry(sys.argv[1])
    sizes = [int(float(s) * MB) for s in sys.argv[2].split(",")]
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 20261127)
    layers = []
    for size in sizes:
        data = rng.randbytes(size)
        reg.push_blob(REPO, data)
        layers.append(descriptor(DOCKER_LAYER, data))
        del data
    config = dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layers]},
        }
    )
    reg.push_blob(REPO, config)
    manifest = dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(DOCKER_CONFIG, config),
            "layers": layers,
        }
    )
    digest = reg.push_manifest(REPO, TAG, DOCKER_MANIFEST, manifest)
    blobs = [{"digest": d["digest"], "size": d["size"]} for d in layers]
    blobs.append({"digest": sha256(config), "size": len(config)})
    out = {
        "ref": f"{REPO}:{TAG}",
        "manifest": digest,
        "manifest_size": len(manifest),
        "blobs": blobs,
        # What one pull moves: every blob once, and the manifest.
        "image_bytes": sum(b["size"] for b in blobs) + len(manifest),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
