"""Issue 11, seen 3 and 5: one error boundary in the CLI root. Every error is one line on stderr
and exit 2 (bad input) or 1 (failed check); a traceback only with --debug. Before, each of these
printed a Python traceback."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import click
import pytest

from edgefleet.errors import explain, run_guarded
from tests.doorstep.conftest import edgefleet, user_env


def _one_line(res, code: int) -> str:  # type: ignore[no-untyped-def]
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    errors = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("using ")]
    return "\n".join(errors)


def test_attr_without_equals_is_a_usage_error(tmp_path: Path) -> None:
    res = edgefleet("fleet", "--data-dir", str(tmp_path / "d"), "enrol-token", "create", "--attr", "region",
                    cwd=tmp_path)
    assert "'region' is not KEY=VALUE" in _one_line(res, 2)
    assert not (tmp_path / "d").exists()   # refused before touching any database


def _deep_bundle(path: Path, depth: int = 100_000) -> Path:
    """A tar whose manifest.json is an array nested `depth` deep (json recurses per level)."""
    body = b"[" * depth + b"]" * depth
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return path


def test_deeply_nested_manifest_is_refused_cleanly(tmp_path: Path) -> None:
    from agent.keys import generate_keypair

    bundle = _deep_bundle(tmp_path / "deep.bundle")
    _, pub = generate_keypair(tmp_path, "k")
    res = edgefleet("bundle", "inspect", str(bundle), cwd=tmp_path)
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr
    assert len([x for x in res.stderr.splitlines() if x.strip()]) == 1 and "nested" in res.stderr
    res = edgefleet("bundle", "verify", str(bundle), "--trust", str(pub), cwd=tmp_path)
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr
    assert len([x for x in res.stderr.splitlines() if x.strip()]) == 1


def test_compile_entry_point_that_raises_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "badmodel.py").write_text("def make():\n    raise RuntimeError('weights file missing')\n")
    import numpy as np

    np.savez(tmp_path / "eval.npz", inputs=np.zeros((4, 3), np.float32), labels=np.zeros(4, np.int64))
    from agent.keys import generate_keypair

    key, _ = generate_keypair(tmp_path, "build")
    env = user_env(PYTHONPATH=f"{tmp_path}:{user_env()['PYTHONPATH']}")
    res = edgefleet("compile", "--torch", "badmodel:make", "--eval", "eval.npz", "--device-class",
                    "x86-64-generic", "--signing-key", str(key), "--out", "build", "--quiet", cwd=tmp_path,
                    env=env, timeout=300)
    line = _one_line(res, 2)
    assert "badmodel:make" in line and "weights file missing" in line


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    def boom() -> None:
        raise KeyError("surprise")

    monkeypatch.delenv("EDGEFLEET_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_guarded(boom, "boom", [])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unexpected KeyError") and "--debug" in err[0]
    monkeypatch.setenv("EDGEFLEET_DEBUG", "1")
    with pytest.raises(KeyError):
        run_guarded(boom, "boom", [])
    assert explain(FileNotFoundError(2, "No such file or directory", "x.toml")) == (
        2, "No such file or directory: x.toml")
    assert explain(RecursionError())[0] == 2


def test_debug_flag_prints_the_traceback(tmp_path: Path) -> None:
    env = user_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    plain = edgefleet("fleet", "db", "upgrade", cwd=tmp_path, env=env)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = edgefleet("--debug", "fleet", "db", "upgrade", cwd=tmp_path, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_every_option_of_every_command_has_help() -> None:
    from edgefleet.cli import cli

    def walk(cmd: click.Command, path: str) -> list[str]:
        missing = [f"{path} {p.opts[0]}" for p in cmd.params
                   if isinstance(p, click.Option) and not p.help and p.opts[0] not in ("--help", "--version")]
        if not cmd.help:
            missing.append(f"{path}: no description")
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                missing += walk(cmd.get_command(ctx, name), f"{path} {name}")
        return missing

    missing = walk(cli, "edgefleet")
    assert not missing, missing
    serve_help = edgefleet("fleet", "serve", "--help", cwd=Path.cwd())
    assert "127.0.0.1" in serve_help.stdout and "8080" in serve_help.stdout
