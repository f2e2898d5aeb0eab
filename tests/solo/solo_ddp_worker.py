"""Worker for test_solo_ddp: ``sop-solo-pretrain``'s code path on 2 CPU processes (gloo).

Lightning's DDP launcher re-runs this module for rank 1 (``python -m`` again); each rank saves its
view of the SOP memories after training, so the test can check that the ranks agree.
Usage, with the repository root on ``PYTHONPATH``:
``python -m tests.solo.solo_ddp_worker IMAGE_FOLDER OUT_DIR``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sop_plugin.solo.launch import run_pretrain
from tests.solo.soloutil import CPU, SMALL_SOP, compose_pretrain, data_overrides


def main() -> None:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    cpu = [o for o in CPU if not o.startswith(("devices=", "strategy=", "optimizer.batch_size="))]
    overrides = [
        *data_overrides(folder),
        *cpu,
        *SMALL_SOP,
        "devices=2",
        "strategy=ddp",
        "optimizer.batch_size=2",
        "max_epochs=1",
        "knn_eval.enabled=False",
        f"checkpoint.dir={out / 'ckpt'}",
        "++limit_val_batches=0",
        "++num_sanity_val_steps=0",
        "++logger=False",
    ]
    trainer = run_pretrain(compose_pretrain(overrides))
    objective = trainer.lightning_module.method.objective
    torch.save(
        {
            "class_bank": objective.class_memory.bank.detach().clone(),
            "class_ptr": int(objective.class_memory.ptr),
            "patch_bank": objective.patch_memory.bank.detach().clone(),
            "patch_ptr": int(objective.patch_memory.ptr),
            "step": int(trainer.global_step),
            "world": int(trainer.world_size),
            "loss": float(trainer.callback_metrics["train_sop_loss"]),
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main()
