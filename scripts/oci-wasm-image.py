#!/usr/bin/env python3
"""Writes an OCI image layout as a tar, for `ctr image import`.

    oci-wasm-image.py OUT.tar NAME ENTRYPOINT [--wasm FILE] [--file PATH=FILE]...

With --wasm, FILE is the image's one layer, of media type
`application/wasm` (runwasi's), and the image's platform is wasm/wasip1:
what containerd-shim-shmrt-v1 runs. With --file only, the layer is an
ordinary tar holding each FILE at PATH, still of platform wasm/wasip1 (an
image without a wasm layer). NAME is the image's name in containerd
(e.g. docker.io/shmrt/upper:test). Prints the layer's diff id (the
snapshot's chain id, as containerd names an unpacked one-layer image).
"""

import hashlib
import io
import json
import sys
import tarfile


def main():
    args = sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    out, name, entrypoint = args[:3]
    rest = args[3:]
    wasm = None
    files = []
    while rest:
        flag, value = rest[0], rest[1] if len(rest) > 1 else None
        if value is None:
            sys.exit(f"{flag} needs a value\n{__doc__}")
        if flag == "--wasm":
            wasm = value
        elif flag == "--file":
            path, _, src = value.partition("=")
            files.append((path.lstrip("/"), src))
        else:
            sys.exit(f"unknown flag {flag}\n{__doc__}")
        rest = rest[2:]

    blobs = {}

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest, len(data)

    if wasm is not None:
        with open(wasm, "rb") as f:
            layer = f.read()
        layer_type = "application/wasm"
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path, src in files:
                t.add(src, arcname=path)
        layer = buf.getvalue()
        layer_type = "application/vnd.oci.image.layer.v1.tar"
    layer_digest, layer_size = blob(layer)

    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Entrypoint": [entrypoint]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": "wasm", "os": "wasip1"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
        ],
    }

    def add(t, path, data):
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = 0o644
        t.addfile(info, io.BytesIO(data))

    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add(t, "index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            add(t, "blobs/sha256/" + digest.split(":", 1)[1], data)
    print(layer_digest)


if __name__ == "__main__":
    main()
