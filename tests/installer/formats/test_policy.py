"""The safeguards policy parser (installer/formats/policy.py): what a valid policy gives, and a message naming
the problem for each way a policy can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from gapship.installer.errors import PolicyError, UsageError
from gapship.installer.formats.policy import SiteRule, parse_policy
from gapship_testing import POLICY

FULL = b"""schema_version = 1
prohibited_uses = ["weapons targeting", "mass surveillance"]

[sites.lab]
safeguards = ["inference-audit-log"]

[sites.agency-x]
sensitive = true
safeguards = ["inference-audit-log", "cleared-operator"]

[models.tiny]
sites = ["lab", "agency-x"]

[models.big]
sites = ["agency-x"]
"""


def test_parses_a_full_policy() -> None:
    policy = parse_policy(FULL, source="policy.toml")
    assert policy.prohibited_uses == ("weapons targeting", "mass surveillance")
    assert policy.sites == {
        "lab": SiteRule(site="lab", safeguards=("inference-audit-log",), sensitive=False),
        "agency-x": SiteRule(site="agency-x", safeguards=("inference-audit-log", "cleared-operator"), sensitive=True),
    }
    assert policy.models == {"tiny": ("lab", "agency-x"), "big": ("agency-x",)}
    policy.check_models({"tiny", "big"})


def test_check_models_refuses_a_model_the_policy_does_not_enable() -> None:
    policy = parse_policy(POLICY, source="policy.toml")
    with pytest.raises(UsageError) as caught:
        policy.check_models({"tiny", "huge"})
    assert (caught.value.subject, caught.value.message) == (
        "huge", "policy enables model 'huge' at no site (add [models.huge])")


def test_check_models_refuses_a_policy_entry_for_a_model_not_in_the_bundle() -> None:
    policy = parse_policy(FULL, source="policy.toml")
    with pytest.raises(UsageError) as caught:
        policy.check_models({"tiny"})
    assert (caught.value.subject, caught.value.message) == (
        "big", "policy names model 'big', which is not in the bundle")


def _sub(old: bytes, new: bytes) -> bytes:
    assert old in POLICY
    return POLICY.replace(old, new)


BAD = {
    "not_toml": (b"schema_version = = 1\n", "not valid TOML"),
    "not_utf8": (b"schema_version = 1\n# \xff\n", "not valid TOML"),
    "missing_key": (_sub(b'prohibited_uses = ["weapons targeting"]\n', b""), "policy lacks prohibited_uses"),
    "unknown_top_key": (POLICY + b"\n[extras]\nx = 1\n", "policy has unknown key 'extras'"),
    "schema_version": (_sub(b"schema_version = 1", b'schema_version = "1"'), "schema_version must be 1, not '1'"),
    "no_prohibited_use": (_sub(b'["weapons targeting"]', b"[]"), "prohibited_uses must list at least one use"),
    "blank_prohibited_use": (_sub(b'["weapons targeting"]', b'["  "]'), "prohibited_uses must be a list of non-empty"),
    "prohibited_not_list": (_sub(b'["weapons targeting"]', b'"weapons"'), "prohibited_uses must be a list"),
    "no_site": (_sub(b'[sites.test-site]\nsafeguards = ["inference-audit-log"]\n', b"[sites]\n"),
                "sites must declare at least one site"),
    "bad_site_id": (_sub(b"test-site", b"Test_Site"), "site id 'Test_Site' must match"),
    "site_not_table": (_sub(b'[sites.test-site]\nsafeguards = ["inference-audit-log"]\n',
                            b'[sites]\ntest-site = "yes"\n'), "sites.test-site must be a table"),
    "site_unknown_key": (_sub(b"[sites.test-site]\n", b"[sites.test-site]\nowner = 'x'\n"),
                         "sites.test-site has unknown key 'owner'"),
    "site_lacks_safeguards": (_sub(b'safeguards = ["inference-audit-log"]\n', b""), "sites.test-site lacks safeguards"),
    "bad_safeguard_name": (_sub(b'"inference-audit-log"', b'"Audit Log"'),
                           "sites.test-site.safeguards: 'Audit Log' must match"),
    "repeated_safeguard": (_sub(b'["inference-audit-log"]', b'["inference-audit-log", "inference-audit-log"]'),
                           "sites.test-site.safeguards lists a value twice"),
    "sensitive_not_bool": (_sub(b"[sites.test-site]\n", b'[sites.test-site]\nsensitive = "yes"\n'),
                           "sites.test-site.sensitive must be true or false"),
    "bad_model_name": (_sub(b"[models.tiny]", b"[models.Tiny]"), "model name 'Tiny' must match"),
    "model_lacks_sites": (_sub(b'sites = ["test-site"]', b'regions = ["test-site"]'), "models.tiny lacks sites"),
    "model_site_undeclared": (_sub(b'sites = ["test-site"]', b'sites = ["nowhere"]'),
                              "models.tiny.sites names site 'nowhere', which is not declared under [sites]"),
    "model_at_no_site": (_sub(b'sites = ["test-site"]', b"sites = []"), "models.tiny.sites must name at least one site"),
}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_rejects_bad_policy(problem: str) -> None:
    data, words = BAD[problem]
    with pytest.raises(UsageError) as caught:
        parse_policy(data, source="shipped/policy.toml")
    assert caught.value.subject == "shipped/policy.toml"
    assert caught.value.message.startswith("shipped/policy.toml: ")
    assert words in caught.value.message
    assert "\n" not in caught.value.message


def test_error_class_is_the_callers_choice() -> None:
    """The installer re-reads the policy from a verified bundle and raises its own class there."""
    with pytest.raises(PolicyError):
        parse_policy(b"schema_version = 2\n", source="policy.toml", error=PolicyError)


def test_the_shipped_example_policy_is_valid() -> None:
    example = Path(__file__).resolve().parents[3] / "manifests" / "example" / "policy.toml"
    policy = parse_policy(example.read_bytes(), source=str(example))
    assert "tiny" in policy.models
    assert any(rule.sensitive for rule in policy.sites.values())
