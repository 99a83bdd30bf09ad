"""Speed and memory of mmflow's MMDiT against diffusers' SD3 transformer with the same weights.

diffusers' ``SD3Transformer2DModel`` is built at each size with random weights, converted by
:func:`mmflow.nn.mmdit_from_sd3` (so the two compute the same function, ``u = -v_sd3``; the
largest difference of their outputs is reported), and both are timed on the same inputs:

- ``forward``: one forward pass without gradients;
- ``train``: forward, a squared loss and backward (what a training step spends in the network);
- per mode: ``eager``, ``compile`` (``torch.compile``, compiled once before timing; its
  compile time is reported), ``checkpointing`` (eager with each block recomputed in backward).

Also reported: FLOPs of a training pass (``FlopCounterMode``, attention counted in its math
form, so the count is the same on every device and backend; backward = 2 x forward), the
achieved FLOP rate, model FLOP utilisation ``achieved / --peak_tflops`` when a peak is given
(e.g. 989 for an H100's dense bf16), the bytes autograd saves for backward (distinct storages;
device independent) and, on CUDA, the peak allocated memory.

    python -m benchmarks.backbone --sizes cpu flowsep --modes eager compile checkpointing \\
        --out outputs/benchmarks/backbone_cpu.json
    python -m benchmarks.backbone --device cuda --dtype bfloat16 --sizes cpu sd3-medium \\
        --peak_tflops 989 --out outputs/benchmarks/backbone_gpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.timing import interleaved_medians, synchronize
from mmflow.nn import mmdit_from_sd3


@dataclass(frozen=True)
class BackboneSize:
    """A diffusers SD3 config and the inputs it is timed on (latent ``[B, C, H, W]``, text)."""

    config: dict[str, Any]
    batch: int
    height: int
    width: int
    text_tokens: int


SIZES: dict[str, BackboneSize] = {
    # 3.5 M parameters, 256 image + 77 text tokens.
    "cpu": BackboneSize(
        {
            "sample_size": 32,
            "patch_size": 2,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 6,
            "attention_head_dim": 32,
            "num_attention_heads": 4,
            "joint_attention_dim": 64,
            "caption_projection_dim": 128,
            "pooled_projection_dim": 64,
            "pos_embed_max_size": 32,
            "qk_norm": "rms_norm",
        },
        batch=8,
        height=32,
        width=32,
        text_tokens=77,
    ),
    # FlowSep's network (recipes/audio/flowsep_from_mixture.yaml): 16 x 32 latents of 8 + 8
    # (mixture) channels, 128 tokens, a 32-token query of MiniLM features.
    "flowsep": BackboneSize(
        {
            "sample_size": 32,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 4,
            "attention_head_dim": 32,
            "num_attention_heads": 4,
            "joint_attention_dim": 384,
            "caption_projection_dim": 128,
            "pooled_projection_dim": 384,
            "pos_embed_max_size": 32,
            "qk_norm": "rms_norm",
        },
        batch=16,
        height=16,
        width=32,
        text_tokens=32,
    ),
    # SD3-medium (2 B parameters) at 1024 x 1024 pixels: 4096 image + 333 text tokens.
    "sd3-medium": BackboneSize(
        {
            "sample_size": 128,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 192,
        },
        batch=2,
        height=128,
        width=128,
        text_tokens=333,
    ),
}

MODES = ("eager", "compile", "checkpointing")
Inputs = tuple[Tensor, Tensor, Tensor, Tensor]


def build_pair(size: BackboneSize, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(mmdit, sd3)``: diffusers' model with N(0, 0.02) weights (no zero-initialised gate
    left at zero) and its conversion."""
    import diffusers  # the `bench` extra

    torch.manual_seed(seed)
    sd3 = diffusers.SD3Transformer2DModel(**size.config)
    with torch.no_grad():
        for parameter in sd3.parameters():
            parameter.normal_(0.0, 0.02)
    return mmdit_from_sd3(dict(sd3.config), sd3.state_dict()), sd3


def make_inputs(size: BackboneSize, device: torch.device, seed: int = 1) -> Inputs:
    """``(x, t, text, pooled)`` in float32 on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    cfg = size.config
    tensors = (
        torch.randn(size.batch, cfg["in_channels"], size.height, size.width, generator=gen),
        torch.rand(size.batch, generator=gen),
        torch.randn(size.batch, size.text_tokens, cfg["joint_attention_dim"], generator=gen),
        torch.randn(size.batch, cfg["pooled_projection_dim"], generator=gen),
    )
    return tuple(tensor.to(device) for tensor in tensors)  # type: ignore[return-value]


def mmdit_call(model: nn.Module) -> Callable[[Inputs], Tensor]:
    return lambda i: model(i[0], i[1], context={"text": i[2]}, pooled=i[3])


def sd3_call(model: nn.Module) -> Callable[[Inputs], Tensor]:
    """``-sd3(x, 1000 (1 - t))``: diffusers' output in mmflow's convention."""
    return lambda i: (
        -model(
            i[0], timestep=1000 * (1 - i[1]), encoder_hidden_states=i[2], pooled_projections=i[3]
        ).sample
    )


def training_loss(call: Callable[[Inputs], Tensor], inputs: Inputs) -> Tensor:
    """The squared output, averaged: a loss that reaches every parameter."""
    return call(inputs).float().square().mean()


def train_pass(call: Callable[[Inputs], Tensor], inputs: Inputs) -> None:
    training_loss(call, inputs).backward()


def forward_pass(call: Callable[[Inputs], Tensor], inputs: Inputs) -> None:
    with torch.no_grad():
        call(inputs)


def training_flops(call: Callable[[Inputs], Tensor], inputs: Inputs) -> int:
    """FLOPs of forward + backward, attention in its math form (fused kernels are not counted
    by ``FlopCounterMode`` on every device)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        train_pass(call, inputs)
    return counter.get_total_flops()


