"""``MMFlowCLI``: the LightningCLI behind ``mmflow fit | validate | test | predict``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from mmflow.training.checkpoints import install_safeguards
from mmflow.training.module import FlowMatching

EXTRA_COMMANDS = "sample, evaluate, export, info"
_FLOW_MATCHING = f"{FlowMatching.__module__}.{FlowMatching.__qualname__}"


class ShortUsageParser(LightningArgumentParser):
    """A parser whose errors end in one line naming the bad key or value.

    jsonargparse prints the usage of every option before an error; for a recipe with hundreds
    of options that buries the message, so the usage shrinks to one line (``--help`` is intact).
    """

    def error(self, message: str, ex: Exception | None = None) -> Any:
        return super().error(concise_config_error(message), ex)

    def print_usage(self, file: Any = None) -> None:
        (file or sys.stdout).write(
            f"usage: {self.prog.replace(' [options]', '')} [--config RECIPE] [options]\n"
        )


_UNION_FAILURE = "Does not validate against any of the Union subtypes"


def concise_config_error(message: str) -> str:
    """jsonargparse's error for a bad ``class_path`` entry lists every union member it tried;
    keep the key, the class the recipe names, what is wrong with it and the options it takes.
    """
    if _UNION_FAILURE not in message:
        return message
    key = re.search(r'Parser key "([^"]+)"', message)
    problem = re.search(
        r"Problem with given class_path '([^']+)':\n(.*?)(?=\n\s*- |\Z)", message, re.DOTALL
    )
    if key is None or problem is None:
        return message
    class_path, reason = problem.group(1), " ".join(problem.group(2).split())
    options = accepted_options(class_path)
    accepted = f"; {class_path} accepts: {', '.join(options)}" if options else ""
    return f'Parser key "{key.group(1)}": {class_path}: {reason}{accepted}'


def accepted_options(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` (and of its bases, for ``**kwargs``)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    options: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        options += [
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in options
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return options


class MMFlowCLI(LightningCLI):
    """LightningCLI over any LightningModule, ``FlowMatching`` unless the recipe names another.

    ``model:`` without a ``class_path`` configures :class:`FlowMatching` (every flow recipe);
    a recipe for a component the flow builds on, such as a modality's VAE or vocoder, names its
    module with ``model.class_path``. The datamodule is chosen by ``data.class_path``.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        for recipe in _recipe_files(list(sys.argv[1:] if args is None else args)):
            check_recipe(recipe)
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

    def before_instantiate_classes(self) -> None:
        """Refuse ``weights_only: false`` (mmflow reads every checkpoint as data only) and move
        every output of the recipe when ``trainer.default_root_dir`` is overridden."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None:
            return
        if config.get("weights_only") is False:
            raise ValueError(
                "`weights_only: false`: mmflow reads checkpoints as data only and never runs "
                "code from one; remove the key"
            )
        recipe_root = _recipe_root(config.get("config") or [])
        root = config.get("trainer.default_root_dir")
        if recipe_root is not None and root is not None and str(root) != recipe_root:
            _rebase_paths(config, recipe_root, str(root))

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's trainer with mmflow's safeguards (:mod:`mmflow.training.checkpoints`):
        atomic, data-only checkpoints that keep the end of a run, exact resumes, and a stop
        at the first non-finite loss or gradient."""
        return install_safeguards(super().instantiate_trainer(**kwargs))

    def _parse_ckpt_path(self) -> None:
        """Keep the recipe and the command line in charge when ``--ckpt_path`` is given.

        LightningCLI would replace the parsed model config by the hyperparameters stored in
        the checkpoint, silently dropping overrides such as ``--model.nfe 4`` or another
        inverter at evaluation time. The recipe already holds the whole config; the checkpoint
        provides the weights (loaded strictly, so a config that does not fit them fails).
        """


def _recipe_files(argv: list[str]) -> list[Path]:
    """The ``--config`` files of a command line."""
    found = []
    for index, item in enumerate(argv):
        if item == "--config" and index + 1 < len(argv):
            found.append(Path(argv[index + 1]))
        elif item.startswith("--config="):
            found.append(Path(item.split("=", 1)[1]))
    return found


def check_recipe(path: Path) -> None:
    """A recipe must be a YAML mapping whose ``class_path`` entries name modules that exist;
    each fault is one error naming the file (and the key), before jsonargparse reads it."""
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: recipe not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{path}: not valid YAML ({reason})") from None
    if config is None:
        raise ValueError(f"{path}: empty recipe (expected trainer:, model: and data: sections)")
    if not isinstance(config, dict):  # a malformed file is a bad value, as invalid YAML is
        kind = type(config).__name__
        raise ValueError(f"{path}: a recipe is a mapping of sections, not a {kind}")  # noqa: TRY004
    for key, class_path in _class_paths(config):
        module = class_path.rpartition(".")[0]
        try:
            found = bool(module) and importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(f"{path}: `{key}` names {class_path!r}, whose module does not exist")


def _class_paths(config: Any, key: str = "") -> list[tuple[str, str]]:
    found = []
    if isinstance(config, dict):
        for name, value in config.items():
            where = f"{key}.{name}" if key else str(name)
            if name == "class_path" and isinstance(value, str):
                found.append((where, value))
            else:
                found.extend(_class_paths(value, where))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            found.extend(_class_paths(value, f"{key}[{index}]"))
    return found


def _recipe_root(recipes: Sequence[Any]) -> str | None:
    """``trainer.default_root_dir`` as the last recipe file that sets it writes it."""
    root = None
    for recipe in recipes:
        text = Path(getattr(recipe, "absolute", str(recipe))).read_text()
        trainer = (yaml.safe_load(text) or {}).get("trainer") or {}
        root = trainer.get("default_root_dir", root)
    return None if root is None else str(root)


def _rebase_paths(config: Namespace, old: str, new: str) -> None:
    """Replace the prefix ``old`` by ``new`` in every path-like string setting of ``config``:
    a recipe's checkpoint folder, logger folder and export folder move with its root."""
    old = old.rstrip("/")

    def rebase(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(f"{old}/")):
            return new.rstrip("/") + value[len(old) :]
        if isinstance(value, list):
            return [rebase(item) for item in value]
        if isinstance(value, Namespace):
            for key, item in value.items():
                value[key] = rebase(item)
        return value

    for key, value in config.items():
        if key not in ("config", "trainer.default_root_dir"):
            config[key] = rebase(value)


def build_module(config: dict[str, Any]) -> FlowMatching:
    """A ``FlowMatching`` from a ``model:`` config dict, with its config kept as hyperparameters.

    The same path the CLI takes, for code and tests: such a module can be exported with
    :func:`mmflow.hub.save_pretrained`.
    """
    args = ["--model", json.dumps(config), "--data", json.dumps(_NO_DATA), "--trainer.logger=false"]
    return MMFlowCLI(args=args, run=False).model


_NO_DATA = {"class_path": "pytorch_lightning.LightningDataModule"}
