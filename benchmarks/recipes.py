"""A recipe's module and datamodule for the benchmark scripts, built as ``mmflow fit`` would."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from mmflow.files import load_state, read_checkpoint
from mmflow.training.cli import MMFlowCLI


def build_recipe(
    config: str, overrides: Sequence[str] = (), checkpoint: str | None = None
) -> tuple[Any, Any]:
    """The recipe's module (with the checkpoint's weights when one is given, in eval mode then)
    and its datamodule; ``overrides`` are command-line overrides such as
    ``--model.cfg_scale=1.0``. No logger is built."""
    with warnings.catch_warnings():  # the arguments are the script's, rewritten on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = MMFlowCLI(args=["--config", config, *overrides, "--trainer.logger=false"], run=False)
    module = cli.model
    if checkpoint is not None:
        load_state(module, read_checkpoint(checkpoint)["state_dict"], checkpoint)
        module.eval()
    return module, cli.datamodule
