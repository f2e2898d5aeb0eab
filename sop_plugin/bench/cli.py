"""``sop-bench``: the hydra entry point of the benchmark."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from sop_plugin.bench.checks import ConfigError
from sop_plugin.bench.runner import run
from sop_plugin.data.errors import DatasetCorruptError, DatasetNotFoundError
from sop_plugin.runtime import CheckpointError, NonFiniteLossError
from sop_plugin.runtime.devices import is_rank_zero
from sop_plugin.runtime.resume_message import interrupted_message
from sop_plugin.runtime.signals import Interrupted

#: exit status of a bad setting, missing/corrupt data or an unusable checkpoint
EXIT_BAD_INPUT = 2
#: exit status of a run stopped at a non-finite loss
EXIT_NONFINITE = 3
# a run stopped by a signal exits with 128 + the signal (143 SIGTERM, 130 SIGINT), as a shell reports it


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    try:
        run(resolved)  # type: ignore[arg-type]
    except (ConfigError, DatasetNotFoundError, DatasetCorruptError, CheckpointError) as err:
        print(f"sop-bench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except NonFiniteLossError as err:
        print(f"sop-bench: stopped: {err}", file=sys.stderr)
        sys.exit(EXIT_NONFINITE)
    except Interrupted as stop:
        if is_rank_zero():
            print(interrupted_message("sop-bench", stop, sys.argv), file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)


def main() -> None:
    """Console script: ``sop-bench [profile=quick|standard|full|gpu] [key=value ...]``."""
    _app()


if __name__ == "__main__":
    main()
