"""`edgefleet keys` and `edgefleet bundle`: the foundation's commands.

Exit codes: 0 ok, 1 a bundle was refused, 2 bad input (missing file, bad JSON, bad key).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from agent.bundle import BundleError, build_bundle, read_manifest_unverified, verify_bundle
from agent.keys import KeyFileError, Keyring, generate_keypair, key_id, load_private_key, load_public_key


class UsageFailure(click.ClickException):
    exit_code = 2


@click.group()
def keys() -> None:
    """Ed25519 keys: NAME.key (private, 0600) and NAME.pub (public, to pin on devices)."""


@keys.command("generate")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("keys"),
              show_default=True, help="Folder for the key files.")
@click.option("--name", default="signing", show_default=True, help="Base name of the files.")
def keys_generate(out_dir: Path, name: str) -> None:
    """Generate a new key pair."""
    try:
        priv, pub = generate_keypair(out_dir, name)
    except KeyFileError as exc:
        raise UsageFailure(str(exc)) from exc
    click.echo(f"key id {key_id(load_public_key(pub))}\nprivate {priv}\npublic  {pub}")


@keys.command("id")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def keys_id(path: Path) -> None:
    """Print the key id of a public or private key file."""
    try:
        key = load_public_key(path) if path.suffix == ".pub" else load_private_key(path)
    except KeyFileError as exc:
        raise UsageFailure(str(exc)) from exc
    click.echo(key_id(key))


def _pubs(paths: tuple[Path, ...]) -> list[Any]:
    try:
        return [load_public_key(p) if p.suffix == ".pub" else load_private_key(p).public_key() for p in paths]
    except KeyFileError as exc:
        raise UsageFailure(str(exc)) from exc


@keys.command("sign-keylist")
@click.option("--version", "version", type=click.IntRange(min=1), help="Key list version; must grow with every list.")
@click.option("--root", "roots", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Root public key (repeatable): signs key lists, kept offline.")
@click.option("--fleet", "fleets", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Fleet public key (repeatable): signs commands and rollback approvals.")
@click.option("--build", "builds", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Build public key (repeatable): signs bundles.")
@click.option("--root-threshold", type=click.IntRange(min=1), default=1, show_default=True,
              help="Root keys that must sign the next key list (the offline root path).")
@click.option("--fleet-threshold", type=click.IntRange(min=2), default=2, show_default=True,
              help="Fleet keys that together may change fleet and build keys (never root).")
@click.option("--from", "from_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Add signatures to this signed key list instead of making a new one.")
@click.option("--key", "signers", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key that signs (repeatable): the root key, new roots too when rotating root.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write the signed key list to.")
@click.option("--revoked", "revoked_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Retired versions devices must refuse (JSON from `edgefleet models revocations --out`).")
def keys_sign_keylist(version: int | None, roots: tuple[Path, ...], fleets: tuple[Path, ...],
                      builds: tuple[Path, ...], root_threshold: int, fleet_threshold: int, from_path: Path | None,
                      signers: tuple[Path, ...], out_path: Path, revoked_path: Path | None) -> None:
    """Sign the list of trusted keys by role (offline, with the root key). Devices accept it only
    with a higher version than theirs; the fleet hands it to devices (upload it to the fleet)."""
    from agent.keylist import KeyListError, make_keylist, parse_keylist, sign_keylist
    from agent.keys import RoleError

    try:
        priv = [load_private_key(p) for p in signers]
    except KeyFileError as exc:
        raise UsageFailure(str(exc)) from exc
    try:
        if from_path is not None:
            doc = sign_keylist(_load_json(from_path), priv)
        else:
            if version is None or not roots or not fleets:
                raise UsageFailure("a new key list needs --version, at least one --root and one --fleet")
            revoked = _load_json(revoked_path).get("revoked", [])
            doc = sign_keylist(make_keylist(version, {"root": _pubs(roots), "fleet": _pubs(fleets),
                                                      "build": _pubs(builds)},
                                            {"root": root_threshold, "fleet": fleet_threshold},
                                            revoked=revoked), priv)
        kl = parse_keylist(doc)
    except (KeyListError, RoleError) as exc:
        raise UsageFailure(str(exc)) from exc
    out_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    signed_by = [s.get("key_id") for s in doc["signatures"]]
    click.echo(f"key list v{kl.version} -> {out_path}\n  root  {' '.join(kl.keys.ids('root'))}"
               f"\n  fleet {' '.join(kl.keys.ids('fleet'))}\n  build {' '.join(kl.keys.ids('build')) or '-'}"
               f"\n  signed by {' '.join(signed_by)}"
               + (f"\n  revoked {len(kl.revoked)} version(s)" if kl.revoked else ""))


@click.group()
def bundle() -> None:
    """Signed model bundles: one file with the model, manifest.json and a detached signature."""


def _load_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageFailure(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageFailure(f"{path}: expected a JSON object")
    return data


def _spec(text: str) -> dict[str, Any]:
    """name:dtype:dim,dim,... e.g. input:float32:batch,64"""
    try:
        name, dtype, shape = text.split(":")
        dims: list[int | str] = [int(d) if d.isdigit() else d for d in shape.split(",") if d]
    except ValueError as exc:
        raise UsageFailure(f"tensor spec {text!r} must be name:dtype:dim,dim (e.g. input:float32:batch,64)") from exc
    return {"name": name, "dtype": dtype, "shape": dims}


@bundle.command("build")
@click.option("--model", "model_files", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Model file(s); the first is the entrypoint (an OpenVINO .xml takes its .bin too).")
@click.option("--name", required=True, help="Model name.")
@click.option("--version", "version", required=True, type=click.IntRange(min=0), help="Version; only grows.")
@click.option("--device-class", required=True, help="Target device class.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino", "tflite"]), default=None,
              help="Model format (default: from the file suffix).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "mixed"]), default="fp32", show_default=True,
              help="Numeric precision of the model, recorded in the manifest.")
@click.option("--input", "inputs", multiple=True, help="Input spec name:dtype:dims (default: read from ONNX).")
@click.option("--output", "outputs", multiple=True, help="Output spec name:dtype:dims (default: read from ONNX).")
@click.option("--metrics", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="metrics JSON.")
@click.option("--provenance", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="provenance JSON.")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="drift baseline JSON.")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private signing key.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle file to write.")
def bundle_build(model_files: tuple[Path, ...], name: str, version: int, device_class: str, fmt: str | None,
                 precision: str, inputs: tuple[str, ...], outputs: tuple[str, ...], metrics: Path | None,
                 provenance: Path | None, baseline: Path | None, key_path: Path, out_path: Path) -> None:
    """Sign model file(s) into a bundle."""
    entry = model_files[0]
    from agent.runtime_specs import FORMAT_NAMES, SpecError, detect_format, io_specs

    found = detect_format(entry)
    fmt = fmt or found
    if fmt is None:
        raise UsageFailure(f"cannot tell the format of {entry}; pass --format")
    if found is not None and found != fmt:
        raise UsageFailure(f"{entry} is {FORMAT_NAMES[found]}, not {fmt}; pass --format {found}")
    files = {p.name: p for p in model_files}
    if fmt == "openvino" and entry.with_suffix(".bin").exists():
        files.setdefault(entry.with_suffix(".bin").name, entry.with_suffix(".bin"))
    in_specs = [_spec(s) for s in inputs]
    out_specs = [_spec(s) for s in outputs]
    runtime_config: dict[str, Any] = {}
    if not (in_specs and out_specs) or fmt == "tflite":
        try:  # the model file carries its specs (and, for TFLite, the tensors they bind to)
            auto_in, auto_out, tflite = io_specs(fmt, entry)
        except SpecError as exc:
            raise UsageFailure(f"{entry}: {exc}") from exc
        in_specs, out_specs = in_specs or auto_in, out_specs or auto_out
        if not in_specs or not out_specs:
            raise UsageFailure(f"{entry} declares no {'inputs' if not in_specs else 'outputs'}; a bundle needs "
                               "named input and output tensors (pass --input/--output)")
        if tflite is not None:
            _rename_bindings(tflite, in_specs, out_specs)
            runtime_config = {"tflite": tflite}
    try:
        key = load_private_key(key_path)
        result = build_bundle(out_path, files, {
            "model": {"name": name, "version": version, "device_class": device_class, "format": fmt,
                      "precision": precision},
            "entrypoint": entry.name, "inputs": in_specs, "outputs": out_specs,
            "metrics": _load_json(metrics), "provenance": _load_json(provenance),
            "drift_baseline": _load_json(baseline),
            **({"runtime_config": runtime_config} if runtime_config else {}),
        }, key)
    except (KeyFileError, BundleError) as exc:
        raise UsageFailure(str(exc)) from exc
    click.echo(f"built {out_path}\n  model {name} v{version} ({fmt}, {precision}) for {device_class}"
               f"\n  signed by {result.key_id}\n  sha256 {result.bundle_sha256}")


def _rename_bindings(tflite: dict[str, Any], ins: list[dict[str, Any]], outs: list[dict[str, Any]]) -> None:
    """--input/--output names bind to the TFLite tensors by position."""
    for key, specs in (("inputs", ins), ("outputs", outs)):
        if len(specs) != len(tflite[key]):
            raise UsageFailure(f"the model has {len(tflite[key])} {key}, {len(specs)} given")
        for binding, spec in zip(tflite[key], specs, strict=True):
            binding["name"] = spec["name"]


@bundle.command("inspect")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def bundle_inspect(path: Path, as_json: bool) -> None:
    """Show a bundle's manifest WITHOUT trusting it (use `verify` before installing)."""
    try:
        manifest = read_manifest_unverified(path)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    model = manifest.get("model", {})
    click.echo(f"{model.get('name')} v{model.get('version')}  format={model.get('format')} "
               f"precision={model.get('precision')} device_class={model.get('device_class')}  (unverified)")
    for f in manifest.get("files", []):
        click.echo(f"  {f.get('path'):<30} {f.get('size'):>12} bytes  sha256 {str(f.get('sha256'))[:16]}…")
    for kind in ("inputs", "outputs"):
        for s in manifest.get(kind, []):
            click.echo(f"  {kind[:-1]:<6} {s.get('name')}: {s.get('dtype')} {s.get('shape')}")
    if manifest.get("metrics"):
        click.echo("  metrics " + json.dumps(manifest["metrics"], sort_keys=True)[:400])


@bundle.command("verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trust", "trusted", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Trusted public key (repeatable).")
@click.option("--installed-version", type=int, default=None, help="Refuse versions below this (anti-rollback).")
def bundle_verify(path: Path, trusted: tuple[Path, ...], installed_version: int | None) -> None:
    """Verify signature, hashes, sizes, paths and version. Exit 1 with the reason when refused."""
    try:
        keyring = Keyring.from_files(trusted)
    except KeyFileError as exc:
        raise UsageFailure(str(exc)) from exc
    try:
        result = verify_bundle(path, keyring, installed_version=installed_version)
    except BundleError as exc:
        click.echo(f"REFUSED {path}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"OK {path}: {result.name} v{result.version} signed by {result.key_id}, "
               f"sha256 {result.bundle_sha256}")
