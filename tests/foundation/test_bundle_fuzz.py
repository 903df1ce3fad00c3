"""Property: no flipped, truncated or inserted byte anywhere gets a bundle accepted, and the
only failure is the documented BundleError. Then a seeded campaign of >= 500 mutations through
verify, inspect and a real agent install (issue 12)."""

from __future__ import annotations

import copy
import io
import random
import signal
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bundle import REASONS, BundleError, build_bundle, read_manifest_unverified, verify_bundle
from agent.bundle_build import SCHEMA, _write_canonical_tar, file_entry
from agent.canonical import canonical_json
from agent.keys import Keyring, generate_keypair, load_private_key, sign_payload

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


# --------------------------------------------------------------------------------------------
# Seeded mutation campaign (issue 12): >= 500 mutations of signed and unsigned bundles through
# verify, inspect and a real in-process agent install. Every case runs under a time limit; the
# outcome must be a documented refusal (never a traceback), nothing may be accepted wrongly and
# nothing may be written outside the agent's state dir.

CASE_LIMIT_S = 3.0
SEED = 20261201


class CaseTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise CaseTimeout()


def _within_limit(fn: Callable[[], Any]) -> Any:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _tiny_onnx(path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _fields() -> dict[str, Any]:
    return {"model": {"name": "digits", "version": 5, "device_class": "x86-64-generic", "format": "onnx",
                      "precision": "fp32"},
            "entrypoint": "model.onnx",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
            "metrics": {"accuracy": 0.9}, "provenance": {"by": "fuzz"}, "drift_baseline": {}}


def _forge(files: dict[str, Path], fields: dict[str, Any], keys: list[Ed25519PrivateKey],
           entries: list[dict[str, Any]] | None = None) -> bytes:
    entries = entries if entries is not None else [file_entry(r, p) for r, p in sorted(files.items())]
    manifest = {**copy.deepcopy(fields), "schema": fields.get("schema", SCHEMA), "files": entries}
    sigs = {"signatures": [sign_payload(manifest, k) for k in keys]}
    out = io.BytesIO()
    _write_canonical_tar(out, canonical_json(manifest), canonical_json(sigs), entries, files)
    return out.getvalue()


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def _retar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info = copy.copy(info)
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out.getvalue()


def _header_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.offset for m in tar.getmembers()]


def _set_field(header: bytearray, start: int, end: int, value: bytes) -> bytes:
    header[start:end] = value.ljust(end - start, b"\0")[:end - start]
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header)


