"""Stage 4 of ``benchmarks/gpu_run.sh``: solo-learn's SOP and iBOT through ``sop-solo-pretrain``, checked.

1. Exports Fashion-MNIST as an image folder with ``sop-data export fashion-mnist DIR --limit N``.
2. Pretrains each method for ``--steps`` steps with ``sop-solo-pretrain`` (run as
   ``python -m sop_plugin.solo.launch``, the same entry point), solo-learn's own ``main_pretrain.py``
   from ``--solo-root`` when given. On CUDA: the ImageNet-100 recipes (ViT-S/16 at 224 px; SOP with
   2x224 + 10x96 crops, iBOT with its 2 global crops) on the exported folder, bf16, one GPU. On the CPU
   (``--device cpu``, the dry run): the Fashion-MNIST recipes (ViT-Tiny/4 at 28 px), fp32, small memories.
3. Checks each run: the steps trained (the checkpoint's ``global_step``), every logged loss finite
   (Lightning's ``metrics.csv``) and, for SOP, that the memories were filled: in the checkpoint, the
   tensor whose key ends in ``class_memory.bank`` is compared with the initial random rows (rebuilt from
   the run's seed), and as many rows as the run wrote (steps x batch, at most the memory size) must differ.

Writes one JSON (``--out``) and prints one line per method. Exit status: 0 when every method passed,
1 otherwise (the JSON says why).

Usage: ``python benchmarks/gpu_solo_check.py --out solo.json --work DIR --data FASHION_MNIST_DIR
[--device cuda|cpu] [--steps 100] [--batch 128] [--solo-root DIR|none] [--timeout S] [--workers N]``,
with ``sop_plugin`` importable: installed, or the repository on ``PYTHONPATH`` (``gpu_run.sh`` puts it
there, and the runs launched here get it the same way, :func:`child_env`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ("sop", "ibot")


def knn_eval_works() -> tuple[bool, str]:
    """Whether solo-learn's online kNN can be built here: it passes ``compute_on_step`` to torchmetrics'
    ``Metric``, which torchmetrics 0.12 removed (solo-learn pins torchmetrics<0.12; a current CUDA image
    has 1.x). Where it cannot, the runs switch ``knn_eval`` off: the checks here do not need it."""
    from importlib import metadata

    try:
        version = metadata.version("torchmetrics")
    except metadata.PackageNotFoundError:
        return False, "torchmetrics not installed"
    major, minor = (int(x) for x in (version.split(".") + ["0"])[:2])
    return (major, minor) < (0, 12), f"torchmetrics {version}"


def shm_workers(workers: int, batch: int, device: str) -> int:
    """``workers``, fewer where /dev/shm could not hold two batches per worker (a DataLoader worker hands
    its batches over in shared memory: at 2x224 + 10x96 px crops, about 2.4 MB per image)."""
    if workers == 0 or device != "cuda":
        return workers
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return workers
    fit = max(1, int(free // (2 * batch * 2.4e6)))
    if fit < workers:
        print(f"[solo] data.num_workers={fit} instead of {workers}: /dev/shm has {free / 2**30:.1f} GiB free")
    return min(workers, fit)


def overrides(method: str, args: argparse.Namespace, images: Path, run: Path) -> list[str]:
    """Hydra overrides of one method's run (on top of the shipped config chosen by :func:`config_dir`)."""
    common = [
        "data.dataset=custom",
        f"data.train_path={images / 'train'}",
        f"data.val_path={images / 'val'}",
        f"data.num_workers={args.workers}",
        "devices=1",
        "strategy=auto",
        "sync_batchnorm=False",
        f"optimizer.batch_size={args.batch}",
        "max_epochs=1",
        f"++max_steps={args.steps}",
        "auto_resume.enabled=False",
        "wandb.enabled=False",
        f"checkpoint.dir={run / 'ckpt'}",
        f"csv.dir={run / 'logs'}",
        f"name=gpu-run-{method}",
        f"++log_every_n_steps={max(1, min(10, args.steps))}",
        "++enable_progress_bar=False",
        *([] if args.knn_eval else ["knn_eval.enabled=False"]),
    ]
    if args.device == "cuda":
        return [*common, "accelerator=gpu", "precision=bf16-mixed", *args.extra]
    small = (
        ["method_kwargs.head_hidden_dim=128", "method_kwargs.class_memory_size=1024"]
        + ["method_kwargs.patch_memory_size=512", "method_kwargs.patch_num_anchors=32"]
        if method == "sop"
        else []
    )
    return [*common, "accelerator=cpu", "precision=32", *small, *args.extra]


