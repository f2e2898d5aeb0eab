"""solo-learn's launch scripts: which clone of solo-learn holds them, and their hydra ``main``.

The scripts ``main_pretrain.py`` / ``main_linear.py`` are not part of the installed ``solo``
package: they live in the root of a clone of solo-learn's repository. :func:`find_solo_root` finds
that clone, :func:`solo_main` loads a script's hydra ``main`` without running the script.
"""

from __future__ import annotations

import json
import os
import runpy
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sop_plugin.solo.attach import Attachment

#: environment variable naming the solo-learn clone (``none``: our own launcher)
SOLO_ROOT_ENV = "SOLO_LEARN_ROOT"
#: solo-learn's launch script of each kind, in its repository root
SCRIPTS = {"pretrain": "main_pretrain.py", "linear": "main_linear.py"}


def _clone_candidates() -> list[Path]:
    """The folder pip installed solo-learn from (``direct_url.json``) and the one above the ``solo``
    package."""
    from importlib import metadata

    import solo

    found = []
    try:
        direct_url = metadata.distribution("solo-learn").read_text("direct_url.json")
        url = json.loads(direct_url or "{}").get("url", "")
    except (metadata.PackageNotFoundError, ValueError):
        url = ""
    if url.startswith("file://"):
        found.append(Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)))
    return [*found, Path(solo.__file__).resolve().parents[1]]


def find_solo_root(value: str | None = None) -> Path | None:
    """The solo-learn clone whose scripts to run, or None for our own launcher.

    ``value`` (``--solo-root``; default ``$SOLO_LEARN_ROOT``): a clone, or ``none``. Unset or empty:
    the first of :func:`_clone_candidates` that holds both scripts, else None.
    """
    value = os.environ.get(SOLO_ROOT_ENV, "") if value is None else value
    if value.strip().lower() == "none":
        return None
    if value.strip():
        root = Path(value).expanduser().resolve()
        missing = [name for name in SCRIPTS.values() if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--solo-root / {SOLO_ROOT_ENV}={value!r}: {root} has no {' or '.join(missing)}; give "
                "the root of a clone of solo-learn's repository, or 'none' for sop-plugin's own launcher"
            )
        return root
    clones = [r for r in _clone_candidates() if all((r / s).is_file() for s in SCRIPTS.values())]
    return clones[0] if clones else None


def solo_main(script: Path, attachment: Attachment) -> Callable[[DictConfig], Any]:
    """The hydra ``main`` of solo-learn's ``script``, loaded inside ``attachment.attached()``."""
    names = runpy.run_path(str(script), run_name=f"solo_learn_{script.stem}")
    unbound = [name for name in ("parse_cfg", "Trainer") if names.get(name) is not attachment.hooks[name]]
    if unbound or not callable(names.get("main")):
        what = " and ".join(unbound) or "parse_cfg and Trainer"
        raise RuntimeError(
            f"{script} does not import {what} by name and define main() as solo-learn 1.0.6's scripts "
            "do, so sop-plugin cannot attach to it: use a solo-learn 1.0.6 clone, or --solo-root none "
            "(sop-plugin's own launcher)"
        )
    return names["main"]
