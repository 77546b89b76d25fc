"""C2SP signed notes and checkpoints, checked against the signed-note spec's example and the Go
reference implementation's (golang.org/x/mod/sumdb/note) key and note."""

from __future__ import annotations

import base64

import nacl.signing
import pytest

from gapship.installer.crypto.keys import PublicKey
from gapship.installer.errors import TrustError
from gapship.installer.formats import note
from gapship.installer.formats.note import Checkpoint, NoteSigner

SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = ("This is an example message.\n\n\u2014 example.com/foo "
             "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n").encode()
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqf"
           "qdngotpRZb6KE6RyyBwJnAM=\n").encode()


def _signer(name: str, seed: bytes) -> NoteSigner:
    sk = nacl.signing.SigningKey(seed)
    return NoteSigner(name=name, public=PublicKey(raw=bytes(sk.verify_key)), sign=lambda m: sk.sign(m).signature)


def test_spec_example_opens_with_its_verifier_key() -> None:
    key = note.parse_vkey(SPEC_VKEY)
    text, names = note.open_note(SPEC_NOTE, [key], source="spec")
    assert text == "This is an example message.\n" and names == ["example.com/foo"]
    assert note.vkey(*key) == SPEC_VKEY


def test_go_reference_key_id_and_signature_are_reproduced_byte_for_byte() -> None:
    s = _signer("PeterNeumann", GO_SEED)
    assert note.key_id("PeterNeumann", s.public).hex() == "c74f20a3"
    assert note.vkey("PeterNeumann", s.public) == GO_VKEY
    assert note.sign_note(GO_TEXT, [s]) == GO_NOTE
    assert note.open_note(GO_NOTE, [note.parse_vkey(GO_VKEY)], source="go")[0] == GO_TEXT


def test_unknown_signature_lines_are_skipped() -> None:
    extra = SPEC_NOTE + "\u2014 other.example/key AAAAAAB0ZXN0\n".encode()
    assert note.open_note(extra, [note.parse_vkey(SPEC_VKEY)], source="x")[1] == ["example.com/foo"]


def test_rejects_note_with_text_changed() -> None:
    with pytest.raises(TrustError, match="does not verify"):
        note.open_note(SPEC_NOTE.replace(b"example message", b"exemple message"), [note.parse_vkey(SPEC_VKEY)],
                       source="x")


def test_rejects_note_signed_by_another_key() -> None:
    with pytest.raises(TrustError, match="not signed by the given key"):
        note.open_note(GO_NOTE, [note.parse_vkey(SPEC_VKEY)], source="x")


def test_rejects_verifier_key_with_wrong_id() -> None:
    with pytest.raises(TrustError, match="does not match"):
        note.parse_vkey(SPEC_VKEY.replace("530d903a", "530d903b"))


def test_checkpoint_round_trip_and_spec_layout() -> None:
    cp = Checkpoint(origin="example.com/behind-the-sofa", size=20852163,
                    root=base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="))
    assert cp.text() == "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    s = _signer("example.com/behind-the-sofa", bytes(32))
    signed = cp.sign([s])
    assert note.open_checkpoint(signed, [(s.name, s.public)], source="cp", origin=cp.origin) == cp


@pytest.mark.parametrize("text", ["o\n012\nAAAA\n", "o\n-1\n" + "A" * 44 + "\n", "o\n1\nAAAA\n", "o\n1\n"])
def test_rejects_malformed_checkpoints(text: str) -> None:
    with pytest.raises(TrustError):
        Checkpoint.from_text(text, source="cp")


def test_ml_dsa_87_signature_line_beside_ed25519() -> None:
    from cryptography.hazmat.primitives.asymmetric import mldsa

    pq = mldsa.MLDSA87PrivateKey.generate()
    pq_public = PublicKey(raw=pq.public_key().public_bytes_raw(), algorithm="ml-dsa-87")
    ed = _signer("log.example", bytes(32))
    cp = Checkpoint(origin="log.example", size=3, root=bytes(32))
    signed = cp.sign([ed, NoteSigner(name="log.example", public=pq_public, sign=pq.sign)])
    assert note.open_note(signed, [("log.example", pq_public)], source="cp")[1] == ["log.example"]
    assert note.open_note(signed, [("log.example", ed.public)], source="cp")[1] == ["log.example"]
    name, key = note.parse_vkey(note.vkey("log.example", pq_public))
    assert key == pq_public
