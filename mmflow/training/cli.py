"""``MMFlowCLI``: the LightningCLI behind ``mmflow fit | validate | test | predict``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from mmflow.training.module import FlowMatching

EXTRA_COMMANDS = "sample, evaluate, export, info"
_FLOW_MATCHING = f"{FlowMatching.__module__}.{FlowMatching.__qualname__}"


class ShortUsageParser(LightningArgumentParser):
    """A parser whose errors end in one line naming the bad key or value.

    jsonargparse prints the usage of every option before an error; for a recipe with hundreds
    of options that buries the message, so the usage shrinks to one line (``--help`` is intact).
    """

    def print_usage(self, file: Any = None) -> None:
        (file or sys.stdout).write(
            f"usage: {self.prog.replace(' [options]', '')} [--config RECIPE] [options]\n"
        )


class MMFlowCLI(LightningCLI):
    """LightningCLI over any LightningModule, ``FlowMatching`` unless the recipe names another.

    ``model:`` without a ``class_path`` configures :class:`FlowMatching` (every flow recipe);
    a recipe for a component the flow builds on, such as a modality's VAE or vocoder, names its
    module with ``model.class_path``. The datamodule is chosen by ``data.class_path``.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            pl.LightningModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=list(args) if args is not None else None,
            run=run,
            parser_class=ShortUsageParser,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "description": f"Flow matching for every modality. Also: mmflow {{{EXTRA_COMMANDS}}} --help",
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": _FLOW_MATCHING}})

    def _parse_ckpt_path(self) -> None:
        """Keep the recipe and the command line in charge when ``--ckpt_path`` is given.

        LightningCLI would replace the parsed model config by the hyperparameters stored in
        the checkpoint, silently dropping overrides such as ``--model.nfe 4`` or another
        inverter at evaluation time. The recipe already holds the whole config; the checkpoint
        provides the weights (loaded strictly, so a config that does not fit them fails).
        """


def build_module(config: dict[str, Any]) -> FlowMatching:
    """A ``FlowMatching`` from a ``model:`` config dict, with its config kept as hyperparameters.

    The same path the CLI takes, for code and tests: such a module can be exported with
    :func:`mmflow.hub.save_pretrained`.
    """
    args = ["--model", json.dumps(config), "--data", json.dumps(_NO_DATA), "--trainer.logger=false"]
    return MMFlowCLI(args=args, run=False).model


_NO_DATA = {"class_path": "pytorch_lightning.LightningDataModule"}
