"""``sop-bench``: the hydra entry point of the benchmark."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from sop_plugin.bench.runner import ConfigError, run
from sop_plugin.data.errors import DatasetCorruptError, DatasetNotFoundError


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    try:
        run(resolved)  # type: ignore[arg-type]
    except (ConfigError, DatasetNotFoundError, DatasetCorruptError) as err:
        print(f"sop-bench: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console script: ``sop-bench [profile=quick|standard|full|gpu] [key=value ...]``."""
    _app()
