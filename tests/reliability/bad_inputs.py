"""The bad inputs tried by ``test_bad_input.py``: settings -> the error class and message they get.

``scripts``-free on purpose: ``python -m tests.reliability.bad_inputs DATA_DIR`` prints the
exact messages (used to write docs/reliability.md).
"""

from __future__ import annotations

#: (case id, hydra overrides on top of the tiny config, expected error class name, fragment of its message)
CONFIG_CASES: list[tuple[str, list[str], str, str]] = [
    ("unknown_method", ["methods=[sop,simclr]"], "ConfigError", "unknown ['simclr']; choose from"),
    ("no_method", ["methods=[]"], "ConfigError", "methods is empty"),
    ("unknown_dataset", ["data.name=fashion"], "ConfigError", "data.name='fashion' is not a dataset"),
    ("missing_dataset_path", ["data.path=/nonexistent/fmnist"], "DatasetNotFoundError", "data.path"),
    (
        "patch_does_not_divide_crop",
        ["crops.global_size=18"],
        "ConfigError",
        "crops.global_size=18 is not divisible by model.patch_size=4",
    ),
    (
        "local_crop_not_divisible",
        ["crops.local_size=6"],
        "ConfigError",
        "crops.local_size=6 is not divisible by model.patch_size=4",
    ),
    (
        "heads_do_not_divide_dim",
        ["model.num_heads=3"],
        "ConfigError",
        "model.embed_dim=32 must be divisible by model.num_heads=3",
    ),
    (
        "anchors_times_supports_exceed_memory",
        ["sop.class_num_anchors=40"],
        "ConfigError",
        "class_num_anchors x (class_num_supports + 1) = 120 exceeds class_memory_size=100",
    ),
    (
        "supports_exceed_pool",
        ["sop.patch_num_anchors=50", "sop.patch_num_supports=2"],
        "ConfigError",
        "patch_num_anchors x (patch_num_supports + 1) = 150 exceeds patch_memory_size=100",
    ),
    ("one_anchor", ["sop.class_num_anchors=1"], "ConfigError", "class_num_anchors=1 must be >= 2"),
    (
        "global_batch_exceeds_memory",
        ["train.batch_size=64", "sop.class_memory_size=48"],
        "ConfigError",
        "global batch 64 exceeds class_memory_size=48",
    ),
    ("bad_temperature", ["temps.student_temp=0"], "ConfigError", "student_temp=0.0 must be > 0"),
    ("unknown_anchor_selection", ["sop.anchor_selection=dense"], "ConfigError", "anchor_selection='dense'"),
    (
        "unknown_sop_key",
        ["+sop.num_prototypes=10"],
        "ConfigError",
        "unknown SOP setting(s) ['num_prototypes']",
    ),
    (
        "bad_mask_ratio",
        ["masks.ratio=[0.5,0.2]"],
        "ConfigError",
        "ratio=[0.5, 0.2] must satisfy 0 <= min <= max < 1: fix masks.prob / masks.ratio",
    ),
    ("bad_crop_scale", ["crops.local_scale=[0.5,0.1]"], "ConfigError", "crops: local_scale must satisfy"),
    (
        "batch_larger_than_dataset",
        ["train.batch_size=128", "sop.class_memory_size=200", "sop.patch_memory_size=200"],
        "ConfigError",
        "train.batch_size x devices = 128 exceeds the 96 training images",
    ),
    (
        "batch_times_devices_larger_than_dataset",
        [
            "train.batch_size=64",
            "trainer.devices=2",
            "sop.class_memory_size=200",
            "sop.patch_memory_size=200",
        ],
        "ConfigError",
        "train.batch_size x devices = 128 exceeds the 96 training images",
    ),
    ("knn_k_larger_than_train_set", ["eval.knn_k=500"], "ConfigError", "eval.knn_k=500 must be in [1, 32]"),
    ("unknown_nonfinite_policy", ["train.on_nonfinite=ignore"], "ConfigError", "train.on_nonfinite='ignore'"),
    (
        "bad_checkpoint_interval",
        ["train.checkpoint_every_n_steps=0"],
        "ConfigError",
        "train.checkpoint_every_n_steps=0 must be a positive integer",
    ),
    (
        "rng_chunk_not_dividing_batch",
        ["train.rng_chunk=5"],
        "ConfigError",
        "train.rng_chunk=5 must be a positive divisor of train.batch_size=16",
    ),
    ("trust_checkpoint_not_bool", ["trust_checkpoint=maybe"], "ConfigError", "trust_checkpoint='maybe'"),
    (
        "resume_path_missing",
        ["resume=/nonexistent/run"],
        "ConfigError",
        "resume=/nonexistent/run does not exist",
    ),
    ("zero_epochs", ["train.epochs=0"], "ConfigError", "train.epochs must be >= 1"),
]


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from sop_plugin.bench.runner import run
    from tests.reliability.relutil import tiny_config

    for case, extra, _, _ in CONFIG_CASES:
        try:
            run(tiny_config(Path("/tmp/bad-input-out"), Path(sys.argv[1]), extra))
        except Exception as err:  # noqa: BLE001 - printing every message is the point
            print(f"| `{case}` | `{' '.join(extra)}` | {type(err).__name__}: {err} |")
