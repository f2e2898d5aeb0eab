"""The line a host prints when a signal stopped its run, and the command that resumes it.

Both hosts take hydra overrides. A run with a run directory (``sop-bench``) resumes that directory
as a whole (``resume=DIR``); a run without one (the solo-learn launchers) resumes from its
checkpoint (``++resume_from_checkpoint=CKPT``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from sop_plugin.runtime.signals import Interrupted

_PLAIN = re.compile(r"[\w/.\-+:@%~,]+")


def hydra_value(text: str) -> str:
    """``text`` as the value of a hydra override (quoted when hydra's grammar needs it, e.g. for ``=``)."""
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: the override that resumes a run directory (``sop-bench``)
RESUME_RUN_DIR = "resume"
#: the override that resumes from a checkpoint (the solo-learn launchers)
RESUME_CHECKPOINT = "++resume_from_checkpoint"


def resume_command(prog: str, argv: list[str], override: str, value: str | Path) -> str:
    """``prog`` with ``argv[1:]``, any earlier setting of ``override``'s key dropped, and
    ``override=value`` last.

    ``override`` may carry hydra's ``+``/``++`` prefix; earlier settings are dropped whatever their prefix.
    """
    key = override.lstrip("+~")
    args = [a for a in argv[1:] if not a.lstrip("+~").startswith(f"{key}=")]
    last = f"{override}={hydra_value(str(value))}"
    return " ".join([prog, *(shlex.quote(a) for a in args), shlex.quote(last)])


def _run_dir_parts(prog: str, stop: Interrupted, argv: list[str], run_dir: Path) -> list[str]:
    """Checkpoint, partial results and ``resume=`` of a run that has a run directory."""
    parts = [f"checkpoint {stop.checkpoint}" if stop.checkpoint is not None else "no checkpoint yet"]
    results = run_dir / "results.json"
    if results.is_file():
        parts.append(f"status in {results}")
    parts.append(f"resume with: {resume_command(prog, argv, RESUME_RUN_DIR, run_dir)}")
    return parts


def interrupted_message(prog: str, stop: Interrupted, argv: list[str]) -> str:
    """The one line printed when a signal stopped ``prog``: what stopped, the checkpoint, how to resume."""
    head = f"{prog}: {stop.describe()}"
    if stop.run_dir is not None:
        return "; ".join([head, *_run_dir_parts(prog, stop, argv, stop.run_dir)])
    if stop.checkpoint is None:
        return f"{head}; no checkpoint yet: run the same command again to start over"
    command = resume_command(prog, argv, RESUME_CHECKPOINT, stop.checkpoint)
    return f"{head}; checkpoint {stop.checkpoint}; resume with: {command}"
