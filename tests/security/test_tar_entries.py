"""Unsafe content in the tar stream (../shared/guides/security.md, "Unsafe content in the tar stream").

Every attack here assumes a compromised build: the hostile manifest is signed by a trusted key, so only
the installer's content rules stand between the bundle and the host. Each hostile name is tried twice:
declared in the manifest (the manifest rules must refuse it) and hidden in the tar header under a
harmless manifest entry (the header check must refuse it). The expected outcome is always exit 6 with a
message naming the entry, nothing changed under the prefix, and 1.0.0 still active.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from gapship_testing import POLICY
from hostile import Payload, craft, pad, pax_header, raw_header, standard_payload

HOSTILE_NAMES = [
    # id, name, what the message must say about it
    ("absolute", "/etc/cron.d/gapship", "absolute"),
    ("absolute_in_tree", "/models/tiny/weights.bin", "absolute"),
    ("dotdot", "models/tiny/../../../../etc/cron.d/gapship", "'..'"),
    ("dotdot_last", "models/tiny/sub/..", "'..'"),
    ("empty_component", "models/tiny//weights.bin", "empty"),
    ("dot_component", "models/tiny/./weights.bin", "'.'"),
    ("trailing_slash", "models/tiny/weights/", "empty"),
    ("nul", "models/tiny/weights.bin\x00.txt", "control character"),
    ("newline", "models/tiny/weights\n.bin", "control character"),
    ("backslash", "models/tiny/..\\..\\..\\etc\\gapship", "backslash"),
    ("not_nfc", "models/tiny/cafe\u0301.bin", "NFC"),
    ("lone_surrogate", "models/tiny/\udcff.bin", "surrogate"),
    ("long_component", "models/tiny/" + "w" * 256, "longer than 255"),
    ("long_path", "models/tiny/" + "/".join(["d" * 200] * 6) + "/w.bin", "longer than 1024"),
    ("too_deep", "models/tiny/" + "d/" * 31 + "w.bin", "deeper than 32"),
]


def _name_id(case: tuple[str, str, str]) -> str:
    return case[0]


@pytest.mark.parametrize("case", HOSTILE_NAMES, ids=_name_id)
def test_rejects_hostile_name_declared_in_manifest(site, case: tuple[str, str, str]) -> None:
    _, name, problem = case
    payload = Payload()
    payload.add("models/tiny/config.json", b"{}\n")
    payload.add(name, b"pwned\n", header=pax_header("models/tiny/x", 6), component=("model", "tiny"))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("unsafe path", problem), subject=name)


TAR_ONLY_NAMES = [
    ("absolute", "/etc/cron.d/gapship"),
    ("dotdot", "models/tiny/../../../../etc/cron.d/gapship"),
    ("dot_component", "models/tiny/./evil.bin"),
    ("backslash", "models\\tiny\\evil.bin"),
    ("nul", "models/tiny/evil.bin\x00/../../../etc/passwd"),
    ("not_nfc", "models/tiny/e\u0301vil.bin"),
    ("case_variant", "models/tiny/EVIL.bin"),
    ("other_component", "safeguards/policy.toml"),
    ("long_name", "models/tiny/" + "e" * 4000),
]


@pytest.mark.parametrize("case", TAR_ONLY_NAMES, ids=lambda c: c[0])
def test_rejects_hostile_name_in_tar_header(site, case: tuple[str, str]) -> None:
    """The manifest declares a harmless name; the tar header (pax ``path``) carries the hostile one."""
    _, name = case
    data = b"pwned\n"
    payload = Payload()
    payload.add("models/tiny/config.json", b"{}\n")
    payload.add("models/tiny/evil.bin", data, header=pax_header("x", len(data), pax={"path": name}))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/evil.bin'", "differs from the manifest", "names"),
                        subject="models/tiny/evil.bin")


def test_nul_in_raw_ustar_name_installs_only_the_declared_file(site) -> None:
    """A NUL inside the ustar name field: tarfile and tar(1) both stop at the NUL, so the entry is the
    declared file; whatever follows the NUL is never used as a path."""
    data = b"pwned\n"
    payload = Payload()
    payload.add("models/tiny/evil.bin", data, header=raw_header(b"models/tiny/evil.bin\x00/../../etc/x", len(data)))
    payload.policy()
    bundle = site.write(payload)
    code, out = site.install(bundle)
    assert code == 0, out
    root = site.home / "2.0.0"
    assert (root / "models/tiny/evil.bin").read_bytes() == data
    assert sorted(p.name for p in (root / "models/tiny").iterdir()) == ["evil.bin"]


COLLISIONS = [
    ("duplicate", "models/tiny/weights.bin", "models/tiny/weights.bin", "duplicate"),
    ("case_fold", "models/tiny/Weights.bin", "models/tiny/weights.bin", "collides with"),
    ("sharp_s", "models/tiny/STRASSE.bin", "models/tiny/straße.bin", "collides with"),
    ("nfkc_ligature", "models/tiny/file.bin", "models/tiny/\ufb01le.bin", "collides with"),
    ("nfc_vs_composed_case", "models/tiny/CAF\u00c9.bin", "models/tiny/caf\u00e9.bin", "collides with"),
    ("file_and_directory", "models/tiny/a", "models/tiny/a/b.bin", "directory of another path"),
]


@pytest.mark.parametrize("case", COLLISIONS, ids=lambda c: c[0])
def test_rejects_colliding_names(site, case: tuple[str, str, str, str]) -> None:
    """Names that land on one file on a case-insensitive or normalising filesystem."""
    _, first, second, problem = case
    payload = Payload()
    payload.add(first, b"one\n")
    payload.add(second, b"two\n")
    payload.policy()
    error = site.assert_refused(site.write(payload), code=6, needles=("unsafe path", problem))
    assert error["subject"] in (first, second)


def test_rejects_duplicate_tar_entry_not_in_manifest(site) -> None:
    """The same name twice in the tar stream, declared once: the second copy (which tar's
    last-one-wins would install) is an undeclared entry."""
    payload = Payload()
    payload.add("models/tiny/weights.bin", b"good weights\n")
    payload.add("models/tiny/weights.bin", b"evil weights\n", declare=False)
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("extra tar entries", "'safeguards/policy.toml'"),
                        subject="safeguards/policy.toml")


def test_rejects_duplicate_tar_entry_after_last_file(site) -> None:
    payload = standard_payload()
    payload.add("models/tiny/weights.bin", b"evil weights\n", declare=False)
    site.assert_refused(site.write(payload), code=6, needles=("non-zero bytes", "end of the archive"), subject="payload")


LINKS = [
    ("hardlink_out", tarfile.LNKTYPE, "/etc/shadow"),
    ("hardlink_in_tree", tarfile.LNKTYPE, "models/tiny/config.json"),
    ("symlink_out_absolute", tarfile.SYMTYPE, "/etc"),
    ("symlink_out_relative", tarfile.SYMTYPE, "../../../../../../etc/passwd"),
    ("symlink_in_tree", tarfile.SYMTYPE, "config.json"),
]


@pytest.mark.parametrize("case", LINKS, ids=lambda c: c[0])
def test_rejects_link_declared_as_file(site, case: tuple[str, bytes, str]) -> None:
    """The manifest declares a (empty) file; the tar entry is a link: type mismatch."""
    _, kind, target = case
    payload = Payload()
    payload.add("models/tiny/config.json", b"{}\n")
    payload.add("models/tiny/link", b"", header=pax_header("models/tiny/link", 0, type=kind, linkname=target))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/link'", "is not a regular file"),
                        subject="models/tiny/link")


@pytest.mark.parametrize("case", LINKS, ids=lambda c: c[0])
def test_rejects_undeclared_link(site, case: tuple[str, bytes, str]) -> None:
    """A link entry the manifest does not list, before a declared file."""
    _, kind, target = case
    payload = Payload()
    payload.raw(pax_header("models/tiny/link", 0, type=kind, linkname=target))
    payload.add("models/tiny/config.json", b"{}\n")
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("extra tar entries", "'models/tiny/config.json'"),
                        subject="models/tiny/config.json")


def test_rejects_symlink_then_write_through_it(site, tmp_path: Path) -> None:
    """A symlink to a directory outside the prefix, then a file "inside" it: the classic escape."""
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = Payload()
    payload.raw(pax_header("models/tiny/d", 0, type=tarfile.SYMTYPE, linkname=str(outside)))
    payload.add("models/tiny/d/evil.txt", b"written through a symlink\n")
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("extra tar entries", "'models/tiny/d/evil.txt'"))
    assert list(outside.iterdir()) == []


def test_rejects_symlink_then_write_through_it_both_declared(site, tmp_path: Path) -> None:
    """Both declared (the link as a file): the manifest refuses a path that is a file and a directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = Payload()
    payload.add("models/tiny/d", b"", header=pax_header("models/tiny/d", 0, type=tarfile.SYMTYPE, linkname=str(outside)))
    payload.add("models/tiny/d/evil.txt", b"written through a symlink\n")
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/d'", "directory of another path"),
                        subject="models/tiny/d")
    assert list(outside.iterdir()) == []