def saved_for_backward_bytes(call: Callable[[Inputs], Tensor], inputs: Inputs) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward."""
    storages: dict[int, int] = {}

    def keep(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = training_loss(call, inputs)
    loss.backward()
    return sum(storages.values())


def op_profile(
    call: Callable[[Inputs], Tensor], inputs: Inputs, top: int, passes: int = 3
) -> list[dict[str, Any]]:
    """The ``top`` operators by self CPU time over ``passes`` training passes (per pass)."""
    train_pass(call, inputs)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(passes):
            train_pass(call, inputs)
    events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [
        {
            "op": event.key,
            "calls_per_pass": event.count / passes,
            "ms_per_pass": event.self_cpu_time_total / 1000 / passes,
        }
        for event in events[:top]
    ]


def measure_pair(
    calls: dict[str, Callable[[Inputs], Tensor]],
    inputs: Inputs,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
) -> list[dict[str, Any]]:
    """One row per model: forward and training-pass seconds (timed in turn), the first call
    (compilation included), saved bytes and, on CUDA, peak memory."""
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    rows: dict[str, dict[str, Any]] = {name: {"model": name} for name in calls}
    with autocast:
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            train_pass(call, inputs)
            synchronize(device)
            rows[name]["first_call_s"] = time.perf_counter() - start
            rows[name]["saved_for_backward_mib"] = saved_for_backward_bytes(call, inputs) / 2**20
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                train_pass(call, inputs)
                rows[name]["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        forward = interleaved_medians(
            {n: _bound(forward_pass, c, inputs) for n, c in calls.items()}, device, repeats
        )
        train = interleaved_medians(
            {n: _bound(train_pass, c, inputs) for n, c in calls.items()}, device, repeats
        )
    for name, row in rows.items():
        row.update(forward_s=forward[name], train_s=train[name])
    return list(rows.values())


def _bound(
    run: Callable[[Callable[[Inputs], Tensor], Inputs], None],
    call: Callable[[Inputs], Tensor],
    inputs: Inputs,
) -> Callable[[], None]:
    return lambda: run(call, inputs)


def compare_size(
    size_name: str,
    modes: list[str],
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    peak_tflops: float | None,
    profile_top: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for both models in every mode at one size, with the output difference and FLOPs,
    and (``profile_top`` > 0) :func:`op_profile` of mmflow's eager training pass."""
    size = SIZES[size_name]
    ours, sd3 = (model.to(device) for model in build_pair(size))
    inputs = make_inputs(size, device)
    with torch.no_grad():
        difference = (mmdit_call(ours)(inputs) - sd3_call(sd3)(inputs)).abs().max().item()
    flops = training_flops(mmdit_call(ours), inputs)
    parameters = sum(p.numel() for p in ours.parameters())
    rows = []
    for mode in modes:
        calls = {
            "mmflow": mmdit_call(_prepared(ours, mode)),
            "diffusers": sd3_call(_prepared(sd3, mode)),
        }
        for row in measure_pair(calls, inputs, device, dtype, repeats):
            row.update(size=size_name, mode=mode, parameters=parameters, train_flops=flops)
            row["max_output_difference"] = difference
            row["train_tflops_per_s"] = flops / row["train_s"] / 1e12
            if peak_tflops:
                row["model_flop_utilisation"] = row["train_tflops_per_s"] / peak_tflops
            rows.append(row)
    _set_checkpointing(ours, False)
    profile = op_profile(mmdit_call(ours), inputs, profile_top) if profile_top else []
    return rows, profile


def _prepared(model: nn.Module, mode: str) -> nn.Module:
    _set_checkpointing(model, mode == "checkpointing")
    return torch.compile(model) if mode == "compile" else model


def _set_checkpointing(model: nn.Module, enabled: bool) -> None:
    if hasattr(model, "enable_gradient_checkpointing"):  # diffusers
        if enabled:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()
    else:
        model.gradient_checkpointing = enabled


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table with mmflow's time as a fraction of diffusers' per size and mode."""
    lines = [
        "| size | mode | model | forward ms | train ms | train / diffusers | TFLOP/s "
        + "| saved for backward MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reference = {(r["size"], r["mode"]): r["train_s"] for r in rows if r["model"] == "diffusers"}
    for r in rows:
        ratio = r["train_s"] / reference[(r["size"], r["mode"])]
        lines.append(
            f"| {r['size']} | {r['mode']} | {r['model']} | {1000 * r['forward_s']:.1f} | "
            f"{1000 * r['train_s']:.1f} | {ratio:.2f} | {r['train_tflops_per_s']:.3f} | "
            f"{r['saved_for_backward_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["cpu"], choices=sorted(SIZES))
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=MODES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument(
        "--profile", type=int, default=0, help="print mmflow's top N operators (eager, train)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows, profiles = [], {}
    for size in args.sizes:
        size_rows, profile = compare_size(
            size, args.modes, device, dtype, args.repeats, args.peak_tflops, args.profile
        )
        rows += size_rows
        print(format_table(rows), flush=True)
        if profile:
            profiles[size] = profile
            for entry in profile:
                print(
                    f"{entry['ms_per_pass']:8.2f} ms {entry['calls_per_pass']:6.0f}  {entry['op']}"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "rows": rows,
        "profiles": profiles,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