class Campaign:
    """Builds the mutated cases: (kind, bytes, install_only) where install_only marks a bundle
    whose signature and manifest are valid but that this device must still refuse at install."""

    def __init__(self, workdir: Path, key: Ed25519PrivateKey, rng: random.Random) -> None:
        self.rng = rng
        self.key = key
        self.files = {"model.onnx": workdir / "model.onnx", "labels.json": workdir / "labels.json"}
        _tiny_onnx(self.files["model.onnx"])
        self.files["labels.json"].write_text('["a","b"]')
        self.good = _forge(self.files, _fields(), [key])
        self.cases: list[tuple[str, bytes, bool]] = []

    def add(self, kind: str, data: bytes, install_only: bool = False) -> None:
        if data != self.good:
            self.cases.append((kind, data, install_only))

    def byte_level(self, n_flip: int, n_trunc: int, n_insert: int) -> None:
        g, r = self.good, self.rng
        hot = [o + d for o in _header_offsets(g) for d in range(0, 512)] + list(range(512, 1536))
        for _ in range(n_flip):
            pos = r.choice(hot) if r.random() < 0.6 else r.randrange(len(g))
            self.add("flip", g[:pos] + bytes([g[pos] ^ r.randint(1, 255)]) + g[pos + 1:])
        for _ in range(n_trunc):
            self.add("truncate", g[:r.randrange(len(g))])
        for _ in range(n_insert):
            pos = r.randrange(len(g))
            self.add("insert", g[:pos] + bytes([r.randrange(256)]) * r.choice((1, 7, 512)) + g[pos:])

    def header_edits(self, n: int) -> None:
        g, r = self.good, self.rng
        offsets = _header_offsets(g)
        edits: list[tuple[int, int, Callable[[], bytes]]] = [
            (124, 136, lambda: f"{r.choice([0, 1, 511, 513, 4096, 8**11 - 1]):011o}".encode()),
            (124, 136, lambda: b"\x80" + (2**40).to_bytes(11, "big")),  # 2^40 declared, base-256
            (124, 136, lambda: b"\xff" * 12),
            (156, 157, lambda: r.choice([b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"Z"])),
            (0, 100, lambda: r.choice([b"../x", b"/etc/passwd", b"payload/../../PWNED", b"payload/a\\b",
                                       b"payload/" + b"a" * 91, b"payload/./model.onnx", b"", b"payload//x"])),
            (157, 257, lambda: b"/etc/passwd"),
            (257, 265, lambda: r.choice([b"ustar  \0", b"\0" * 8, b"ustar\x0001"])),
            (345, 500, lambda: b"../../prefix"),
            (136, 148, lambda: b"77777777777\0"),
        ]
        for _ in range(n):
            off = r.choice(offsets)
            start, end, value = r.choice(edits)
            header = bytearray(g[off:off + 512])
            self.add("header", g[:off] + _set_field(header, start, end, value()) + g[off + 512:])

    def member_edits(self, n: int) -> None:
        members = _members(self.good)
        r = self.rng

        def link(kind: bytes, name: str) -> tuple[tarfile.TarInfo, bytes]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = r.choice(["/etc/passwd", "../../escape", "payload/model.onnx"])
            return info, b""

        def renamed(ms: list, i: int, name: str) -> list:  # type: ignore[type-arg]
            info = copy.copy(ms[i][0])
            info.name = name
            return ms[:i] + [(info, ms[i][1])] + ms[i + 1:]

        ops: list[Callable[[list], list]] = [  # type: ignore[type-arg]
            lambda ms: [ms[1], ms[0], *ms[2:]],                       # signature before manifest
            lambda ms: [*ms[:2], *reversed(ms[2:])],                  # payload order swapped
            lambda ms: ms[:-1],                                       # a payload file dropped
            lambda ms: [ms[0], *ms[2:]],                              # signature dropped
            lambda ms: [*ms, ms[-1]],                                 # a member twice
            lambda ms: [*ms, (tarfile.TarInfo("payload/extra.bin"), b"")],
            lambda ms: renamed(ms, 2, r.choice(["payload/../../PWNED", "payload/other.onnx", "/abs",
                                                "payload/dir/../model.onnx", "manifest.json"])),
            lambda ms: renamed(ms, 0, "MANIFEST.json"),
            lambda ms: [*ms[:2], link(tarfile.SYMTYPE, "payload/model.onnx"), *ms[3:]],
            lambda ms: [*ms[:2], link(tarfile.LNKTYPE, "payload/labels.json"), *ms[3:]],
            lambda ms: [*ms, link(tarfile.SYMTYPE, "payload/evil")],
            lambda ms: [*ms[:2], (tarfile.TarInfo("payload/sub"), b""), *ms[2:]],
            lambda ms: [(ms[0][0], ms[0][1] + b" "), *ms[1:]],        # manifest bytes changed
            lambda ms: [*ms[:2], (ms[2][0], ms[2][1][::-1]), *ms[3:]],  # payload content swapped
        ]
        for _ in range(n):
            ms = [(copy.copy(i), d) for i, d in members]
            for info, _d in ms:
                if info.name == "payload/sub":
                    info.type = tarfile.DIRTYPE
            self.add("member", _retar(r.choice(ops)(ms)))

    def manifest_edits(self, n: int) -> None:
        """Re-signed with the trusted key: the signature is good, the content must still be refused."""
        r = self.rng
        deep: Any = {}
        for _ in range(40):
            deep = {"d": deep}
        bad_specs = [{"name": "x", "dtype": "float32", "shape": [-1, 4]},
                     {"name": "x", "dtype": "float32", "shape": [0]},
                     {"name": "x", "dtype": "float32", "shape": [2**40]},
                     {"name": "x", "dtype": "complex256", "shape": [1]},
                     {"name": "x", "dtype": None, "shape": [1]},
                     {"name": "x", "dtype": "float32", "shape": [[1]]},
                     {"name": "x", "dtype": "float32", "shape": [1] * 40},
                     {"name": 7, "dtype": "float32", "shape": [1]},
                     "x"]
        edits: list[tuple[Callable[[dict], None], bool]] = [  # type: ignore[type-arg]
            (lambda f: f["model"].update(name=r.choice(["../../PWNED_name", "a/b", "x" * 300, "", "..", "A",
                                                         None, 7, "a..b", ".x"])), False),
            (lambda f: f["model"].update(device_class=r.choice(["../x", "X86", "", None, "a/b"])), False),
            (lambda f: f["model"].update(device_class="arm64-cortex-a"), True),  # valid, not this device
            (lambda f: f["model"].update(format=r.choice(["openvino", "tflite"])), True),  # ONNX file
            (lambda f: f["model"].update(format=r.choice(["pickle", "", None, "ONNX"])), False),
            (lambda f: f["model"].update(precision=r.choice(["int4", None])), False),
            (lambda f: f["model"].update(version=r.choice([-1, 2**60, True, "5", 1.5, None])), False),
            (lambda f: f.update(inputs=[r.choice(bad_specs)]), False),
            (lambda f: f.update(outputs=[r.choice(bad_specs)]), False),
            (lambda f: f.update(inputs=r.choice(["x", None, {"a": 1}])), False),
            (lambda f: f.update(metrics=copy.deepcopy(deep)), False),
            (lambda f: f.update(entrypoint=r.choice(["nope.onnx", None, "../model.onnx"])), False),
            (lambda f: f.update(schema="edgefleet.bundle/v0"), False),
            (lambda f: f.pop("model"), False),
        ]
        for _ in range(n):
            fields = _fields()
            edit, install_only = r.choice(edits)
            edit(fields)
            self.add("manifest", _forge(self.files, fields, [self.key]), install_only)
        entries = [file_entry(rel, p) for rel, p in sorted(self.files.items())]
        for _ in range(max(1, n // 6)):  # file entries lie about the payload
            es = copy.deepcopy(entries)
            e = r.choice(es)
            e.update(r.choice([{"size": e["size"] + 1}, {"size": -1}, {"sha256": "0" * 64}, {"sha256": "zz"},
                               {"path": "../../PWNED"}, {"path": "a/../b"}]))
            try:
                self.add("entries", _forge(self.files, _fields(), [self.key], es))
            except (KeyError, ValueError, OSError):  # a lie the tar writer itself cannot write
                pass

    def unsigned(self, n: int, rogue: Ed25519PrivateKey) -> None:
        r = self.rng
        for _ in range(n):
            fields = _fields()
            if r.random() < 0.5:
                fields["model"]["name"] = r.choice(["digits", "../../PWNED_name", "other"])
            keys = r.choice([[], [rogue], [rogue, rogue]])
            self.add("unsigned" if not keys else "untrusted", _forge(self.files, fields, keys))


@pytest.fixture(scope="module")
def campaign_agent(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from agent.daemon import Agent
    from tests.agent.conftest import make_config

    root = tmp_path_factory.mktemp("fuzz")
    keys = root / "keys"
    for name in ("fleet", "build", "root"):
        generate_keypair(keys, name)
    box = root / "box"
    state = box / "a" / "b" / "state"  # traversal names would land in box/ or box/a/
    cfg = make_config(state, keys / "fleet.pub", device_id="fuzz-1")
    cfg.telemetry.enabled = False
    agent = Agent(cfg)
    agent.lifecycle.start()
    yield agent, load_private_key(keys / "build.key"), root, box, state
    agent.outbox.close()


def _outside(box: Path, state: Path) -> list[Path]:
    allowed = {box / "a", box / "a" / "b"}
    return [p for p in box.rglob("*") if p not in allowed and state != p and state not in p.parents]


@pytest.mark.slow
def test_mutation_campaign_refuses_everything(campaign_agent: Any) -> None:
    from agent.lifecycle import InstallError

    agent, key, root, box, state = campaign_agent
    keyring = agent.keys.build if hasattr(agent.keys, "build") else agent.keys.keyring
    rng = random.Random(SEED)
    camp = Campaign(root, key, rng)
    camp.byte_level(n_flip=110, n_trunc=35, n_insert=20)
    camp.header_edits(110)
    camp.member_edits(80)
    camp.manifest_edits(130)
    camp.unsigned(40, Ed25519PrivateKey.generate())
    assert len(camp.cases) >= 500, len(camp.cases)

    good_path = root / "good.bundle"
    good_path.write_bytes(camp.good)
    assert verify_bundle(good_path, keyring).name == "digits"  # the campaign starts from an accepted bundle

    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    path = root / "case.bundle"
    for i, (kind, data, install_only) in enumerate(camp.cases):
        path.write_bytes(data)
        where = f"case {i} ({kind})"
        for op, call, must_refuse in (
            ("verify", lambda: verify_bundle(path, keyring), not install_only),
            ("inspect", lambda: read_manifest_unverified(path), False),
            ("install", lambda: agent.install(path), True),
        ):
            try:
                _within_limit(call)
            except CaseTimeout:
                failures.append(f"{where}: {op} ran past {CASE_LIMIT_S}s")
            except BundleError as exc:
                outcomes[f"{op}:{exc.reason}"] += 1
                if exc.reason not in REASONS:
                    failures.append(f"{where}: {op} undocumented reason {exc.reason}")
            except InstallError as exc:
                outcomes[f"{op}:{exc.reason}"] += 1
                if op != "install":
                    failures.append(f"{where}: {op} raised InstallError")
            except Exception as exc:  # noqa: BLE001 - a traceback is the failure being counted
                failures.append(f"{where}: {op} raised {type(exc).__name__}: {exc}")
            else:
                outcomes[f"{op}:accepted"] += 1
                if must_refuse:
                    failures.append(f"{where}: {op} ACCEPTED")
        if i % 50 == 0 or kind in ("header", "member"):
            leaked = _outside(box, state)
            if leaked:
                failures.append(f"{where}: wrote outside the state dir: {leaked[:3]}")
                break
    assert agent.predictor.active is None  # nothing was ever installed
    assert not list(root.rglob("*PWNED*"))
    assert not [p for p in (state / "models").iterdir() if p.name != "current.json"], "leftovers in the store"
    assert not failures, f"{len(failures)} failures, e.g. {failures[:10]}\noutcomes {dict(outcomes)}"
    assert outcomes["verify:accepted"] == sum(1 for c in camp.cases if c[2])  # only install-only cases
    assert outcomes["install:accepted"] == 0
