#!/usr/bin/env python3
"""Generate the example model: a real safetensors file and its config, with deterministic weights.

Standard library only. safetensors layout: an 8-byte little-endian header length, a JSON header naming
each tensor's dtype, shape and byte range, then the raw little-endian tensor data.
"""

from __future__ import annotations

import json
import random
import struct
import sys
from pathlib import Path

CONFIG = {"model_type": "tiny-mlp", "hidden_size": 64, "intermediate_size": 256, "num_layers": 2, "vocab_size": 512}


def tensors() -> dict[str, tuple[list[int], bytes]]:
    rng = random.Random(20261122)
    shapes = {"embed.weight": [CONFIG["vocab_size"], CONFIG["hidden_size"]]}
    for layer in range(CONFIG["num_layers"]):
        shapes[f"layers.{layer}.up.weight"] = [CONFIG["intermediate_size"], CONFIG["hidden_size"]]
        shapes[f"layers.{layer}.down.weight"] = [CONFIG["hidden_size"], CONFIG["intermediate_size"]]
    out = {}
    for name, shape in shapes.items():
        count = shape[0] * shape[1]
        out[name] = (shape, struct.pack(f"<{count}f", *(rng.gauss(0.0, 0.02) for _ in range(count))))
    return out


def write_safetensors(path: Path) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, (shape, data) in sorted(tensors().items()):
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "tiny-model"
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text("# tiny\n\nA tiny MLP with random weights, for gapship's demo.\n")
    print(f"wrote example model to {out}")


if __name__ == "__main__":
    main()
