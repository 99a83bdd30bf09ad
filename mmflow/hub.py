"""Save and load trained flows as safetensors weights plus a JSON config.

A pretrained folder holds

- ``config.json``: ``{"network": {"class_path", "init_args"}, "adapter": {...}, "generation":
  {"sampler", "nfe", "cfg_scale"}, "mmflow_version"}`` — enough to rebuild the network and
  the adapter with jsonargparse, without the training code;
- ``model.safetensors``: the network's weights (the EMA copy when training kept one, with
  LoRA adapters merged into the weights) under ``network.`` and the adapter's under
  ``adapter.`` (frozen sub-models are not among them: the adapter loads them itself).

Both files are written atomically (:mod:`mmflow.files`), so a folder never holds half a file.
Lightning checkpoints stay the format for resuming training.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, ArgumentParser
from torch import Tensor, nn

import mmflow
from mmflow.files import load_state, load_weights, read_json, save_weights, write_json
from mmflow.finetune import LoRA, add_lora, has_lora, merge_lora
from mmflow.generation import GenerationDefaults
from mmflow.modality import Condition, ModalityAdapter
from mmflow.sampling import SampleResult

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
    :func:`mmflow.cli.build_module`), whose ``network`` and ``adapter`` entries are stored.
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
    tensors = {f"network.{k}": v for k, v in parts.network.state_dict().items()}
    tensors.update({f"adapter.{k}": v for k, v in parts.adapter.state_dict().items()})
    save_weights(directory / WEIGHTS_NAME, tensors)
    write_json(directory / CONFIG_NAME, config)
    return directory


def from_pretrained(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> PretrainedFlow:
    """Rebuild a :class:`PretrainedFlow` from a folder written by :func:`save_pretrained`."""
    directory = Path(directory)
    config = _read_config(directory / CONFIG_NAME)
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
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from None
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
            "(`mmflow fit --config ...`) or with mmflow.cli.build_module so it can be rebuilt"
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
