"""How the launchers reuse solo-learn: its own scripts from a clone with our pieces attached, our own small
launcher without one, and no copy of solo-learn's scripts in ours."""

from __future__ import annotations

import ast
import difflib
import os
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import lightning.pytorch
import solo.args.linear
import solo.args.pretrain
import solo.data.classification_dataloader
import solo.data.pretrain_dataloader
import torch
from omegaconf import DictConfig

from sop_plugin.runtime import AtomicCheckpointIO, RNGStateCheckpoint, load_checkpoint
from sop_plugin.solo import attach, launch, own_launcher, pretrained, solo_scripts
from sop_plugin.solo.callbacks import NothingTrained, WallClock
from tests.solo.soloutil import CPU, SCRIPTS, SMALL_SOP, compose, compose_pretrain, data_overrides

SOLO_ROOT = solo_scripts.find_solo_root()  # $SOLO_LEARN_ROOT, else the clone solo-learn was installed from
needs_clone = pytest.mark.skipif(SOLO_ROOT is None, reason="no solo-learn clone (main_pretrain.py) found")
LAUNCHERS = [Path(m.__file__) for m in (launch, attach, own_launcher, solo_scripts, pretrained)]


def _originals() -> list[object]:
    return [
        lightning.pytorch.Trainer,
        solo.args.pretrain.parse_cfg,
        solo.args.linear.parse_cfg,
        solo.data.classification_dataloader.prepare_data,
        solo.data.pretrain_dataloader.prepare_datasets,
    ]


def _fast_linear_cfg(ckpt: Path, folder: Path, ckpt_dir: Path) -> DictConfig:
    """solo-learn's linear config for our Fashion-MNIST script on ``ckpt``: one fast_dev_run batch on CPU."""
    return compose(
        SCRIPTS / "linear" / "fashion-mnist",
        "sop.yaml",
        [f"pretrained_feature_extractor='{ckpt}'", *data_overrides(folder), *CPU]
        + [f"checkpoint.dir={ckpt_dir}", "++fast_dev_run=True"],
    )


def _fast_pretrain(folder: Path, ckpt_dir: Path, extra: tuple[str, ...] = ()):
    overrides = [*data_overrides(folder), *CPU, *SMALL_SOP, f"checkpoint.dir={ckpt_dir}"]
    overrides += ["++fast_dev_run=True", "knn_eval.enabled=True", *extra]
    return launch.run_pretrain(compose_pretrain(overrides))


def _assert_attached(trainer) -> None:
    kinds = {type(cb) for cb in trainer.callbacks}
    assert {RNGStateCheckpoint, WallClock, NothingTrained} <= kinds
    assert any(type(cb).__name__ == "Checkpointer" for cb in trainer.callbacks)  # solo-learn's own
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_find_solo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert solo_scripts.find_solo_root("none") is None and solo_scripts.find_solo_root("None") is None
    with pytest.raises(FileNotFoundError, match=r"has no main_pretrain.py or main_linear.py.*'none'"):
        solo_scripts.find_solo_root(str(tmp_path))
    for name in solo_scripts.SCRIPTS.values():
        (tmp_path / name).write_text("")
    assert solo_scripts.find_solo_root(str(tmp_path)) == tmp_path.resolve()
    monkeypatch.setenv(solo_scripts.SOLO_ROOT_ENV, str(tmp_path))
    assert solo_scripts.find_solo_root() == tmp_path.resolve()
    monkeypatch.setenv(solo_scripts.SOLO_ROOT_ENV, "none")
    assert solo_scripts.find_solo_root() is None


def test_solo_root_flag_goes_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(solo_scripts.SOLO_ROOT_ENV, "")  # restored (or removed) after the test
    argv = ["prog", "--solo-root", "/x/solo", "--config-name", "sop.yaml", "a=b"]
    assert launch.take_solo_root(argv) == ["prog", "--config-name", "sop.yaml", "a=b"]
    assert os.environ[solo_scripts.SOLO_ROOT_ENV] == "/x/solo"
    assert launch.take_solo_root(["prog", "--solo-root=none", "a=b"]) == ["prog", "a=b"]
    assert os.environ[solo_scripts.SOLO_ROOT_ENV] == "none"


