"""Fine-tuning: start from pretrained weights, freeze parameters by name, train LoRA adapters.

**Initial weights.** :func:`load_initial_weights` fills a network from a pretrained folder
(``mmflow export``: ``model.safetensors``, the network under ``network.``) or a Lightning
checkpoint (its EMA copy when it kept one, else the network), read without unpickling code.
Every name is reported: *matched* (loaded), *missing* (left at its initialisation), *unexpected*
(ignored) and *reshaped* (in both with other shapes, e.g. a class table for another number of
classes; left at its initialisation).

**Freezing.** :func:`freeze_parameters` turns gradients off for the parameters whose names
match shell-style patterns (``"joint_blocks.0.*"``); a pattern that matches nothing is an
error, so a typo does not silently train everything.

**LoRA** (Hu et al., 2021), through peft: a targeted linear layer ``y = W x`` becomes

    y = W x + (alpha / r) B A x,      A in R^{r x d_in}, B in R^{d_out x r}, B = 0 at the start,

with ``W`` frozen and ``A, B`` trained, so training starts from the pretrained function.
:func:`merge_lora` folds ``W <- W + (alpha / r) B A`` into a plain copy of the network, whose
state dict has the original names: an exported fine-tuned model loads like any other.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from mmflow.files import check_finite, load_weights, read_checkpoint

__all__ = [
    "LoRA",
    "WeightReport",
    "add_lora",
    "freeze_parameters",
    "has_lora",
    "load_initial_weights",
    "merge_lora",
    "network_weights",
]

#: The MMDiT's attention (``qkv``, ``proj``) and MLP (``fc1``, ``fc2``) projections.
MMDIT_PROJECTIONS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")


@dataclass
class WeightReport:
    """How a source's weights mapped onto a network (module docstring)."""

    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts, then the names that were not loaded."""
        counts = (
            f"{len(self.matched)} matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.reshaped)} reshaped"
        )
        lines = [f"initial weights from {self.source}: {counts}"]
        for kind in ("missing", "unexpected", "reshaped"):
            names = getattr(self, kind)
            if names:
                lines.append(f"  {kind}: {', '.join(names)}")
        return "\n".join(lines)


def network_weights(source: str | Path) -> dict[str, Tensor]:
    """The sampling network's weights in a pretrained folder or a Lightning checkpoint."""
    path = Path(source)
    if path.is_dir():
        weights = load_weights(path / "model.safetensors")
        prefix = "network."
    else:
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no checkpoint or pretrained folder (`mmflow export`) here"
            )
        weights = read_checkpoint(path).get("state_dict")
        if not isinstance(weights, dict):
            raise ValueError(f"{path}: a checkpoint without a `state_dict`")
        prefix = "ema.module." if any(k.startswith("ema.module.") for k in weights) else "network."
    found = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not found:
        raise ValueError(f"{path}: no network weights (no entry starts with `{prefix}`)")
    return found


def load_initial_weights(network: nn.Module, source: str | Path) -> WeightReport:
    """Load what fits of ``source`` into ``network`` (matched names with equal shapes)."""
    weights = network_weights(source)
    check_finite(weights, source)
    own = network.state_dict()
    report = WeightReport(str(source))
    for name in own:
        if name not in weights:
            report.missing.append(name)
        elif weights[name].shape != own[name].shape:
            shapes = f"{tuple(weights[name].shape)} -> {tuple(own[name].shape)}"
            report.reshaped.append(f"{name} {shapes}")
        else:
            report.matched.append(name)
    report.unexpected = [name for name in weights if name not in own]
    if not report.matched:
        raise ValueError(
            f"{source}: none of its {len(weights)} network weights fits this network "
            "(another architecture?)"
        )
    network.load_state_dict({name: weights[name] for name in report.matched}, strict=False)
    return report


def freeze_parameters(network: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Turn gradients off for parameters matching any of ``patterns``; returns their names."""
    names = [name for name, _ in network.named_parameters()]
    frozen = []
    for pattern in patterns:
        matches = fnmatch.filter(names, pattern)
        if not matches:
            raise ValueError(f"freeze pattern {pattern!r} matches no parameter of the network")
        frozen += [name for name in matches if name not in frozen]
    parameters = dict(network.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen


@dataclass
class LoRA:
    """LoRA adapters on the network's linear projections (module docstring).

    Args:
        rank: ``r``, the rank of ``B A``.
        alpha: the scale numerator, ``alpha / r``.
        dropout: dropout on the adapter's input.
        targets: names of the linear modules to adapt (the MMDiT's attention and MLP
            projections by default); see peft's ``target_modules``.
        train_also: shell-style patterns of further parameters left trainable (a class table
            that must learn new classes, e.g. ``"class_embed.*"``); every other base weight
            is frozen.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(MMDIT_PROJECTIONS))
    train_also: list[str] = field(default_factory=list)


def add_lora(network: nn.Module, lora: LoRA) -> nn.Module:
    """Inject LoRA adapters into ``network`` in place; only they (and ``train_also``) train."""
    from peft import LoraConfig, inject_adapter_in_model

    if lora.rank < 1:
        raise ValueError(f"LoRA `rank` must be a positive integer, got {lora.rank}")
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
    )
    try:
        inject_adapter_in_model(config, network)
    except ValueError as error:
        raise ValueError(f"LoRA targets {list(lora.targets)}: {error}") from None
    for name, parameter in network.named_parameters():
        parameter.requires_grad_("lora_" in name)
    names = [name for name, _ in network.named_parameters()]
    for pattern in lora.train_also:
        matches = fnmatch.filter(names, pattern)
        if not matches:
            raise ValueError(f"LoRA `train_also` pattern {pattern!r} matches no parameter")
        for name in matches:
            network.get_parameter(name).requires_grad_(True)
    return network


def has_lora(network: nn.Module) -> bool:
    """Whether ``network`` holds LoRA adapters."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(module, LoraLayer) for module in network.modules())


def merge_lora(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with every adapter folded into its base weight and removed."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(network)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(
                merged.get_submodule(parent) if parent else merged, child, module.get_base_layer()
            )
    return merged
