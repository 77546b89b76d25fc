"""A small model and a Hugging Face cache laid out as huggingface_hub lays it out (file_download.py):
``models--org--name/{blobs,refs,snapshots}``, each snapshot file a relative symlink to its blob, named
by its git blob sha1 (a regular file) or its sha256 (an LFS file such as a safetensors shard)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

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


class FakeHub:
    """A Hugging Face Hub's read API on 127.0.0.1, enough for huggingface_hub's ``snapshot_download``:
    repo info by revision, the recursive tree of a commit, and each file at ``resolve/<commit>/<path>``
    with the headers the library reads (commit, etag, size). Serves the repos it is given, in memory."""

    def __init__(self) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.repos: dict[str, dict[str, object]] = {}  # repo -> {"refs": {name: commit}, "commits": {commit: files}}
        self.requests: list[str] = []
        hub = self

        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, files: dict[str, bytes], *, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
        entry = self.repos.setdefault(repo, {"refs": {}, "commits": {}})
        entry["commits"][commit] = files  # type: ignore[index]
        for ref in refs:
            entry["refs"][ref] = commit  # type: ignore[index]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _resolve(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        entry = self.repos.get(repo)
        if entry is None:
            return None
        commit = entry["refs"].get(revision, revision)  # type: ignore[attr-defined]
        files = entry["commits"].get(commit)  # type: ignore[attr-defined]
        return None if files is None else (commit, files)

    def _answer(self, h: object, *, body: bool) -> None:
        from urllib.parse import unquote, urlsplit

        handler: Any = h
        path = unquote(urlsplit(handler.path).path)
        self.requests.append(f"{handler.command} {handler.path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo, kind, revision = "/".join(parts[2:4]), parts[4], parts[5]
            found = self._resolve(repo, revision)
            if found is None:
                return self._send(handler, 404, b'{"error": "Revision Not Found"}', {"X-Error-Code": "RevisionNotFound"},
                                  body=body)
            commit, files = found
            if kind == "revision":
                data = {"id": repo, "modelId": repo, "sha": commit, "private": False,
                        "siblings": [{"rfilename": p} for p in sorted(files)]}
            else:
                data = [self._tree_entry(p, d) for p, d in sorted(files.items())]  # type: ignore[assignment]
            return self._send(handler, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body=body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, revision, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            found = self._resolve(repo, revision)
            if found is None or rel not in found[1]:
                return self._send(handler, 404, b"not found", {"X-Error-Code": "EntryNotFound"}, body=body)
            commit, files = found
            data = files[rel]
            etag = blob_name(rel, data)
            headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
            if rel.endswith(LFS_SUFFIXES):
                headers["X-Linked-Etag"] = f'"{etag}"'
                headers["X-Linked-Size"] = str(len(data))
            return self._send(handler, 200, data, headers, body=body)
        return self._send(handler, 404, b"not found", {}, body=body)

    @staticmethod
    def _tree_entry(rel: str, data: bytes) -> dict[str, object]:
        entry: dict[str, object] = {"type": "file", "path": rel, "size": len(data),
                                    "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if rel.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    @staticmethod
    def _send(handler: Any, status: int, data: bytes, headers: dict[str, str], *, body: bool) -> None:
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)
