"""The ``mmflow`` command.

``mmflow fit | validate | test | predict --config recipe.yaml`` is a ``LightningCLI`` over
:class:`mmflow.training.FlowMatching` and any ``LightningDataModule`` (``data.class_path``);
``--print_config`` shows every setting. Four more subcommands:

- ``mmflow sample``: a checkpoint or a pretrained folder -> media files;
- ``mmflow evaluate``: validate a checkpoint on a recipe's data and write the metrics as JSON;
- ``mmflow export``: a checkpoint -> a pretrained folder (safetensors + JSON config);
- ``mmflow benchmark samplers``: quality against counted NFE for several samplers;
- ``mmflow info``: the samplers, time distributions and interpolants, by the names recipes use.

Lightning is imported only by the subcommands that train or validate, so the others start fast.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

import mmflow
from mmflow.hub import PretrainedFlow, from_pretrained, pretrained_from_checkpoint, save_pretrained
from mmflow.modality import to_device

# Lightning's CLI still calls jsonargparse APIs deprecated in 4.49; users cannot act on that.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")


def _info(_: Sequence[str]) -> int:
    from mmflow.interpolants import PATHS
    from mmflow.sampling import SAMPLERS
    from mmflow.timesteps import GRID_NAMES, TIME_DISTRIBUTIONS

    samplers = ", ".join(
        f"{s.name} (order {s.order}, {s.evals_per_step} NFE/step)" for s in SAMPLERS.values()
    )
    print(f"mmflow {mmflow.__version__}")
    print("convention: t=0 noise, t=1 data; networks predict the velocity")
    print(f"samplers: {samplers}")
    print(f"time grids: {', '.join(GRID_NAMES)}")
    print(f"time distributions: {', '.join(TIME_DISTRIBUTIONS)}")
    print(f"interpolants: {', '.join(PATHS)}")
    return 0


def _load_flow(checkpoint: str | None, pretrained: str | None, device: str) -> PretrainedFlow:
    if (checkpoint is None) == (pretrained is None):
        raise ValueError("give exactly one of --checkpoint and --pretrained")
    if checkpoint is not None:
        return pretrained_from_checkpoint(checkpoint, map_location=device)
    return from_pretrained(pretrained, map_location=device)


def _sample_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmflow sample", description="Generate media from a trained flow.")
    parser.add_argument("--checkpoint", type=str | None, default=None, help="Lightning checkpoint")
    parser.add_argument(
        "--pretrained", type=str | None, default=None, help="folder from `mmflow export`"
    )
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--sampler", type=str | None, default=None, help="default: the model's")
    parser.add_argument("--nfe", type=int | None, default=None, help="default: the model's")
    parser.add_argument("--cfg_scale", type=float | None, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=str, default="cpu")
    return parser


def sample_media(
    flow: PretrainedFlow,
    num_samples: int,
    batch_size: int,
    seed: int,
    sampler: str | None = None,
    nfe: int | None = None,
    cfg_scale: float | None = None,
) -> tuple[Any, int]:
    """Generate ``num_samples`` with the adapter's own conditions; returns (media, total NFE)."""
    shape, cond = flow.adapter.sample_conditions(num_samples)
    device = next(flow.network.parameters()).device
    cond = to_device(cond, device)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    samples, total_nfe = [], 0
    for start in range(0, num_samples, batch_size):
        chunk = slice(start, start + batch_size)
        part = {k: v[chunk] if torch.is_tensor(v) else v for k, v in cond.items()}
        result = flow.generate(part, noise[chunk], sampler=sampler, nfe=nfe, cfg_scale=cfg_scale)
        samples.append(result.samples)
        total_nfe += result.nfe
    return flow.adapter.decode(torch.cat(samples), cond), total_nfe


