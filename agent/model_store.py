"""Installed model versions on disk and the pointer to the active one.

Layout under state_dir/models:
  <name>-v<version>-<manifest sha[:12]>/   unpacked payload (created atomically by
                                           agent.bundle.verify_bundle, then renamed)
  <same>.manifest.json                     the verified manifest, written after the rename
  current.json                             {"active": {...}, "previous": {...}}; replaced with
                                           os.replace after fsync, so a crash leaves either the
                                           old or the new pointer, never a torn one.
Leftover staging folders from a crash are removed at start.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.bundle import BundleError, RollbackApproval, VerifiedBundle, verify_bundle
from agent.canonical import canonical_json
from agent.keys import Keyring
from agent.manifest_check import ManifestRefused, check_format_magic
from agent.names import UnsafePath, safe_join

SPACE_MARGIN = 2.0  # free bytes needed per bundle byte: the unpacked copy plus room for the manifest, logs
SPACE_RESERVE = 1 << 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstalledModel:
    name: str
    version: int
    manifest_sha256: str
    bundle_sha256: str
    dirname: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "manifest_sha256": self.manifest_sha256,
                "bundle_sha256": self.bundle_sha256}


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a torn one.
    The file is private (0600): state files hold telemetry settings, keyrings and credentials."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a half-written temp file
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """`device_class`: refuse bundles built for another class before unpacking anything."""

    def __init__(self, state_dir: Path, keep: int = 3, device_class: str | None = None,
                 space_margin: float = SPACE_MARGIN, max_bundle_bytes: int | None = None) -> None:
        self.root = Path(state_dir) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.max_bundle_bytes = max_bundle_bytes  # per bundle member; None: the bundle reader's default
        self.device_class = device_class
        self.space_margin = space_margin
        self._clean_staging()

    @property
    def pointer_path(self) -> Path:
        return self.root / "current.json"

    def _clean_staging(self) -> None:
        for p in self.root.iterdir():
            if p.name.startswith(".") and any(t in p.name for t in (".staging-", ".tmp-", ".incoming-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def pointer(self) -> dict[str, InstalledModel | None]:
        try:
            data = json.loads(self.pointer_path.read_text())
        except FileNotFoundError:
            return {"active": None, "previous": None}
        except (OSError, ValueError) as exc:
            log.error("event=pointer-unreadable error=%s", exc)
            return {"active": None, "previous": None}
        return {k: InstalledModel(**data[k]) if data.get(k) else None for k in ("active", "previous")}

    def set_pointer(self, active: InstalledModel | None, previous: InstalledModel | None) -> None:
        doc = {"active": active.to_dict() if active else None, "previous": previous.to_dict() if previous else None}
        write_atomic(self.pointer_path, canonical_json(doc))

    def path_of(self, m: InstalledModel) -> Path:
        return safe_join(self.root, m.dirname)

    def manifest_of(self, m: InstalledModel) -> dict[str, Any]:
        return json.loads(self.manifest_path(m.dirname).read_text())

    def manifest_path(self, dirname: str) -> Path:
        return safe_join(self.root, f"{dirname}.manifest.json")

    def check_space(self, bundle_path: Path) -> None:
        """Refuse an install up front when the disk cannot hold the unpacked bundle with margin."""
        try:
            size = Path(bundle_path).stat().st_size
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise BundleError("malformed", f"cannot read {bundle_path}: {exc}") from exc
        need = int(size * self.space_margin) + SPACE_RESERVE
        if free < need:
            raise BundleError("no-space", f"{free} bytes free under {self.root}, the install needs {need}"
                                          f" (bundle {size} bytes x {self.space_margin:g} + reserve)")

    def unpack(self, bundle_path: Path, keyring: Keyring, installed_version: int | None,
               rollback_approval: RollbackApproval | None = None,
               max_bytes: int | None = None) -> tuple[InstalledModel, VerifiedBundle]:
        """Verify and unpack in one streaming pass; an identical version already on disk is kept.
        `max_bytes` defaults to the store's `max_bundle_bytes`."""
        max_bytes = max_bytes or self.max_bundle_bytes
        kwargs: dict[str, Any] = {"max_member_bytes": max_bytes} if max_bytes else {}
        self.check_space(bundle_path)
        incoming = self.root / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
        vb = verify_bundle(bundle_path, keyring, installed_version=installed_version,
                           rollback_approval=rollback_approval, unpack_to=incoming,
                           device_class=self.device_class, **kwargs)
        try:
            # Names passed the grammar in verify; safe_join still refuses anything outside root.
            dirname = f"{vb.name}-v{vb.version}-{vb.manifest_sha256[:12]}"
            target = safe_join(self.root, dirname)
            mpath = self.manifest_path(dirname)
            check_format_magic(vb.manifest["model"]["format"], safe_join(incoming, *vb.entrypoint.split("/")))
        except ManifestRefused as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            raise BundleError(exc.reason, str(exc)) from None
        except (UnsafePath, OSError) as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            raise BundleError("unsafe-path", str(exc)) from None
        try:
            if target.exists() and mpath.exists():
                shutil.rmtree(incoming, ignore_errors=True)
            else:
                if target.exists():
                    shutil.rmtree(target)
                os.rename(incoming, target)
                write_atomic(mpath, canonical_json(vb.manifest))
        except OSError as exc:
            reason = "no-space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "malformed"
            raise BundleError(reason, f"cannot store the unpacked bundle: {exc}") from exc
        finally:
            if incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)
        return InstalledModel(vb.name, vb.version, vb.manifest_sha256, vb.bundle_sha256, dirname), vb

    def gc(self) -> None:
        """Keep the active, previous and the newest `keep` folders; remove the rest."""
        ptr = self.pointer()
        keep = {m.dirname for m in ptr.values() if m}
        try:
            keep.add(json.loads((self.root / "candidate.json").read_text())["installed"]["dirname"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        dirs = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for p in dirs[self.keep:]:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                self.manifest_path(p.name).unlink(missing_ok=True)