def config_dir(args: argparse.Namespace) -> Path:
    """The shipped solo-learn configs used (``--recipe``; default: ImageNet-100's ViT-S/16 recipe on CUDA,
    Fashion-MNIST's ViT-Tiny/4 on the CPU)."""
    recipe = args.recipe or ("imagenet-100" if args.device == "cuda" else "fashion-mnist")
    return REPO / "scripts" / "pretrain" / recipe


def child_env() -> dict[str, str]:
    """The environment of the commands run here: the repository importable, wandb off."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{REPO}:{path}" if path else str(REPO), "WANDB_MODE": "disabled"}


def export_images(data: Path, out: Path, limit: int) -> float:
    """``sop-data export fashion-mnist OUT --path DATA --limit LIMIT --overwrite`` (its entry point, in
    this process); returns the seconds it took."""
    from sop_plugin.data.cli import main as sop_data

    start = time.perf_counter()
    argv = ["export", "fashion-mnist", str(out), "--path", str(data), "--limit", str(limit), "--overwrite"]
    if sop_data(argv) != 0:
        raise RuntimeError(f"sop-data {' '.join(argv)} failed")
    return time.perf_counter() - start


def finite_losses(metrics: Path | None) -> dict[str, Any]:
    """Every column of Lightning's ``metrics.csv`` whose name holds ``loss``: values logged, all finite."""
    if metrics is None:
        return {"ok": False, "reason": "no metrics.csv written"}
    columns: dict[str, list[float]] = {}
    with metrics.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and "loss" in key and value not in ("", None):
                    columns.setdefault(key, []).append(float(value))
    if not columns:
        return {"ok": False, "reason": f"no loss column in {metrics}"}
    bad = sorted(k for k, v in columns.items() if not all(math.isfinite(x) for x in v))
    return {
        "ok": not bad,
        "non_finite": bad,
        "values_logged": sum(len(v) for v in columns.values()),
        "first_last": {k: [v[0], v[-1]] for k, v in sorted(columns.items())},
    }


def _seed_candidates(ckpt: Path) -> list[int]:
    """The SOP seed of the run as ``sop_plugin.solo.sop_method`` derives it (args.json beside the
    checkpoint), then solo-learn's and SOPConfig's defaults."""
    seeds: list[int] = []
    args_json = ckpt.parent / "args.json"
    if args_json.is_file():
        cfg = json.loads(args_json.read_text())
        mk_seed = (cfg.get("method_kwargs") or {}).get("seed")
        seeds.append(int((cfg.get("seed", 5) if mk_seed is None else mk_seed) or 0))
    return [*dict.fromkeys([*seeds, 5, 0])]