SPECIAL_TYPES = [
    ("char_device", tarfile.CHRTYPE, "is not a regular file"),
    ("block_device", tarfile.BLKTYPE, "is not a regular file"),
    ("fifo", tarfile.FIFOTYPE, "is not a regular file"),
    ("directory", tarfile.DIRTYPE, "is not a regular file"),
    ("contiguous", tarfile.CONTTYPE, "is not a regular file"),
    ("old_regular", tarfile.AREGTYPE, "is not a regular file"),
    ("gnu_longname", tarfile.GNUTYPE_LONGNAME, "extension header"),
    ("gnu_sparse", tarfile.GNUTYPE_SPARSE, "extension header"),
    ("pax_global", tarfile.XGLTYPE, "extension header"),
]


@pytest.mark.parametrize("case", SPECIAL_TYPES, ids=lambda c: c[0])
def test_rejects_special_entry_type(site, case: tuple[str, bytes, str]) -> None:
    """Devices, FIFOs, directories and GNU/pax extension members where a regular file is declared."""
    _, kind, problem = case
    payload = Payload()
    payload.add("models/tiny/dev", b"", header=raw_header(b"models/tiny/dev", 0, type=kind))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/dev'", problem), subject="models/tiny/dev")


BAD_MODES = [0o4755, 0o2755, 0o6755, 0o1755, 0o777, 0o666, 0o600, 0o100644]


