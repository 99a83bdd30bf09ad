"""Save and load trained flows as safetensors weights plus a JSON config.

A pretrained folder holds

- ``config.json``: ``{"network": {"class_path", "init_args"}, "adapter": {...}, "generation":
  {"sampler", "nfe", "cfg_scale"}, "mmflow_version"}`` — enough to rebuild the network and
  the adapter with jsonargparse, without the training code;
- ``model.safetensors``: the network's weights (the EMA copy when training kept one, with
  LoRA adapters merged into the weights) under ``network.`` and the adapter's under
  ``adapter.`` (frozen sub-models are not among them: the adapter loads them itself);
- ``files/``: a copy of every file or folder a setting names (``*_path``, ``path``,
  ``weights``: the adapter's classifier, VAE, vocoder, an encoder's weights), listed in the
  config's ``"files"`` (setting -> path inside the folder). Loading points the settings there,
  so the folder works wherever it is moved, without the files it was exported from.

Both files are written atomically (:mod:`mmflow.files`), so a folder never holds half a file.
Lightning checkpoints stay the format for resuming training.

A folder or a checkpoint can come from anyone, and building a class imports its module, which
runs code. So every ``class_path`` in a config (nested ones included) must lie under a trusted
package, checked before anything is imported: ``mmflow``, ``modalities``, ``torch.nn``, and
those a user adds with :func:`trust_packages` or the comma-separated ``MMFLOW_TRUSTED_PACKAGES``.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, ArgumentParser
from torch import Tensor, nn

import mmflow
from mmflow.files import (
    load_state,
    load_weights,
    read_checkpoint,
    read_json,
    save_weights,
    write_json,
)
from mmflow.finetune import LoRA, add_lora, has_lora, merge_lora
from mmflow.generation import GenerationDefaults
from mmflow.modality import Condition, ModalityAdapter
from mmflow.sampling import SampleResult

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

TRUSTED_PACKAGES: list[str] = ["mmflow", "modalities", "torch.nn"]
"""Packages whose classes a config may name (module docstring)."""


def trust_packages(*packages: str) -> None:
    """Let configs name classes of ``packages`` (e.g. a user's own modality package)."""
    TRUSTED_PACKAGES.extend(p for p in packages if p not in TRUSTED_PACKAGES)


def _trusted(class_path: str) -> bool:
    from_environment = os.environ.get("MMFLOW_TRUSTED_PACKAGES", "").split(",")
    packages = TRUSTED_PACKAGES + [p.strip() for p in from_environment if p.strip()]
    return any(class_path == p or class_path.startswith(f"{p}.") for p in packages)


def check_class_paths(config: Any, source: str | Path, key: str = "") -> None:
    """Refuse a config naming a class outside the trusted packages, before any import."""
    if isinstance(config, dict):
        for name, value in config.items():
            where = f"{key}.{name}" if key else str(name)
            if name == "class_path" and not (isinstance(value, str) and _trusted(value)):
                raise ValueError(
                    f"{source}: `{where}` names {value!r}, outside the trusted packages "
                    f"{TRUSTED_PACKAGES} (add a package with mmflow.hub.trust_packages or "
                    "MMFLOW_TRUSTED_PACKAGES if you trust this file)"
                )
            check_class_paths(value, source, where)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            check_class_paths(value, source, f"{key}[{index}]")


class PretrainedFlow(nn.Module):
    """A velocity network with its modality adapter, ready to generate."""

    def __init__(
        self,
        network: nn.Module,
        adapter: ModalityAdapter,
        defaults: GenerationDefaults | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.adapter = adapter
        self.defaults = defaults or GenerationDefaults()
        self.config = config or {}

    def generate(
        self,
        cond: Condition,
        x0: Tensor,
        sampler: str | None = None,
        nfe: int | None = None,
        cfg_scale: float | None = None,
    ) -> SampleResult:
        """Samples from noise ``x0`` (see :meth:`GenerationDefaults.generate`)."""
        return self.defaults.generate(self.network, self.adapter, cond, x0, sampler, nfe, cfg_scale)

    def with_adapter_args(self, **init_args: Any) -> PretrainedFlow:
        """This flow with its adapter rebuilt from its config with ``init_args`` changed, e.g.
        ``flow.with_adapter_args(fid_max_samples=1000)`` to score with Inception FID too."""
        config = copy.deepcopy(self.config["adapter"])
        config["init_args"] = {**config.get("init_args", {}), **init_args}
        adapter = _instantiate(config, "adapter", Path("<with_adapter_args>"))
        device = next(self.network.parameters(), torch.empty(0)).device
        rebuilt = {**self.config, "adapter": config}
        return PretrainedFlow(self.network, adapter.eval().to(device), self.defaults, rebuilt)


@dataclass
class _Parts:
    network: nn.Module
    adapter: nn.Module
    network_config: dict[str, Any]
    adapter_config: dict[str, Any]
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` (a trained ``FlowMatching`` or a :class:`PretrainedFlow`) to ``directory``.

    A ``FlowMatching`` module must have been built from a config (``mmflow fit``, a recipe, or
    :func:`mmflow.training.cli.build_module`), whose ``network`` and ``adapter`` entries are stored.
    """
    parts = _parts_of(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "mmflow_version": mmflow.__version__,
        "network": parts.network_config,
        "adapter": parts.adapter_config,
        "generation": vars(parts.defaults),
    }
    config["files"] = _bundle_files(config, directory)
    tensors = {f"network.{k}": v for k, v in parts.network.state_dict().items()}
    tensors.update({f"adapter.{k}": v for k, v in parts.adapter.state_dict().items()})
    save_weights(directory / WEIGHTS_NAME, tensors)
    write_json(directory / CONFIG_NAME, config)
    return directory


FILES_DIR = "files"


def _is_file_setting(name: str) -> bool:
    return name in ("path", "weights") or (name.endswith("_path") and name != "class_path")


def _file_settings(config: Any, key: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value)`` of every string setting named like a file (``_is_file_setting``)."""
    found = []
    if isinstance(config, dict):
        for name, value in config.items():
            where = f"{key}.{name}" if key else str(name)
            if isinstance(value, str) and _is_file_setting(str(name)):
                found.append((where, value))
            else:
                found.extend(_file_settings(value, where))
    return found


def _bundle_files(config: dict[str, Any], directory: Path) -> dict[str, str]:
    """Copy what the network's and adapter's file settings name into ``directory/files``."""
    bundled = {}
    for key, value in _file_settings({k: config[k] for k in ("network", "adapter")}):
        source = Path(value)
        if not source.exists():
            raise FileNotFoundError(
                f"`{key}`: {source} does not exist, so the export could not hold it"
            )
        target = directory / FILES_DIR / key
        if target.is_dir():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        bundled[key] = f"{FILES_DIR}/{key}"
    return bundled


def _point_to_bundled_files(config: dict[str, Any], directory: Path) -> None:
    """Set each bundled setting to its copy inside ``directory``; a missing copy is an error."""
    files = config.get("files") or {}
    if not isinstance(files, dict):  # a malformed file is a bad value, as invalid JSON is
        raise ValueError(f"{directory / CONFIG_NAME}: `files` must map settings to paths")  # noqa: TRY004
    for key, relative in files.items():
        copy_path = directory / str(relative)
        if (
            not copy_path.exists()
            or Path(str(relative)).is_absolute()
            or ".." in Path(str(relative)).parts
        ):
            raise FileNotFoundError(
                f"{directory}: `{key}` needs {relative} inside the folder, which is missing "
                "(an incomplete copy of an export?)"
            )
        *parents, name = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or name not in node:
            raise ValueError(f"{directory / CONFIG_NAME}: `files` names `{key}`, not a setting")
        node[name] = str(copy_path)


def from_pretrained(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> PretrainedFlow:
    """Rebuild a :class:`PretrainedFlow` from a folder written by :func:`save_pretrained`."""
    directory = Path(directory)
    config = _read_config(directory / CONFIG_NAME)
    _point_to_bundled_files(config, directory)
    network = _instantiate(config["network"], "network", directory / CONFIG_NAME)
    adapter = _instantiate(config["adapter"], "adapter", directory / CONFIG_NAME)
    weights = load_weights(directory / WEIGHTS_NAME, map_location)
    _load_part(network, weights, "network", directory / WEIGHTS_NAME)
    _load_part(adapter, weights, "adapter", directory / WEIGHTS_NAME)
    defaults = GenerationDefaults(**config.get("generation", {}))
    flow = PretrainedFlow(network.eval(), adapter.eval(), defaults, config)
    return flow.to(map_location)


def pretrained_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> PretrainedFlow:
    """A :class:`PretrainedFlow` from a Lightning checkpoint of a config-built ``FlowMatching``.

    The sampling weights are the EMA copy when the checkpoint has one. The checkpoint is read
    with ``weights_only=True``: it is never unpickled as code.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    hparams = checkpoint.get("hyper_parameters", {})
    config = {name: hparams.get(name) for name in ("network", "adapter")}
    missing = [n for n, c in config.items() if not (isinstance(c, dict) and "class_path" in c)]
    if missing:
        raise ValueError(
            f"{path}: the checkpoint has no config for {missing} (not trained from a recipe)"
        )
    network = _instantiate(config["network"], "network", path)
    adapter = _instantiate(config["adapter"], "adapter", path)
    lora = hparams.get("lora")
    if lora:
        add_lora(network, LoRA(**lora))
    state = checkpoint["state_dict"]
    prefix = "ema.module" if any(k.startswith("ema.module.") for k in state) else "network"
    _load_part(network, state, prefix, path)
    _load_part(adapter, state, "adapter", path)
    if lora:
        network = merge_lora(network)
    defaults = GenerationDefaults.from_hparams(hparams)
    return PretrainedFlow(network.eval(), adapter.eval(), defaults, config).to(map_location)


def _parts_of(model: nn.Module) -> _Parts:
    if isinstance(model, PretrainedFlow):
        return _Parts(
            model.network,
            model.adapter,
            model.config["network"],
            model.config["adapter"],
            model.defaults,
        )
    hparams = dict(getattr(model, "hparams", {}))
    configs = {name: hparams.get(name) for name in ("network", "adapter")}
    missing = [n for n, c in configs.items() if not (isinstance(c, dict) and "class_path" in c)]
    if missing:
        raise ValueError(
            f"save_pretrained: the model has no config for {missing}; build it from a recipe "
            "(`mmflow fit --config ...`) or with mmflow.training.cli.build_module so it can be rebuilt"
        )
    defaults = GenerationDefaults.from_hparams(hparams)
    network = model.sampling_network
    if has_lora(network):
        network = merge_lora(network)
    return _Parts(network, model.adapter, configs["network"], configs["adapter"], defaults)


def _read_config(path: Path) -> dict[str, Any]:
    config = read_json(path, written_by="save_pretrained")
    for key in ("network", "adapter"):
        if not isinstance(config, dict) or key not in config:
            raise ValueError(f"{path}: missing key `{key}`")
    return config


def _instantiate(config: dict[str, Any], key: str, source: Path) -> nn.Module:
    check_class_paths(config, source, key)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, key, fail_untyped=False)
    try:
        return parser.instantiate(parser.parse_object({key: config}))[key]
    except (ArgumentError, ImportError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: cannot build `{key}`: {error}") from None


def _load_part(module: nn.Module, weights: dict[str, Tensor], prefix: str, source: Path) -> None:
    part = {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(f"{prefix}.")}
    load_state(module, part, f"{source} (`{prefix}`)")


def load_flow(
    checkpoint: str | Path | None = None,
    pretrained: str | Path | None = None,
    map_location: str | torch.device = "cpu",
) -> PretrainedFlow:
    """A :class:`PretrainedFlow` from exactly one of a Lightning checkpoint and a pretrained
    folder (``mmflow export``)."""
    if (checkpoint is None) == (pretrained is None):
        raise ValueError("give exactly one of a checkpoint (--checkpoint) and a pretrained folder")
    if checkpoint is not None:
        return pretrained_from_checkpoint(checkpoint, map_location=map_location)
    return from_pretrained(pretrained, map_location=map_location)


def velocity_network(source: nn.Module | str | Path, argument: str = "network") -> nn.Module:
    """A trained flow's velocity network, for objectives that hold one frozen (a teacher, a
    base flow): a module as given, or the network :func:`load_flow` reads from a Lightning
    checkpoint (a file) or a pretrained folder (``mmflow export``). ``argument`` names the
    constructor argument in errors."""
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, (str, Path)):  # a bad value, reported as a user's error
        kind = type(source).__name__
        raise ValueError(f"`{argument}` must be a module or a path, got a {kind}")  # noqa: TRY004
    path = Path(source)
    if path.is_dir():
        return load_flow(pretrained=path).network
    if path.is_file():
        return load_flow(checkpoint=path).network
    raise ValueError(f"`{argument}`: {path} is neither a checkpoint file nor a pretrained folder")