def memory_fill(state: dict[str, torch.Tensor], ckpt: Path, written: int) -> dict[str, Any]:
    """How many rows of each SOP memory differ from its initial random rows.

    The initial rows are rebuilt as :class:`sop_plugin.core.memory.SupportMemory` draws them (the class
    memory from the SOP seed, the patch memory from seed + 1), for each candidate seed; the seed that
    leaves the most rows unchanged is the run's. The class memory must have ``min(written, size)``
    changed rows, all finite and of unit norm.
    """
    from sop_plugin.core.memory import SupportMemory

    out: dict[str, Any] = {}
    for suffix, offset in (("class_memory.bank", 0), ("patch_memory.bank", 1)):
        keys = [k for k in state if k.endswith(suffix)]
        if not keys:
            continue
        key = keys[0]
        bank = state[key].float().cpu()
        size, dim = bank.shape
        best: tuple[int, int] | None = None
        for seed in _seed_candidates(ckpt):
            init = SupportMemory(size, dim, seed=seed + offset).bank
            changed = int((bank != init).any(dim=1).sum())
            if best is None or changed < best[1]:
                best = (seed, changed)
        assert best is not None
        ptr_key = key[: -len("bank")] + "ptr"
        norms = bank.norm(dim=1)
        rec: dict[str, Any] = {
            "key": key,
            "rows": size,
            "changed_rows": best[1],
            "seed": best[0],
            "ptr": int(state[ptr_key]) if ptr_key in state else None,
            "finite": bool(torch.isfinite(bank).all()),
            "unit_norm": bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)),
        }
        if offset == 0:
            rec["expected_changed_rows"] = min(written, size)
            rec["ok"] = rec["finite"] and rec["unit_norm"] and 0 < best[1] == rec["expected_changed_rows"]
        out[suffix.split(".")[0]] = rec
    if "class_memory" not in out:
        out["ok"] = False
        out["reason"] = "no key ending in class_memory.bank in the checkpoint"
    else:
        out["ok"] = bool(out["class_memory"]["ok"])
    return out


