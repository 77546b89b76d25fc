"""Push, pull and install through a real registry (CNCF distribution: TLS with a test CA, htpasswd),
and each way the registry can lie or fail (docs/oci.md, docs/cli.md sections 18 and 19)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gapship_testing import KeyPair, assert_error, gapship_script, run_json, tree
from oci_testing import PASSWORD, USER, Registry, free_port, registry_config
from safeguards_testing import isolated_host  # noqa: F401  (a site host's default log goes to tmp_path)


def _push(bundle: Path, registry: Registry, repo: str, creds: Path | None, tag: str = "1.0") -> dict[str, object]:
    code, out = run_json("push", bundle, registry.url(repo, tag), *registry.options(creds))
    assert code == 0, out
    return out


def test_push_install_verify_pull_through_a_tls_registry(tmp_path: Path, tls_registry: Registry, creds: Path,
                                                         make_key: Callable[[str], KeyPair],
                                                         make_trust: Callable[..., Path],
                                                         unique_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    bundle = unique_bundle(key)
    out = _push(bundle, tls_registry, "fleet/roundtrip", creds)
    chunks = len(list((bundle / "chunks").iterdir()))
    assert out["blobs_uploaded"] == out["blobs"] >= chunks + 2
    assert str(out["digest"]).startswith("sha256:")

    ref = tls_registry.url("fleet/roundtrip")
    code, got = run_json("verify", ref, "--trust", trust, *tls_registry.options(creds))
    assert code == 0, got
    assert (got["chunks_checked"], got["chunks_total"]) == (chunks, chunks)

    prefix = tmp_path / "prefix"
    code, got = run_json("install", ref, "--trust", trust, "--prefix", prefix, *tls_registry.options(creds))
    assert code == 0, got
    assert got["status"] == "installed"
    assert (prefix / "demo" / "1.0.0" / "tiny" / "weights.bin").exists() or any((prefix / "demo" / "1.0.0").rglob("weights.bin"))
    # the signed provenance travels as layers of its own, and the registry install keeps it as a directory's does
    assert (bundle / "provenance" / "statement.json").is_file()
    assert (prefix / "demo" / "1.0.0" / "provenance" / "statement.json").read_bytes() == \
        (bundle / "provenance" / "statement.json").read_bytes()

    pulled = tmp_path / "pulled"
    code, got = run_json("pull", ref, "--trust", trust, "--out", pulled, *tls_registry.options(creds))
    assert code == 0, got
    assert got["chunks_fetched"] == chunks and got["chunks_kept"] == 0
    assert tree(pulled) == tree(bundle)


def test_second_push_sends_no_chunk(tls_registry: Registry, creds: Path, make_key: Callable[[str], KeyPair],
                                    unique_bundle: Callable[..., Path]) -> None:
    bundle = unique_bundle(make_key("release"))
    first = _push(bundle, tls_registry, "fleet/twice", creds)
    again = _push(bundle, tls_registry, "fleet/twice", creds)
    assert again["blobs_uploaded"] == 0 and again["bytes_uploaded"] == 0
    assert again["blobs_skipped"] == first["blobs"]
    assert again["digest"] == first["digest"]  # the same bundle is the same artifact
    by_digest = _push(bundle, tls_registry, "fleet/twice", creds, tag="1.0")
    assert by_digest["digest"] == first["digest"]


def test_push_by_digest_reference(tls_registry: Registry, creds: Path, make_key: Callable[[str], KeyPair],
                                  make_trust: Callable[..., Path], unique_bundle: Callable[..., Path],
                                  tmp_path: Path) -> None:
    key = make_key("release")
    bundle = unique_bundle(key)
    digest = _push(bundle, tls_registry, "fleet/bydigest", creds)["digest"]
    ref = f"oci://{tls_registry.host}/fleet/bydigest@{digest}"
    code, out = run_json("verify", ref, "--trust", make_trust(key), *tls_registry.options(creds))
    assert code == 0, out


def test_pull_resumes_fetching_only_missing_or_bad_chunks(tmp_path: Path, tls_registry: Registry, creds: Path,
                                                          make_key: Callable[[str], KeyPair],
                                                          make_trust: Callable[..., Path],
                                                          unique_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    bundle = unique_bundle(key)
    _push(bundle, tls_registry, "fleet/resume", creds)
    ref, pulled = tls_registry.url("fleet/resume"), tmp_path / "pulled"
    code, out = run_json("pull", ref, "--trust", trust, "--out", pulled, *tls_registry.options(creds))
    assert code == 0, out
    names = sorted(p.name for p in (pulled / "chunks").iterdir())
    # what a killed pull leaves: chunks not yet fetched, one half-written, a stale .part file
    (pulled / "chunks" / names[0]).unlink()
    (pulled / "chunks" / names[1]).unlink()
    (pulled / "chunks" / names[2]).write_bytes((pulled / "chunks" / names[2]).read_bytes()[:100])
    (pulled / "chunks" / f".{names[1]}.part").write_bytes(b"partial")
    code, out = run_json("pull", ref, "--trust", trust, "--out", pulled, *tls_registry.options(creds))
    assert code == 0, out
    assert out["chunks_fetched"] == 3 and out["chunks_kept"] == len(names) - 3
    code, out = run_json("verify", pulled, "--trust", trust)
    assert code == 0, out


def test_resume_after_killed_pull(tmp_path: Path, tls_registry: Registry, creds: Path,
                                  make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
                                  unique_bundle: Callable[..., Path]) -> None:
    """A real pull process killed (SIGKILL) mid-transfer; the rerun finishes it."""
    key = make_key("release")
    trust = make_trust(key)
    bundle = unique_bundle(key, size=400_000)
    _push(bundle, tls_registry, "fleet/killed", creds)
    ref, pulled = tls_registry.url("fleet/killed"), tmp_path / "pulled"
    proc = subprocess.Popen([str(gapship_script()), "pull", ref, "--trust", str(trust), "--out", str(pulled),
                             "--jobs", "1", *tls_registry.options(creds)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (pulled / "chunks").is_dir() and len(list((pulled / "chunks").iterdir())) >= 3:
            break
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    total = len(list((bundle / "chunks").iterdir()))
    code, out = run_json("pull", ref, "--trust", trust, "--out", pulled, *tls_registry.options(creds))
    assert code == 0, out
    assert out["chunks_fetched"] + out["chunks_kept"] == total
    assert tree(pulled / "chunks") == tree(bundle / "chunks")


def test_rejects_blob_altered_in_registry_storage(tmp_path: Path, tls_registry: Registry, creds: Path,
                                                  make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path],
                                                  unique_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    bundle = unique_bundle(key)
    _push(bundle, tls_registry, "fleet/altered", creds)
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    victim = manifest["chunks"][1]
    blob = tls_registry.blob_file(f"sha256:{victim['hash']}")
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    prefix = tmp_path / "prefix"
    ref = tls_registry.url("fleet/altered")
    code, out = run_json("install", ref, "--trust", trust, "--prefix", prefix, *tls_registry.options(creds))
    message = assert_error(out, code=3, kind="integrity", subject=f"chunks/{victim['name']}")
    assert victim["name"] in message
    assert not (prefix / "demo" / "1.0.0").exists() and not (prefix / "demo" / "current").exists()
    code, out = run_json("verify", ref, "--trust", trust, *tls_registry.options(creds))
    assert_error(out, code=3, kind="integrity", subject=f"chunks/{victim['name']}")
    code, out = run_json("pull", ref, "--trust", trust, "--out", tmp_path / "pulled", *tls_registry.options(creds))
    assert_error(out, code=3, kind="integrity", subject=f"chunks/{victim['name']}")
    assert not (tmp_path / "pulled" / "chunks" / victim["name"]).exists()


def test_rejects_manifest_replaced_under_the_tag_by_an_untrusted_key(
        tmp_path: Path, tls_registry: Registry, creds: Path, make_key: Callable[[str], KeyPair],
        make_trust: Callable[..., Path], unique_bundle: Callable[..., Path]) -> None:
    key, mallory = make_key("release"), make_key("mallory")
    trust = make_trust(key)
    _push(unique_bundle(key), tls_registry, "fleet/replaced", creds)
    _push(unique_bundle(mallory, extra=1), tls_registry, "fleet/replaced", creds)  # same tag, another signer
    prefix = tmp_path / "prefix"
    code, out = run_json("install", tls_registry.url("fleet/replaced"), "--trust", trust, "--prefix", prefix,
                         *tls_registry.options(creds))
    assert code == 4 and out["error"]["kind"] == "trust", out
    assert not (prefix / "demo").exists()


def test_rejects_wrong_credentials(tmp_path: Path, tls_registry: Registry, make_key: Callable[[str], KeyPair],
                                   make_trust: Callable[..., Path], unique_bundle: Callable[..., Path]) -> None:
    wrong = registry_config(tmp_path / "wrong.json", tls_registry.host, password="not-" + PASSWORD)
    code, out = run_json("push", unique_bundle(make_key("release")), tls_registry.url("fleet/creds"),
                         *tls_registry.options(wrong))
    message = assert_error(out, code=7, kind="environment", subject=tls_registry.host)
    assert "refused the credentials" in message
    code, out = run_json("verify", tls_registry.url("fleet/creds"), "--trust", make_trust(make_key("other")),
                         "--ca-file", tls_registry.ca.cert, "--registry-config", tmp_path / "none.json")
    assert_error(out, code=2, kind="usage", subject=str(tmp_path / "none.json"))
    anonymous = tmp_path / "anon.json"
    anonymous.write_text('{"auths": {}}')
    code, out = run_json("verify", tls_registry.url("fleet/creds"), "--trust", make_trust(make_key("x"), name="t2"),
                         "--ca-file", tls_registry.ca.cert, "--registry-config", anonymous)
    message = assert_error(out, code=7, kind="environment", subject=tls_registry.host)
    assert "needs credentials" in message


def test_rejects_tls_from_an_unknown_ca(tmp_path: Path, tls_registry: Registry, creds: Path,
                                        make_key: Callable[[str], KeyPair], make_trust: Callable[..., Path]) -> None:
    from oci_testing import make_ca

    other = make_ca(tmp_path / "other", name="not the enclave's CA")
    code, out = run_json("verify", tls_registry.url("fleet/any"), "--trust", make_trust(make_key("release")),
                         "--ca-file", other.cert, "--registry-config", creds)
    message = assert_error(out, code=7, kind="environment", subject=tls_registry.host)
    assert "certificate not trusted" in message
    code, out = run_json("verify", tls_registry.url("fleet/any"), "--trust", make_trust(make_key("r2"), name="t2"),
                         "--registry-config", creds)  # the system CAs do not know the test CA either
    assert_error(out, code=7, kind="environment", subject=tls_registry.host)


def test_rejects_plain_http_to_a_registry_that_is_not_loopback(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                               make_trust: Callable[..., Path]) -> None:
    code, out = run_json("install", "oci://10.1.2.3:5000/fleet/model:1.0", "--plain-http", "--trust",
                         make_trust(make_key("release")), "--prefix", tmp_path / "prefix")
    message = assert_error(out, code=2, kind="usage", subject="10.1.2.3:5000")
    assert "--plain-http" in message


def test_rejects_unreachable_registry_quickly(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                              make_trust: Callable[..., Path]) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    code, out = run_json("install", f"oci://{host}/fleet/model:1.0", "--plain-http", "--trust",
                         make_trust(make_key("release")), "--prefix", tmp_path / "prefix")
    assert time.monotonic() - started < 20  # no retry loop on a refused connection (generous: a shared machine)
    message = assert_error(out, code=7, kind="environment", subject=host)
    assert "unreachable" in message


def test_rejects_a_tag_that_is_not_a_gapship_artifact(tmp_path: Path, tls_registry: Registry, creds: Path,
                                                      make_key: Callable[[str], KeyPair],
                                                      make_trust: Callable[..., Path]) -> None:
    from gapship.installer.oci.artifact import EMPTY_DATA, EMPTY_DIGEST
    from gapship.installer.oci.auth import load_credentials
    from gapship.installer.oci.client import ClientOptions, RegistryClient
    from gapship.installer.oci.reference import parse_reference
    from gapship.installer.oci.transfer import _upload_bytes

    ref = parse_reference(tls_registry.url("fleet/notours"))
    client = RegistryClient(ref, ClientOptions(ca_file=tls_registry.ca.cert,
                                               credentials=load_credentials(ref.host, config=creds)))
    _upload_bytes(client, EMPTY_DIGEST, EMPTY_DATA, what="config")
    image = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "artifactType": "application/vnd.example.sbom.v1+json",
                        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST,
                                   "size": 2}, "layers": []}).encode()
    client.put_manifest("1.0", image)
    client.close()
    code, out = run_json("install", str(ref), "--trust", make_trust(make_key("release")), "--prefix",
                         tmp_path / "prefix", *tls_registry.options(creds))
    assert code == 3, out
    assert "not a gapship bundle" in out["error"]["message"]


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed (.ci/run installs it)")
def test_skopeo_copies_the_artifact_and_the_copy_installs(tmp_path: Path, tls_registry: Registry, creds: Path,
                                                          plain_registry: Registry,
                                                          make_key: Callable[[str], KeyPair],
                                                          make_trust: Callable[..., Path],
                                                          unique_bundle: Callable[..., Path]) -> None:
    key = make_key("release")
    trust = make_trust(key)
    bundle = unique_bundle(key)
    _push(bundle, tls_registry, "fleet/skopeo", creds)
    src = f"docker://{tls_registry.host}/fleet/skopeo:1.0"
    certs = tmp_path / "certs"  # skopeo's cert dir: *.crt are CAs (a *.key there would be a client key)
    certs.mkdir()
    shutil.copy(tls_registry.ca.cert, certs / "ca.crt")
    common = ["skopeo", "copy", "--src-cert-dir", str(certs), "--src-creds", f"{USER}:{PASSWORD}"]
    layout = tmp_path / "layout"
    subprocess.run([*common, src, f"oci:{layout}:1.0"], check=True, capture_output=True, timeout=120)
    index = json.loads((layout / "index.json").read_text())
    copied = index["manifests"][0]["digest"].split(":", 1)[1]
    assert json.loads((layout / "blobs" / "sha256" / copied).read_text())["artifactType"] \
        == "application/vnd.gapship.bundle.v1+json"
    subprocess.run([*common, "--dest-tls-verify=false", src, f"docker://{plain_registry.host}/mirror/skopeo:1.0"],
                   check=True, capture_output=True, timeout=120)
    prefix = tmp_path / "prefix"
    code, out = run_json("install", plain_registry.url("mirror/skopeo"), "--trust", trust, "--prefix", prefix,
                         "--plain-http")
    assert code == 0, out
    assert out["status"] == "installed"


def test_site_host_installs_from_the_registry_with_its_policy_and_audit_record(
        tmp_path: Path, tls_registry: Registry, creds: Path, make_key: Callable[[str], KeyPair],
        make_trust: Callable[..., Path], unique_bundle: Callable[..., Path], isolated_host: object) -> None:
    """On a site host the bundle's policy is read from the registry (a Range request for its bytes,
    checked against the signed file hash), enforced, and the audit record names the reference."""
    key = make_key("release")
    trust = make_trust(key)
    _push(unique_bundle(key), tls_registry, "fleet/site", creds)
    site = tmp_path / "site.toml"
    site.write_text('site_id = "test-site"\nsafeguards = ["inference-audit-log"]\n')
    log = tmp_path / "audit.jsonl"
    ref = tls_registry.url("fleet/site")
    code, out = run_json("install", ref, "--trust", trust, "--prefix", tmp_path / "prefix", "--site-config", site,
                         "--audit-log", log, *tls_registry.options(creds))
    assert code == 0, out
    assert out["site"]["site_id"] == "test-site" and out["site"]["models_installed"] == ["tiny"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r.get("params", {}).get("bundle") == ref for r in records), records
    other = tmp_path / "other-site.toml"
    other.write_text('site_id = "elsewhere"\nsafeguards = []\n')
    code, out = run_json("install", ref, "--trust", trust, "--prefix", tmp_path / "prefix2", "--site-config", other,
                         "--audit-log", log, *tls_registry.options(creds))
    assert code == 5, out


def test_rejects_options_that_need_a_bundle_directory(tmp_path: Path, make_key: Callable[[str], KeyPair],
                                                      make_trust: Callable[..., Path]) -> None:
    trust = make_trust(make_key("release"))
    code, out = run_json("verify", "oci://127.0.0.1:1/fleet/model:1.0", "--plain-http", "--trust", trust,
                         "--chunk", tmp_path / "00000.bin")
    assert_error(out, code=2, kind="usage", subject="--chunk")
    code, out = run_json("install", "oci://127.0.0.1:1/fleet/model:1.0", "--plain-http", "--trust", trust,
                         "--prefix", tmp_path / "prefix", "--repair")
    assert_error(out, code=2, kind="usage", subject="--repair")
    code, out = run_json("install", "oci://127.0.0.1:1/Fleet/model:1.0", "--plain-http", "--trust", trust,
                         "--prefix", tmp_path / "prefix")
    assert code == 2, out