@pytest.mark.parametrize("mode", BAD_MODES, ids=oct)
def test_rejects_setuid_setgid_and_odd_modes_in_manifest(site, mode: int) -> None:
    payload = Payload()
    payload.add("models/tiny/run.sh", b"#!/bin/sh\n", mode=mode)
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/run.sh'", f"mode {mode:o}"),
                        subject="models/tiny/run.sh")


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1755, 0o777], ids=oct)
def test_rejects_setuid_setgid_mode_in_tar_header(site, mode: int) -> None:
    """The manifest says 755, the tar header carries the setuid/setgid/sticky/world-writable bits."""
    data = b"#!/bin/sh\n"
    payload = Payload()
    payload.add("models/tiny/run.sh", data, mode=0o755, header=pax_header("models/tiny/run.sh", len(data), mode=mode))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/run.sh'", f"declares mode {mode:o}"),
                        subject="models/tiny/run.sh")


def test_rejects_header_region_over_cap(site) -> None:
    """A pax header so long (a 9000-byte path) that the header region passes the 8 KiB cap."""
    data = b"weights"
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=pax_header("models/tiny/" + "a" * 9000, len(data)))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/w.bin'", "header region"),
                        subject="models/tiny/w.bin")


def test_rejects_entry_not_in_manifest_between_files(site) -> None:
    payload = Payload()
    payload.add("models/tiny/config.json", b"{}\n")
    payload.add("models/tiny/backdoor.py", b"import os\n", declare=False)
    payload.add("models/tiny/weights.bin", b"w" * 700)
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("extra tar entries", "'models/tiny/weights.bin'"),
                        subject="models/tiny/weights.bin")


def test_rejects_entry_not_in_manifest_under_another_name(site) -> None:
    """The manifest lists config.json; the tar entry at its place is a different file."""
    data = b"import os\n"
    payload = Payload()
    payload.add("models/tiny/config.json", data, header=pax_header("models/tiny/backdoor.py", len(data)))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("names 'models/tiny/backdoor.py'",),
                        subject="models/tiny/config.json")


