"""``sop-bench`` under SIGTERM / SIGINT: per-method status, partial ``results.json``, the resume command.

The runner wraps a run in :class:`RunProgress`, which installs the
:class:`~sop_plugin.runtime.signals.SignalCatcher` and records where every method stands:

* ``done``: trained and evaluated, its metrics are in ``results["methods"]``;
* ``interrupted at step N``: N optimisation steps are in ``<method>/checkpoints/last.ckpt``
  (N may be the last step: trained, evaluation still to do);
* ``not started``.

On a signal, training stops at the next batch end with a checkpoint of that step
(:class:`~sop_plugin.runtime.interrupt.InterruptCallback`), evaluation and data loading stop
at once; ``results.json`` then holds the methods done so far plus the ``status`` of every
method and an ``interrupted`` record, and :class:`~sop_plugin.runtime.signals.Interrupted`
reaches the CLI, which prints :func:`~sop_plugin.runtime.resume_message.interrupted_message` and exits
with 128 + the signal.

``resume=RUN_DIR`` then keeps the results of the methods done (not retrained, not
re-evaluated, as long as the settings that produced them are unchanged: :func:`kept_results`),
resumes the interrupted one from its checkpoint and runs those not started.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sop_plugin.bench.flat import flatten_config
from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.train.resume import HARMLESS, checkpoint_path
from sop_plugin.runtime.interrupt import InterruptCallback
from sop_plugin.runtime.signals import Interrupted, SignalCatcher

log = logging.getLogger("sop_bench")

DONE, NOT_STARTED = "done", "not started"
#: config entries that do not change what a method's results are
OUTSIDE_RESULTS = ("out", "resume", "threads", "trust_checkpoint", "methods", "trainer.enable_progress_bar")


def interrupted_status(step: int) -> str:
    return f"interrupted at step {step}"


class RunProgress:
    """Where every method of a run stands, and what to write when a signal stops it.

    Args:
        cfg: the resolved config (``methods``, ``data``, ``seed``, ``profile_name``).
        out: the run directory.
        write: whether this process writes ``results.json`` (rank 0).
    """

    def __init__(self, cfg: dict[str, Any], out: Path, write: bool = True) -> None:
        self.cfg, self.out, self.write = cfg, out, write
        self.catcher = SignalCatcher(prog="sop-bench")
        self.methods: dict[str, dict[str, Any]] = {}  # results of the methods done
        self.floor: float | None = None
        self._status: dict[str, str] = {m: NOT_STARTED for m in cfg["methods"]}
        self._steps: dict[str, int] = {}
        self.current: str | None = None
        self.phase = "setup"

    # ------------------------------------------------------------------ progress
    def keep(self, method: str, metrics: dict[str, Any]) -> None:
        """``method`` was done by the run being resumed: keep its results."""
        self.methods[method] = metrics
        self._status[method] = DONE

    def training(self, method: str) -> InterruptCallback:
        """``method`` starts (or resumes) training; returns the callback that stops it on a signal."""
        self.current, self.phase = method, "training"
        self._steps.setdefault(method, 0)
        return InterruptCallback(
            self.catcher, lambda trainer: checkpoint_path(self.out, method), method=method
        )

    def trained(self, method: str, step: int) -> None:
        self._steps[method] = int(step)
        self._status[method] = interrupted_status(int(step))

    def done(self, method: str, metrics: dict[str, Any]) -> None:
        self.methods[method] = metrics
        self._status[method] = DONE
        self.current = None

    def status(self) -> dict[str, str]:
        return dict(self._status)

    def evaluating(self, method: str) -> Any:
        """A section a signal interrupts at once (evaluation of ``method``)."""
        self.current, self.phase = method, "evaluation"
        return self.catcher.immediate("evaluation")

    def immediate(self, phase: str) -> Any:
        self.current, self.phase = None, phase
        return self.catcher.immediate(phase)

    # ------------------------------------------------------------------ signals
    def __enter__(self) -> RunProgress:
        self.catcher.install()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if isinstance(exc, Interrupted):
                self._record(exc)
        finally:
            self.catcher.restore()

    def _record(self, stop: Interrupted) -> None:
        """Complete ``stop`` (method, step, checkpoint, run dir) and write the partial results."""
        with self.catcher.saving():  # a further signal must not cut results.json short
            method = stop.method or self.current
            stop.method, stop.run_dir = method, self.out
            if method is not None:
                if stop.step is None:
                    stop.step = self._steps.get(method, 0)
                self.trained(method, stop.step)
                ckpt = checkpoint_path(self.out, method)
                if stop.checkpoint is None and ckpt.is_file():
                    stop.checkpoint = ckpt
            if self.write:
                self.write_results(stop)

    def results(self, interrupted: Interrupted | None = None) -> dict[str, Any]:
        cfg = self.cfg
        results: dict[str, Any] = {
            "dataset": cfg["data"]["name"],
            "seed": cfg["seed"],
            "profile": cfg["profile_name"],
            "raw_pixel_knn_top1": self.floor,
            "methods": dict(self.methods),
            "status": self.status(),
        }
        if interrupted is not None:
            results["interrupted"] = {
                "signal": interrupted.signal_name,
                "method": interrupted.method,
                "phase": interrupted.phase,
                "step": interrupted.step,
                "checkpoint": str(interrupted.checkpoint) if interrupted.checkpoint else None,
            }
        return results

    def write_results(self, interrupted: Interrupted) -> Path | None:
        results = self.results(interrupted)
        validate_results(results)
        path = self.out / "results.json"
        try:
            tmp = path.with_name("results.json.tmp")
            tmp.write_text(json.dumps(results, indent=2))
            tmp.replace(path)
        except OSError as err:
            log.error("could not write %s: %s", path, err)
            return None
        return path


# ---------------------------------------------------------------------- resume


def _changed(saved: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    old, new = flatten_config(saved), flatten_config(cfg)
    ignored = (*OUTSIDE_RESULTS, *HARMLESS)
    return sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k) and not any(k.startswith(i) for i in ignored)
    )


def kept_results(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Metrics of the methods the run in ``resume=RUN_DIR`` finished, when they still apply.

    A method is kept when ``RUN_DIR/results.json`` has it ``done`` (results written before
    per-method statuses existed: every method listed) and ``RUN_DIR/config.json`` equals
    ``cfg`` except for the output, resume, thread and checkpoint-writing settings. A
    changed setting (more epochs, other evaluation) trains/evaluates it again from its
    checkpoint instead.
    """
    resume = cfg.get("resume")
    if not resume or not Path(str(resume)).is_dir():
        return {}
    run_dir = Path(str(resume))
    try:
        results = json.loads((run_dir / "results.json").read_text())
        saved = json.loads((run_dir / "config.json").read_text())
        validate_results(results)
    except (OSError, ValueError):
        return {}
    status = results.get("status") or {m: DONE for m in results["methods"]}
    done = [m for m in cfg["methods"] if status.get(m) == DONE and m in results["methods"]]
    if not done:
        return {}
    changed = _changed(saved, cfg)
    if changed:
        log.info(
            "resume: settings changed since %s (%s): training/evaluating every method again", run_dir, changed
        )
        return {}
    for m in done:
        log.info("resume: %s is done in %s: keeping its results", m, run_dir / "results.json")
    return {m: results["methods"][m] for m in done}
