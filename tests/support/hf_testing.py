"""A small model and a Hugging Face cache laid out as huggingface_hub lays it out (file_download.py):
``models--org--name/{blobs,refs,snapshots}``, each snapshot file a relative symlink to its blob, named
by its git blob sha1 (a regular file) or its sha256 (an LFS file such as a safetensors shard)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".gguf")


def safetensors(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A safetensors file (8-byte little-endian header length, JSON header, data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def tokenizer_json(words: list[str]) -> bytes:
    """A WordLevel tokenizer the ``tokenizers`` library (and so AutoTokenizer) loads."""
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", *words])}
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True},
                         {"id": 1, "content": "[PAD]", "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }, indent=1).encode()


def small_model(seed: int = 1) -> dict[str, bytes]:
    """config.json, tokenizer.json, two safetensors shards and their index (and what a repo has beside)."""
    a = bytes((seed * 7 + i) % 256 for i in range(4 * 16))
    b = bytes((seed * 11 + i) % 256 for i in range(4 * 8))
    shard1 = safetensors({"embed.weight": ("F32", [4, 4], a)})
    shard2 = safetensors({"head.weight": ("F32", [2, 4], b)})
    index = {"metadata": {"total_size": len(a) + len(b)},
             "weight_map": {"embed.weight": "model-00001-of-00002.safetensors",
                            "head.weight": "model-00002-of-00002.safetensors"}}
    config = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 4, "num_attention_heads": 1,
              "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 8, "max_position_embeddings": 16,
              "gapship_seed": seed}
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "tokenizer.json": tokenizer_json(["hello", "world", "air", "gap", f"v{seed}"]),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]",
                                             "pad_token": "[PAD]"}).encode(),
        "model-00001-of-00002.safetensors": shard1,
        "model-00002-of-00002.safetensors": shard2,
        "model.safetensors.index.json": json.dumps(index, indent=2).encode(),
        "pytorch_model.bin": b"\x80\x02 a second copy of the weights " * 64,
        "onnx/model.onnx": b"onnx " * 200,
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"---\nlicense: apache-2.0\n---\n# tiny\n",
    }


def commit_of(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def blob_name(rel: str, data: bytes) -> str:
    """huggingface_hub names a blob by its etag: sha256 for an LFS file, the git blob sha1 otherwise."""
    if rel.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_snapshot(cache: Path, repo: str, files: dict[str, bytes], *, commit: str, refs: tuple[str, ...] = ("main",)
                 ) -> Path:
    """Add ``files`` at ``commit`` of ``repo`` to ``cache``, with ``refs`` pointing at it; return the snapshot."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = folder / "snapshots" / commit
    for rel, data in files.items():
        blob = folder / "blobs" / blob_name(rel, data)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (folder / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (folder / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def policy_for(*models: str) -> bytes:
    text = 'schema_version = 1\nprohibited_uses = ["weapons targeting"]\n\n[sites.test-site]\nsafeguards = []\n'
    return (text + "".join(f'\n[models.{m}]\nsites = ["test-site"]\n' for m in models)).encode()


def write_hf_spec(folder: Path, models: dict[str, str], *, name: str = "demo", version: str = "1.0.0") -> Path:
    """A spec with one [[model]] per entry (name -> the TOML lines after its name) and a policy for them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.toml").write_bytes(policy_for(*models))
    body = "".join(f'[[model]]\nname = "{m}"\n{lines}\n\n' for m, lines in models.items())
    spec = folder / f"spec-{version}.toml"
    spec.write_text(f'[bundle]\nname = "{name}"\nversion = "{version}"\n\n{body}[safeguards]\nsource = "policy.toml"\n')
    return spec
