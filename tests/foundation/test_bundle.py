"""Round trip and every refusal of the bundle verifier, each its own test."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle import BundleError, build_bundle, make_rollback_approval, verify_bundle
from agent.keys import Keyring, sign_payload

from .conftest import manifest_fields
from .tar_tools import json_member, read_members, reg, write_tar


def test_round_trip_unpacks_exact_files(bundle_path: Path, keyring: Keyring, model_files: dict, tmp_path: Path):
    dest = tmp_path / "installed" / "digits-3"
    result = verify_bundle(bundle_path, keyring, unpack_to=dest)
    assert result.name == "digits" and result.version == 3
    assert result.path == dest
    assert sorted(p.name for p in dest.iterdir()) == ["labels.json", "model.onnx"]
    for rel, src in model_files.items():
        assert (dest / rel).read_bytes() == src.read_bytes()
    assert result.manifest["metrics"] == {"accuracy": 0.97}
    assert not [p for p in dest.parent.iterdir() if "staging" in p.name]


def test_build_is_byte_identical(tmp_path: Path, model_files: dict, signing_key: Ed25519PrivateKey):
    a = build_bundle(tmp_path / "a.efb", model_files, manifest_fields(), signing_key)
    b = build_bundle(tmp_path / "b.efb", model_files, manifest_fields(), signing_key)
    assert (tmp_path / "a.efb").read_bytes() == (tmp_path / "b.efb").read_bytes()
    assert a.bundle_sha256 == b.bundle_sha256


def _refused(path: Path, keyring: Keyring, reason: str, **kw) -> BundleError:
    with pytest.raises(BundleError) as err:
        verify_bundle(path, keyring, **kw)
    assert err.value.reason == reason, str(err.value)
    return err.value


def _rewrite(src: Path, dst: Path, edit) -> None:  # type: ignore[no-untyped-def]
    members = read_members(src)
    write_tar(dst, [reg(n, d) for n, d in edit(members)])


def test_refuses_missing_signature(bundle_path: Path, keyring: Keyring, tmp_path: Path):
    out = tmp_path / "nosig.efb"
    _rewrite(bundle_path, out, lambda ms: [m for m in ms if m[0] != "signature.json"])
    _refused(out, keyring, "no-signature")


def test_refuses_unknown_key(bundle_path: Path, tmp_path: Path):
    other = Keyring.from_public_keys([Ed25519PrivateKey.generate().public_key()])
    _refused(bundle_path, other, "unknown-key")


def test_refuses_bad_signature(bundle_path: Path, keyring: Keyring, signing_key, tmp_path: Path):
    members = read_members(bundle_path)
    manifest = json.loads(members[0][1])
    forged = dict(manifest, metrics={"accuracy": 0.99})  # signature stays the old one
    out = tmp_path / "forged.efb"
    write_tar(out, [json_member("manifest.json", forged), reg(*members[1]), *[reg(n, d) for n, d in members[2:]]])
    _refused(out, keyring, "bad-signature")


def _resigned(bundle_path: Path, signing_key, tmp_path: Path, edit_manifest=None, edit_payload=None):  # type: ignore[no-untyped-def]
    members = read_members(bundle_path)
    manifest = json.loads(members[0][1])
    if edit_manifest:
        edit_manifest(manifest)
    payload = [(n, d) for n, d in members[2:]]
    if edit_payload:
        payload = edit_payload(payload)
    out = tmp_path / "resigned.efb"
    write_tar(out, [json_member("manifest.json", manifest),
                    json_member("signature.json", {"signatures": [sign_payload(manifest, signing_key)]}),
                    *[reg(n, d) for n, d in payload]])
    return out


def test_refuses_hash_mismatch(bundle_path: Path, keyring: Keyring, signing_key, tmp_path: Path):
    def flip(payload):  # type: ignore[no-untyped-def]
        return [(n, (d[:-1] + bytes([d[-1] ^ 1])) if n.endswith("model.onnx") else d) for n, d in payload]
    _refused(_resigned(bundle_path, signing_key, tmp_path, edit_payload=flip), keyring, "hash-mismatch")


def test_refuses_size_mismatch(bundle_path: Path, keyring: Keyring, signing_key, tmp_path: Path):
    def grow(payload):  # type: ignore[no-untyped-def]
        return [(n, d + b"x" if n.endswith("model.onnx") else d) for n, d in payload]
    _refused(_resigned(bundle_path, signing_key, tmp_path, edit_payload=grow), keyring, "size-mismatch")


def test_refuses_extra_file(bundle_path: Path, keyring: Keyring, signing_key, tmp_path: Path):
    out = _resigned(bundle_path, signing_key, tmp_path, edit_payload=lambda p: [*p, ("payload/zz.bin", b"evil")])
    _refused(out, keyring, "extra-file")


def test_refuses_missing_file(bundle_path: Path, keyring: Keyring, signing_key, tmp_path: Path):
    out = _resigned(bundle_path, signing_key, tmp_path,
                    edit_payload=lambda p: [m for m in p if not m[0].endswith("labels.json")])
    _refused(out, keyring, "missing-file")


@pytest.mark.parametrize("name", ["payload/../escape", "/etc/passwd", "payload/a/../../b", "payload\\x"])
def test_refuses_escaping_paths(bundle_path: Path, keyring: Keyring, signing_key, tmp_path: Path, name: str):
    members = read_members(bundle_path)
    out = tmp_path / "escape.efb"
    write_tar(out, [reg(*members[0]), reg(*members[1]), reg(name, b"x")])
    _refused(out, keyring, "unsafe-path")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.DIRTYPE])
def test_refuses_links_and_devices(bundle_path: Path, keyring: Keyring, tmp_path: Path, kind: bytes):
    members = read_members(bundle_path)
    info = tarfile.TarInfo("payload/model.onnx")
    info.type = kind
    info.linkname = "/etc/passwd"
    out = tmp_path / "link.efb"
    write_tar(out, [reg(*members[0]), reg(*members[1]), (info, None)])
    _refused(out, keyring, "unsafe-path")


def test_refuses_member_over_limit_before_reading(bundle_path: Path, keyring: Keyring, tmp_path: Path):
    err = _refused(bundle_path, keyring, "too-large", max_member_bytes=1000)
    assert "limit 1000" in str(err)


def test_refuses_downgrade(bundle_path: Path, keyring: Keyring):
    err = _refused(bundle_path, keyring, "downgrade", installed_version=4)
    assert "lower than installed 4" in str(err)
    assert verify_bundle(bundle_path, keyring, installed_version=3).version == 3


def test_fleet_signed_rollback_allows_downgrade(bundle_path: Path, keyring: Keyring, signing_key):
    manifest_sha = verify_bundle(bundle_path, keyring).manifest_sha256
    approval = make_rollback_approval(signing_key, "digits", 3, manifest_sha)
    assert verify_bundle(bundle_path, keyring, installed_version=5, rollback_approval=approval).version == 3


def test_rollback_approval_must_match_and_be_trusted(bundle_path: Path, keyring: Keyring, signing_key):
    manifest_sha = verify_bundle(bundle_path, keyring).manifest_sha256
    wrong_version = make_rollback_approval(signing_key, "digits", 2, manifest_sha)
    _refused(bundle_path, keyring, "downgrade", installed_version=5, rollback_approval=wrong_version)
    untrusted = make_rollback_approval(Ed25519PrivateKey.generate(), "digits", 3, manifest_sha)
    _refused(bundle_path, keyring, "downgrade", installed_version=5, rollback_approval=untrusted)


def test_key_rotation_accepts_either_trusted_key(tmp_path: Path, model_files: dict, signing_key):
    new_key = Ed25519PrivateKey.generate()
    both = Keyring.from_public_keys([signing_key.public_key(), new_key.public_key()])
    build_bundle(tmp_path / "new.efb", model_files, manifest_fields(version=4), new_key)
    assert verify_bundle(tmp_path / "new.efb", both).version == 4


def test_padding_change_is_refused(bundle_path: Path, keyring: Keyring, tmp_path: Path):
    data = bytearray(bundle_path.read_bytes())
    data[-1] = 1  # inside the end-of-archive zero blocks, ignored by tar readers
    out = tmp_path / "pad.efb"
    out.write_bytes(bytes(data))
    _refused(out, keyring, "malformed")


def test_failed_unpack_leaves_nothing(bundle_path: Path, keyring: Keyring, signing_key, tmp_path: Path):
    def flip(payload):  # type: ignore[no-untyped-def]
        return [(n, d[:-1] + bytes([d[-1] ^ 1])) for n, d in payload]
    bad = _resigned(bundle_path, signing_key, tmp_path, edit_payload=flip)
    dest = tmp_path / "models" / "digits-3"
    _refused(bad, keyring, "hash-mismatch", unpack_to=dest)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []


def test_build_refuses_bad_manifest(tmp_path: Path, model_files: dict, signing_key):
    with pytest.raises(BundleError) as err:
        build_bundle(tmp_path / "x.efb", model_files, manifest_fields(format="pickle"), signing_key)
    assert err.value.reason == "malformed" and "model.format" in str(err.value)