def newest(paths: list[Path]) -> Path | None:
    """The most recently modified of ``paths``; None when there is none."""
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def check_run(method: str, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Steps, losses and (SOP) memories of one finished run."""
    from sop_plugin.runtime import load_checkpoint

    rec: dict[str, Any] = {"losses": finite_losses(newest(list((run / "logs").rglob("metrics.csv"))))}
    ckpt = newest(list((run / "ckpt").rglob("*.ckpt")))
    if ckpt is None:
        rec.update(ok=False, reason="no checkpoint written")
        return rec
    state = load_checkpoint(ckpt, trust_checkpoint=True)  # our own run's file
    rec["checkpoint"] = str(ckpt)
    rec["global_step"] = int(state.get("global_step", -1))
    ok = rec["losses"]["ok"] and rec["global_step"] == args.steps
    if method == "sop":
        rec["memories"] = memory_fill(state["state_dict"], ckpt, args.steps * args.batch)
        ok = ok and rec["memories"]["ok"]
    rec["ok"] = bool(ok)
    return rec


#: the launched run, so that a SIGTERM of this script (the stage's timeout) ends it and its data workers too
_CHILD: list[subprocess.Popen[bytes]] = []


def _stop_child(*_: Any) -> None:
    """End the launched run's whole process group (it has a session of its own), then exit."""
    for proc in _CHILD:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    sys.exit(143)


def run_bounded(cmd: list[str], cwd: Path, timeout: float) -> int | None:
    """Run ``cmd`` in a session of its own; its exit status, or None when it ran past ``timeout`` seconds
    (then its process group gets SIGTERM, and SIGKILL 15 s later)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), start_new_session=True)
    _CHILD.append(proc)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return None
    finally:
        _CHILD.remove(proc)


def run_method(method: str, args: argparse.Namespace, images: Path, timeout: float) -> dict[str, Any]:
    """One ``sop-solo-pretrain`` run and its check."""
    run = Path(args.work) / method
    cmd = [args.python, "-m", "sop_plugin.solo.launch"]
    if args.solo_root:
        cmd += ["--solo-root", args.solo_root]
    cmd += ["--config-path", str(config_dir(args)), "--config-name", f"{method}.yaml"]
    cmd += overrides(method, args, images, run)
    print(f"[solo] {method}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    rec: dict[str, Any] = {"command": " ".join(cmd)}
    rec["exit_code"] = run_bounded(cmd, run.parent, timeout)
    if rec["exit_code"] is None:
        rec["reason"] = f"timed out after {timeout:.0f} s"
    rec["seconds"] = time.perf_counter() - start
    try:
        rec.update(check_run(method, run, args))
    except Exception as err:  # noqa: BLE001 - the report says what went wrong, the other method still runs
        rec.update(ok=False, reason=f"check failed: {type(err).__name__}: {err}")
    rec["ok"] = bool(rec.get("ok")) and rec["exit_code"] == 0
    return rec


def summary_line(method: str, rec: dict[str, Any]) -> str:
    """One line per method for the console."""
    parts = [f"[solo] {method}: {'PASS' if rec['ok'] else 'FAIL'}", f"{rec.get('seconds', 0):.0f} s"]
    parts.append(f"exit {rec.get('exit_code')}")
    if "global_step" in rec:
        parts.append(f"steps {rec['global_step']}")
    losses = rec.get("losses", {})
    if losses:
        parts.append("losses finite" if losses.get("ok") else f"losses NOT finite/missing {losses}")
    mem = rec.get("memories", {}).get("class_memory")
    if mem:
        filled = f"{mem['changed_rows']}/{mem['rows']}"
        parts.append(f"class memory {filled} rows filled (expected {mem['expected_changed_rows']})")
    if rec.get("reason"):
        parts.append(str(rec["reason"]))
    return ", ".join(parts)


def absolute_python(python: str) -> str:
    """``python`` as an absolute path (the runs start in another folder): a path made absolute, a bare
    name looked up on ``PATH`` (kept as it is where it is not found there)."""
    if os.sep in python:
        return os.path.abspath(python)
    return shutil.which(python) or python


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of the module docstring; ``--python`` made absolute (:func:`absolute_python`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True, help="the JSON report")
    parser.add_argument("--work", required=True, help="a scratch folder (image folder, runs)")
    parser.add_argument("--data", required=True, help="Fashion-MNIST's IDX files (data.path)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="images per split (default: steps x batch)")
    parser.add_argument("--workers", type=int, default=8, help="data.num_workers")
    solo_root = os.environ.get("SOLO_LEARN_ROOT", "")
    parser.add_argument("--solo-root", default=solo_root, help="solo-learn clone or none")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("STAGE_LIMIT", 615)) - 15,
        help="seconds for all runs together (default: the stage's limit from gpu_run.sh, less 15 s)",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--recipe", default="", help="scripts/pretrain/<recipe> (default: by --device)")
    parser.add_argument("--extra", nargs="*", default=[], help="more hydra overrides for every run")
    args = parser.parse_args(argv)
    args.python = absolute_python(args.python)
    return args


def main(argv: list[str] | None = None) -> int:
    """Export, train and check each method (module docstring); 0 when every method passed, else 1."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_child)
    args.workers = shm_workers(args.workers, args.batch, args.device)
    args.knn_eval, why = knn_eval_works()
    if not args.knn_eval:
        print(f"[solo] knn_eval.enabled=False: solo-learn's online kNN needs torchmetrics<0.12, here {why}")
    deadline = time.perf_counter() + args.timeout
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    images = work / "fashion-mnist-images"
    limit = args.limit or args.steps * args.batch
    print(f"[solo] sop-data export fashion-mnist {images} --limit {limit}", flush=True)
    print(f"[solo] exported in {export_images(Path(args.data), images, limit):.1f} s", flush=True)
    report: dict[str, Any] = {
        "device": args.device,
        "steps": args.steps,
        "batch": args.batch,
        "config_dir": str(config_dir(args).relative_to(REPO)),
        "solo_root": args.solo_root or None,
        "knn_eval": args.knn_eval,
        "methods": {},
    }
    methods = [m for m in args.methods.split(",") if m]
    for i, method in enumerate(methods):
        left = deadline - time.perf_counter()
        share = left / (len(methods) - i)  # what is left, shared by the methods still to run
        rec = run_method(method, args, images, max(10.0, share))
        report["methods"][method] = rec
        print(summary_line(method, rec), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    report["ok"] = all(r["ok"] for r in report["methods"].values()) and bool(report["methods"])
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
