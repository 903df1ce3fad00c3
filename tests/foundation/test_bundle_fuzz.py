"""Property: no flipped, truncated or inserted byte anywhere gets a bundle accepted, and the
only failure is the documented BundleError."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bundle import REASONS, BundleError, build_bundle, verify_bundle
from agent.keys import Keyring

from .conftest import manifest_fields

_KEY = Ed25519PrivateKey.generate()
_KEYRING = Keyring.from_public_keys([_KEY.public_key()])
_DIR = Path(tempfile.mkdtemp(prefix="efb-fuzz-"))
(_DIR / "model.onnx").write_bytes(bytes(range(256)) * 6)
build_bundle(_DIR / "good.efb", {"model.onnx": _DIR / "model.onnx"}, manifest_fields(), _KEY)
GOOD = (_DIR / "good.efb").read_bytes()

mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(GOOD) - 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, len(GOOD) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(GOOD)), st.integers(0, 255)),
)


def mutate(data: bytes, op: str, pos: int, val: int) -> bytes:
    if op == "flip":
        return data[:pos] + bytes([data[pos] ^ val]) + data[pos + 1:]
    if op == "truncate":
        return data[:pos]
    return data[:pos] + bytes([val]) + data[pos:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutations, min_size=1, max_size=3))
def test_mutated_bundle_is_never_accepted(ops: list[tuple[str, int, int]]) -> None:
    data = GOOD
    for op, pos, val in ops:
        data = mutate(data, op, min(pos, max(len(data) - 1, 0)), val) if data else data
    if data == GOOD:
        return
    path = _DIR / "mutated.efb"
    path.write_bytes(data)
    try:
        verify_bundle(path, _KEYRING)
    except BundleError as exc:
        assert exc.reason in REASONS
    else:
        raise AssertionError(f"mutated bundle accepted: {ops}")


def test_unmutated_bundle_is_accepted() -> None:
    assert verify_bundle(_DIR / "good.efb", _KEYRING).version == 3