def test_rejects_entry_size_differs_from_manifest(site) -> None:
    data = b"w" * 600
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=pax_header("models/tiny/w.bin", 6000))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("declares size 6000", "manifest says 600"),
                        subject="models/tiny/w.bin")


def test_rejects_entry_pax_size_differs_from_manifest(site) -> None:
    """ustar size right, pax size (which tar readers prefer) wrong."""
    data = b"w" * 600
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=pax_header("models/tiny/w.bin", 600, pax={"size": "6000"}))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("declares size 6000",), subject="models/tiny/w.bin")


def test_rejects_entry_type_differs_from_manifest(site) -> None:
    payload = Payload()
    payload.add("models/tiny/w.bin", b"", header=pax_header("models/tiny/w.bin", 0, type=tarfile.DIRTYPE))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("is not a regular file",), subject="models/tiny/w.bin")


PAX_TRICKS = [
    ("linkpath", {"linkpath": "/etc/passwd"}, "not allowed"),
    ("gnu_sparse", {"GNU.sparse.major": "1"}, "not allowed"),
    ("uid", {"uid": "0"}, "not allowed"),
    ("charset", {"hdrcharset": "BINARY"}, "not allowed"),
]


@pytest.mark.parametrize("case", PAX_TRICKS, ids=lambda c: c[0])
def test_rejects_pax_keys_that_change_extraction(site, case: tuple[str, dict[str, str], str]) -> None:
    _, records, problem = case
    data = b"weights"
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=pax_header("models/tiny/w.bin", len(data), pax=records))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("pax key", problem), subject="models/tiny/w.bin")


def _pax_member(records: bytes, then: bytes) -> bytes:
    return raw_header(b"PaxHeader", len(records), type=tarfile.XHDTYPE) + records + bytes(-len(records) % 512) + then


def _record(key: bytes, value: bytes, *, end: bytes = b"\n") -> bytes:
    """One pax record ``"<len> key=value\\n"`` with its correct length."""
    body = b" " + key + b"=" + value + end
    length = len(body) + 1
    length = len(body) + len(str(length))
    return str(length).encode() + body


RAW_PAX = [
    ("repeated_path", _record(b"path", b"models/tiny/w.bin") + _record(b"path", b"models/tiny/x.bin"),
     "not allowed or repeated"),
    ("bad_length", b"99" + _record(b"path", b"models/tiny/w.bin")[2:], "malformed pax record"),
    ("negative_length", b"-5" + _record(b"path", b"models/tiny/w.bin")[2:], "malformed pax record"),
    ("no_newline", _record(b"path", b"models/tiny/w.bin", end=b"X"), "malformed pax record"),
    ("not_utf8", _record(b"path", b"models/tiny/\xff\xfe"), "not UTF-8"),
]


@pytest.mark.parametrize("case", RAW_PAX, ids=lambda c: c[0])
def test_rejects_malformed_pax_records(site, case: tuple[str, bytes, str]) -> None:
    _, records, problem = case
    data = b"weights"
    header = _pax_member(records, raw_header(b"models/tiny/w.bin", len(data)))
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=header)
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=(problem, "'models/tiny/w.bin'"), subject="models/tiny/w.bin")


def test_rejects_two_pax_headers_in_a_row(site) -> None:
    data = b"weights"
    inner = _pax_member(_record(b"path", b"models/tiny/w.bin"), raw_header(b"models/tiny/w.bin", len(data)))
    header = _pax_member(_record(b"mtime", b"0"), inner)
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=header)
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("'models/tiny/w.bin'",), subject="models/tiny/w.bin")


HEADER_DAMAGE = [
    ("bad_checksum", dict(checksum=1), "invalid tar header"),
    ("gnu_magic", dict(magic=b"ustar  \x00"), "not POSIX ustar"),
    ("v7_no_magic", dict(magic=bytes(8)), "not POSIX ustar"),
]


@pytest.mark.parametrize("case", HEADER_DAMAGE, ids=lambda c: c[0])
def test_rejects_damaged_or_foreign_tar_header(site, case: tuple[str, dict[str, object], str]) -> None:
    _, fields, problem = case
    data = b"weights"
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=raw_header(b"models/tiny/w.bin", len(data), **fields))  # type: ignore[arg-type]
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=(problem, "'models/tiny/w.bin'"), subject="models/tiny/w.bin")


