"""The shared pieces of both hosts: the kNN vote, the rank-0 test and the interrupted-run line."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

import pytest
import torch

from sop_plugin.runtime import is_rank_zero
from sop_plugin.runtime.knn import knn_votes
from sop_plugin.runtime.resume_message import RESUME_CHECKPOINT, interrupted_message, resume_command
from sop_plugin.runtime.signals import Interrupted


def test_knn_votes_weight_each_neighbour_by_exp_sim_over_t() -> None:
    sims = torch.tensor([[0.9, 0.5, 0.4], [0.8, 0.8, 0.1]])
    labels = torch.tensor([[0, 1, 1], [2, 0, 2]])
    votes = knn_votes(sims, labels, temperature=0.1, num_classes=3)
    want = torch.zeros(2, 3)
    for row in range(2):
        for sim, label in zip(sims[row], labels[row]):
            want[row, label] += torch.exp((sim - sims[row, 0]) / 0.1)
    assert torch.allclose(votes, want)
    assert votes.argmax(1).tolist() == [0, 2]
    assert torch.isfinite(knn_votes(sims, labels, temperature=1e-4, num_classes=3)).all()  # no overflow


def test_rank_zero_reads_local_and_node_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("NODE_RANK", raising=False)
    assert is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "2")
    assert not is_rank_zero()


def test_message_without_run_dir_resumes_from_the_checkpoint() -> None:
    argv = ["/x/sop-solo-pretrain", "--config-name", "sop.yaml", "++resume_from_checkpoint=/old.ckpt"]
    stop = Interrupted(signal.SIGTERM, step=7, checkpoint="/c/a b.ckpt")
    message = interrupted_message("sop-solo-pretrain", stop, argv)
    head = "sop-solo-pretrain: interrupted by SIGTERM at step 7 (training); checkpoint /c/a b.ckpt"
    assert message.startswith(head)
    command = shlex.split(message.split("; resume with: ", 1)[1])
    resume = "++resume_from_checkpoint='/c/a b.ckpt'"
    assert command == ["sop-solo-pretrain", "--config-name", "sop.yaml", resume]
    resumed = resume_command("p", ["p"], RESUME_CHECKPOINT, "/c/x.ckpt")
    assert resumed == "p ++resume_from_checkpoint=/c/x.ckpt"
    fresh = interrupted_message("sop-solo-linear", Interrupted(signal.SIGINT, phase="setup"), argv)
    no_checkpoint = "no checkpoint yet: run the same command again to start over"
    assert fresh == f"sop-solo-linear: interrupted by SIGINT (setup); {no_checkpoint}"


def test_message_with_run_dir_resumes_the_run_dir(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{}")
    stop = Interrupted(signal.SIGTERM, phase="evaluation", method="sop", run_dir=tmp_path)
    message = interrupted_message("sop-bench", stop, ["sop-bench", "resume=/old", "seed=1"])
    assert message == (
        f"sop-bench: interrupted by SIGTERM of sop (evaluation); no checkpoint yet; "
        f"status in {tmp_path / 'results.json'}; resume with: sop-bench seed=1 resume={tmp_path}"
    )