def _sample(argv: Sequence[str]) -> int:
    args = _sample_parser().parse_args(list(argv))
    flow = _load_flow(args.checkpoint, args.pretrained, args.device)
    media, nfe = sample_media(
        flow, args.num_samples, args.batch_size, args.seed, args.sampler, args.nfe, args.cfg_scale
    )
    written = flow.adapter.save_media(media, Path(args.out), "samples")
    for path in written:
        print(path)
    batches = -(-args.num_samples // args.batch_size)
    print(f"{args.num_samples} samples in {batches} batches, {nfe // batches} counted NFE each")
    return 0


def _benchmark_parser() -> ArgumentParser:
    from mmflow.benchmark import (
        DEFAULT_NFES,
        DEFAULT_TOLERANCES,
        FIELD_SHIFTS,
        OPTIMISED_EVALS,
        OPTIMISED_NFES,
        OPTIMISED_SAMPLES,
    )
    from mmflow.sampling.grid_search import OBJECTIVES

    parser = ArgumentParser(
        prog="mmflow benchmark samplers",
        description="Quality against counted NFE for mmflow's samplers and diffusers' schedulers, "
        "on a trained flow (--config with --checkpoint or --pretrained) or an analytic field "
        "(--field gmm16, endpoint error against a tight reference solution).",
    )
    parser.add_argument("--checkpoint", type=str | None, default=None, help="Lightning checkpoint")
    parser.add_argument(
        "--pretrained", type=str | None, default=None, help="folder from `mmflow export`"
    )
    parser.add_argument(
        "--config", type=str | None, default=None, help="recipe whose `data` gives the real batches"
    )
    parser.add_argument(
        "--field", type=str | None, default=None, help="analytic field instead of a model: gmm16"
    )
    parser.add_argument("--split", type=str, default="test", help="test or val")
    parser.add_argument(
        "--samplers",
        type=list[str] | str,
        default=["all"],
        help="registered samplers and adaptive methods (dopri5); all: every ODE sampler + dopri5",
    )
    parser.add_argument(
        "--diffusers",
        type=list[str] | str,
        default=["all"],
        help="diffusers schedulers run on the same model (all, or [] for none; needs `pip "
        "install diffusers`): flow_euler, dpmpp_2m, dpmpp_2m_heun, dpmpp_3m, "
        "unipc_{bh1,bh2}_{1,2,3}",
    )
    parser.add_argument("--nfe", type=list[int], default=list(DEFAULT_NFES))
    parser.add_argument(
        "--tolerances",
        type=list[float],
        default=list(DEFAULT_TOLERANCES),
        help="adaptive rtol=atol",
    )
    parser.add_argument(
        "--shifts", type=list[float], default=list(FIELD_SHIFTS), help="--field: shifted grids"
    )
    parser.add_argument(
        "--optimised",
        type=list[str],
        default=[],
        help=f"--field: samplers that also run on time grids fitted to them, on "
        f"{OPTIMISED_SAMPLES} other noises (e.g. [unipc_bh1_3,unipc_bh2_2])",
    )
    parser.add_argument(
        "--optimised_nfe", type=list[int], default=list(OPTIMISED_NFES), help="--field: their NFE"
    )
    parser.add_argument(
        "--optimised_evals",
        type=int,
        default=OPTIMISED_EVALS,
        help="--field: most evaluations of the fit's objective per grid",
    )
    parser.add_argument(
        "--optimised_objective",
        type=str,
        default="mse",
        help=f"--field: the error the grids are fitted to, one of {', '.join(OBJECTIVES)}",
    )
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--cfg_scale", type=float | None, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=str, default="cpu")
    parser.add_argument("--out", type=str, required=True)
    return parser


def _benchmark(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] != "samplers":
        raise ValueError(
            "usage: mmflow benchmark samplers --checkpoint CKPT --config RECIPE --out DIR "
            "| --field gmm16 --out DIR"
        )
    args = _benchmark_parser().parse_args(argv[1:])
    args.samplers, args.diffusers = _names(args.samplers), _names(args.diffusers)
    from mmflow.sampling.diffusers_schedulers import DiffusersMissingError

    try:
        return _benchmark_field(args) if args.field is not None else _benchmark_flow(args)
    except DiffusersMissingError as error:
        raise ValueError(f"{error} (or pass --diffusers [] to leave diffusers out)") from None


def _names(value: str | list[str]) -> list[str]:
    """``--samplers all`` or ``--samplers euler`` as a one-name list; a list as given."""
    return [value] if isinstance(value, str) else list(value)


def _benchmark_field(args: Any) -> int:
    from mmflow.benchmark import error_table, field_benchmark, write_report

    if args.checkpoint or args.pretrained or args.config:
        raise ValueError("--field runs on an analytic field: leave out --checkpoint/--config")
    result = field_benchmark(
        args.field,
        args.num_samples,
        args.samplers,
        args.diffusers,
        args.nfe,
        args.shifts,
        args.tolerances,
        args.seed,
        optimised_samplers=args.optimised,
        optimised_nfes=args.optimised_nfe,
        optimised_evals=args.optimised_evals,
        optimised_objective=args.optimised_objective,
    )
    print(error_table(result.rows))
    for path in write_report(result.rows, Path(args.out), result.context, envelope=True):
        print(path)
    return 0


def _benchmark_flow(args: Any) -> int:
    if args.optimised:
        raise ValueError("--optimised fits grids to an analytic field: use it with --field")
    from mmflow.benchmark import sampler_sweep, write_report
    from mmflow.data import load_datamodule, take_batches

    if args.config is None:
        raise ValueError("--config (the recipe whose data gives real batches) is required")
    flow = _load_flow(args.checkpoint, args.pretrained, args.device)
    datamodule = load_datamodule(args.config)
    batches = take_batches(datamodule, args.split, args.num_samples)
    out = Path(args.out)
    rows = sampler_sweep(
        flow,
        batches,
        args.samplers,
        args.nfe,
        args.cfg_scale,
        args.seed,
        out / "samples",
        schedulers=args.diffusers,
        tolerances=args.tolerances,
    )
    context = {
        "source": args.checkpoint or args.pretrained,
        "data": f"{type(datamodule).__name__} {args.split} split, {args.num_samples} samples",
        "metric_names": flow.adapter.metric_names(),
    }
    for path in write_report(rows, out, context):
        print(path)
    return 0


def _export(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="mmflow export", description="Checkpoint -> pretrained folder.")
    parser.add_argument("--checkpoint", type=str, required=True)
    parser.add_argument("--out", type=str, required=True)
    args = parser.parse_args(list(argv))
    print(save_pretrained(pretrained_from_checkpoint(args.checkpoint), args.out))
    return 0


def _evaluate(argv: Sequence[str]) -> int:
    """``mmflow evaluate --out metrics.json [--split val|test] --config recipe.yaml --ckpt_path X``.

    ``--split val`` (default) runs the validation loop (its ``limit_val_batches`` and
    ``val_sample_batches`` apply); ``--split test`` runs the test loop, which generates and
    scores every test batch. Other options are the recipe's overrides.
    """
    from mmflow.training.cli import MMFlowCLI

    argv = list(argv)
    out = _pop_option(argv, "--out") or "metrics.json"
    split = _pop_option(argv, "--split") or "val"
    if split not in ("val", "test"):
        raise ValueError(f"--split must be val or test, got {split!r}")
    command = "validate" if split == "val" else "test"
    with warnings.catch_warnings():  # the arguments are the command line, rewritten on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = MMFlowCLI(args=[command, *argv])
    metrics = {k: float(v) for k, v in sorted(cli.trainer.callback_metrics.items())}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"metrics written to {out}")
    return 0