def test_rejects_ustar_prefix_field_changing_the_name(site) -> None:
    """The ustar prefix field (joined before the name by tar readers) moves the file elsewhere."""
    data = b"weights"
    payload = Payload()
    payload.add("models/tiny/w.bin", data, header=raw_header(b"w.bin", len(data), prefix=b"../../../../etc"))
    payload.policy()
    site.assert_refused(site.write(payload), code=6, needles=("names '../../../../etc/w.bin'",), subject="models/tiny/w.bin")


def test_rejects_trailing_garbage_inside_the_archive_end(site) -> None:
    """Non-zero bytes in the end-of-archive blocks (a compromised build re-signed the chunks)."""
    crafted = craft(standard_payload())
    last = bytearray(crafted.chunks[-1])
    last[-700:-690] = b"GARBAGE!!!"
    crafted.chunks[-1] = bytes(last)
    crafted.rechunk()
    site.assert_refused(site.write(crafted), code=6, needles=("non-zero bytes", "end of the archive"), subject="payload")


def test_rejects_garbage_in_file_padding(site) -> None:
    """Non-zero bytes between a file's last byte and the next block: where tar readers do not look."""
    payload = Payload()
    entry = payload.add("models/tiny/w.bin", b"w" * 100)
    payload.policy()
    stream = bytearray(payload.end())
    stream[entry["offset"] + 100:entry["offset"] + 110] = b"hidden!!!!"
    crafted = craft(bytes(stream), payload.components)
    site.assert_refused(site.write(crafted), code=6, needles=("non-zero bytes", "after 'models/tiny/w.bin'"),
                        subject="models/tiny/w.bin")


def test_rejects_trailing_garbage_after_payload(site) -> None:
    """Bytes appended to the last chunk file after signing: longer than declared."""
    crafted = craft(standard_payload())
    bundle = site.write(crafted)
    last = bundle / "chunks" / f"{len(crafted.chunks) - 1:05d}.bin"
    last.write_bytes(last.read_bytes() + b"trailing garbage")
    subject = f"chunks/{last.name}"
    site.assert_refused(bundle, code=3, needles=(subject, "longer than"), subject=subject)


def test_rejects_archive_end_shorter_than_two_blocks(site) -> None:
    """The manifest leaves less than two zero blocks at the end: not a whole tar archive."""
    payload = standard_payload()
    policy = payload.components[-1]["files"][-1]
    stream = payload.end()
    cut_at = pad(policy["offset"] + policy["size"]) + 512
    crafted = craft(stream[:cut_at], payload.components)
    site.assert_refused(site.write(crafted), code=6, needles=("end of the archive",), subject="payload_size")


def test_rejects_unsigned_hostile_bundle(site) -> None:
    """Without a release key the same hostile content stops at the signature check (exit 4)."""
    payload = Payload()
    payload.add("/etc/cron.d/gapship", b"* * * * * root sh\n")
    payload.policy()
    site.assert_refused(site.write(payload, signers=()), code=4, needles=("no signature",), subject="signatures")


def test_rejects_hostile_bundle_signed_by_untrusted_key(site, make_key) -> None:
    payload = Payload()
    payload.add("/etc/cron.d/gapship", b"* * * * * root sh\n")
    payload.policy()
    mallory = make_key("mallory")
    site.assert_refused(site.write(payload, signers=(mallory,)), code=4, needles=("no valid signature", "untrusted"),
                        subject="signatures")


def test_installs_well_formed_crafted_bundle(site) -> None:
    """The control: the crafting library writes bundles the installer accepts, so each refusal above
    is caused by the one thing the test breaks."""
    files = {"config.json": b"{}\n", "sub/weights.bin": bytes(range(256)) * 20, "empty": b""}
    bundle = site.write(standard_payload(files))
    code, out = site.install(bundle)
    assert code == 0, out
    for rel, data in files.items():
        assert (site.home / "current" / "models/tiny" / rel).read_bytes() == data
    assert (site.home / "current" / "safeguards/policy.toml").read_bytes() == POLICY
