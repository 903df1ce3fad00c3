"""The shell blocks of README.md and docs/*.md, and the markers that say whether a user runs them.

Every ```bash block carries a marker on the line before its fence:

    <!-- run -->              run in order, in the document's main shell session
    <!-- run: background -->  started in the background (a server, an agent), stopped at the end
    <!-- run: NAME -->        run in a separate shell session NAME (e.g. `postgres`)
    <!-- no-run: why -->      shown, not run (needs the network, root, systemd ...); say why

A session is one bash script (`set -euo pipefail`), so variables set in one block (TOKEN=...) are
there in the next, as in the user's terminal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
MARKER = re.compile(r"^<!--\s*(run(?::\s*([\w-]+))?|no-run:\s*(.+?))\s*-->\s*$")


@dataclass(frozen=True)
class ShellBlock:
    doc: str
    line: int               # 1-based line of the opening fence
    text: str
    run: bool
    session: str = "main"   # "main", a named session, or "background"
    why_not: str = ""

    @property
    def background(self) -> bool:
        return self.session == "background"


def shell_blocks(path: Path) -> list[ShellBlock]:
    lines = path.read_text().splitlines()
    out: list[ShellBlock] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        text = "\n".join(lines[i + 1:end]) + "\n"
        m = MARKER.match(lines[i - 1]) if i else None
        if m is None:
            out.append(ShellBlock(path.name, i + 1, text, run=False, why_not=""))
        elif m.group(1).startswith("no-run"):
            out.append(ShellBlock(path.name, i + 1, text, run=False, why_not=m.group(3)))
        else:
            out.append(ShellBlock(path.name, i + 1, text, run=True, session=m.group(2) or "main"))
        i = end + 1
    return out


def session_script(blocks: list[ShellBlock], subst: dict[str, str], workdir: Path) -> str:
    """One bash script for a session's blocks; background blocks go to files started with setsid
    (their process-group ids land in workdir/pids, for the harness to stop)."""
    parts = ["set -euo pipefail", f"cd {workdir}"]
    for n, b in enumerate(blocks, 1):
        text = substitute(b.text, subst)
        parts.append(f"echo \"== {b.doc}:{b.line} ($SECONDS s)\" >&2")
        if b.background:
            script = workdir / f"background-{n}.sh"
            script.write_text(text)
            parts.append(f"setsid bash {script} > {workdir}/background-{n}.log 2>&1 & echo $! >> {workdir}/pids")
        else:
            parts.append(text)
    return "\n".join(parts) + "\n"


def substitute(text: str, subst: dict[str, str]) -> str:
    for old, new in subst.items():
        text = text.replace(old, new)
    return text