@needs_clone
@pytest.mark.slow
def test_pretrain_and_linear_run_the_clones_scripts_with_our_pieces(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(solo_scripts.SOLO_ROOT_ENV, str(SOLO_ROOT))
    before = _originals()
    trainer = _fast_pretrain(tiny_image_folder, tmp_path / "ckpt", ("clean_knn.enabled=True",))
    assert trainer.launched_by == SOLO_ROOT / "main_pretrain.py"
    _assert_attached(trainer)
    assert any(type(cb).__name__ == "CleanKNN" for cb in trainer.callbacks)
    assert "CenterCrop(size=(28, 28))" in repr(trainer.val_dataloaders.dataset.transform)  # not solo's 224
    assert "val_clean_knn_acc1" in trainer.callback_metrics and "val_knn_acc1" in trainer.callback_metrics
    assert _originals() == before  # every replaced name is back
    ckpt = sorted((tmp_path / "ckpt" / "sop").rglob("*.ckpt"))
    assert len(ckpt) == 1 and "method.objective.class_memory.bank" in load_checkpoint(ckpt[0])["state_dict"]

    linear = _fast_linear_cfg(ckpt[0], tiny_image_folder, tmp_path / "ckpt")
    trained = launch.run_linear(linear)
    assert trained.launched_by == SOLO_ROOT / "main_linear.py"
    _assert_attached(trained)
    assert _originals() == before

    # solo-learn's own loader ignores missing backbone weights; the attached check does not
    state = torch.load(ckpt[0], map_location="cpu", weights_only=False)
    del state["state_dict"]["backbone.cls_token"]
    cut = tmp_path / "cut.ckpt"
    torch.save(state, cut)
    linear.pretrained_feature_extractor = str(cut)
    with pytest.raises(ValueError, match=r"missing \['cls_token'\]"):
        launch.run_linear(linear)
    assert _originals() == before  # reverted after an error too


@pytest.mark.slow
def test_without_a_clone_our_own_launcher_runs_with_the_same_pieces(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(solo_scripts.SOLO_ROOT_ENV, "none")
    trainer = _fast_pretrain(tiny_image_folder, tmp_path / "ckpt")
    assert trainer.launched_by is None
    _assert_attached(trainer)
    assert "val_knn_acc1" in trainer.callback_metrics
    ckpt = sorted((tmp_path / "ckpt" / "sop").rglob("*.ckpt"))
    assert len(ckpt) == 1
    linear = _fast_linear_cfg(ckpt[0], tiny_image_folder, tmp_path / "ckpt")
    trained = launch.run_linear(linear)
    assert trained.launched_by is None and "val_acc1" in trained.callback_metrics
    backbone = {k[len("backbone.") :]: v for k, v in load_checkpoint(ckpt[0])["state_dict"].items()}
    assert torch.equal(trained.lightning_module.backbone.cls_token.cpu(), backbone["cls_token"])


def test_without_a_clone_solo_only_options_are_refused_with_the_fix(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(solo_scripts.SOLO_ROOT_ENV, "none")
    cfg = compose_pretrain([*data_overrides(tiny_image_folder), *CPU, *SMALL_SOP, "wandb.enabled=True"])
    expected = r"wandb.enabled=True: only solo-learn's own main_pretrain.py.*--solo-root"
    with pytest.raises(ValueError, match=expected):
        launch.run_pretrain(cfg)
    assert lightning.pytorch.Trainer is attach.Trainer  # reverted


def _code_lines(path: Path) -> list[str]:
    """Code lines of ``path`` without blanks, comments, docstrings, imports and lone brackets."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, node.end_lineno + 1))
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))  # a docstring
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if number not in skip and text and text.strip("()[]{},:") != "":
            lines.append(text)
    return lines


@needs_clone
@pytest.mark.parametrize("script", ["main_pretrain.py", "main_linear.py"])
def test_launchers_hold_no_block_of_solo_learns_scripts(script: str) -> None:
    theirs = _code_lines(SOLO_ROOT / script)
    for ours_path in LAUNCHERS:
        ours = _code_lines(ours_path)
        match = difflib.SequenceMatcher(None, ours, theirs, autojunk=False).find_longest_match(
            0, len(ours), 0, len(theirs)
        )
        assert match.size <= 2, (ours_path.name, script, ours[match.a : match.a + match.size])


def test_launchers_hold_no_dali_umap_wandb_or_mixup_code() -> None:
    banned = {"PretrainDALIDataModule", "ClassificationDALIDataModule", "build_transform_pipeline_dali"}
    banned |= {"AutoUMAP", "WandbLogger", "LearningRateMonitor"}
    banned |= {"Mixup", "SoftTargetCrossEntropy", "LabelSmoothingCrossEntropy"}
    for path in LAUNCHERS:
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names |= {a.name.split(".")[-1] for n in imports for a in n.names}
        modules = {n.module or "" for n in imports}
        assert not names & banned, (path.name, names & banned)
        assert not [m for m in modules if "dali" in m or "umap" in m or "wandb" in m], (path.name, modules)


def test_a_script_we_cannot_attach_to_is_refused_before_it_runs(tmp_path: Path) -> None:
    script = tmp_path / "main_pretrain.py"
    script.write_text("import lightning.pytorch as pl\n\ndef main(cfg):\n    raise AssertionError('ran')\n")
    with attach.Attachment("pretrain", script=script).attached() as attachment:
        expected = r"does not import parse_cfg and Trainer by name.*--solo-root none"
        with pytest.raises(RuntimeError, match=expected):
            solo_scripts.solo_main(script, attachment)
    assert _originals()[0] is attach.Trainer


class _Payload:
    """A pickled object outside the safe types."""


def test_trusted_linear_checkpoint_unpickles_in_full_for_that_launch_only(tmp_path, monkeypatch):
    import warnings

    from omegaconf import OmegaConf

    from sop_plugin.runtime import CheckpointError

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"backbone.w": torch.ones(2)}, "extra": _Payload()}, path)
    cfg = OmegaConf.create({"devices": 1, "pretrained_feature_extractor": str(path)})
    with attach.Attachment("linear").attached() as attachment:
        with pytest.raises(CheckpointError, match="set trust_checkpoint=true"):
            attachment.parse(lambda c: c, cfg.copy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attachment.parse(lambda c: c, OmegaConf.merge(cfg, {"trust_checkpoint": True}))
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and set(attachment.weights) == {"w"}
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