def _pop_option(argv: list[str], name: str) -> str | None:
    for i, item in enumerate(argv):
        if item == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if item.startswith(f"{name}="):
            del argv[i]
            return item.split("=", 1)[1]
    return None


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "sample": _sample,
    "evaluate": _evaluate,
    "export": _export,
    "benchmark": _benchmark,
    "info": _info,
}


USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    Errors a user causes (a missing or corrupt file, a bad value) end in one line naming the
    file or key and exit status 2; set ``MMFLOW_DEBUG=1`` to see the traceback instead.
    """
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"mmflow {mmflow.__version__}")
        return 0
    command = argv[0] if argv else "mmflow"
    try:
        if command in COMMANDS:
            return COMMANDS[command](argv[1:])
        from mmflow.training.cli import MMFlowCLI

        MMFlowCLI(args=None if from_console else argv)
        return 0
    except USER_ERRORS as error:
        if os.environ.get("MMFLOW_DEBUG"):
            raise
        print(f"mmflow {command}: error: {_root_cause(error)}", file=sys.stderr)
        return 2


def _root_cause(error: BaseException) -> BaseException:
    """The innermost user error behind ``error``.

    jsonargparse wraps an error raised while building a class (e.g. a missing data file) in a
    "Does not validate against any of the Union subtypes" error; the cause is what to report.
    """
    while isinstance(error.__cause__, USER_ERRORS):
        error = error.__cause__
    return error


if __name__ == "__main__":
    sys.exit(main())
