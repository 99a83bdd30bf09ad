"""The ``mmflow`` command.

``mmflow fit | validate | test | predict --config recipe.yaml`` is a ``LightningCLI`` over
:class:`mmflow.training.FlowMatching` and any ``LightningDataModule`` (``data.class_path``);
``--print_config`` shows every setting. Six more subcommands:

- ``mmflow sample``: a checkpoint or a pretrained folder -> media files;
- ``mmflow evaluate``: validate a checkpoint on a recipe's data and write the metrics as JSON;
- ``mmflow export``: a checkpoint -> a pretrained folder (safetensors + JSON config);
- ``mmflow couplings``: a teacher's (noise, sample, condition) shards for reflow and
  distillation (:mod:`mmflow.fewstep.couplings`);
- ``mmflow info``: every sampling method with its NFE rule, the time grids, time
  distributions and interpolants, by the names recipes use;
- ``mmflow benchmark NAME``: a checkout's benchmark script, ``python -m benchmarks.NAME``
  (``mmflow benchmark samplers``, ``mmflow benchmark fewstep``).

Lightning is imported only by the subcommands that train or validate, so the others start fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveInt
from pytorch_lightning.utilities import rank_zero_only

import mmflow
from mmflow.faults import TrainingFault
from mmflow.hub import PretrainedFlow, load_flow, pretrained_from_checkpoint, save_pretrained
from mmflow.modality import condition_rows, to_device

# Lightning's CLI still calls jsonargparse APIs deprecated in 4.49; users cannot act on that.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")


def sampling_methods_table() -> str:
    """Every registered sampling method by kind: name, order, description and NFE rule."""
    from mmflow.sampling import KINDS, SAMPLERS

    width = max(len(name) for name in SAMPLERS) + 2
    lines = []
    for kind, title in KINDS.items():
        specs = [spec for spec in SAMPLERS.values() if spec.kind == kind]
        if not specs:
            continue
        lines.append(f"  {title}:")
        for spec in specs:
            order = f", order {spec.order}" if kind in ("ode", "multistep") else ""
            lines.append(f"    {spec.name:<{width}}{spec.description}; NFE: {spec.nfe_rule}{order}")
    return "\n".join(lines)


def _info(_: Sequence[str]) -> int:
    from mmflow.interpolants import PATHS
    from mmflow.timesteps import GRID_NAMES, TIME_DISTRIBUTIONS

    print(f"mmflow {mmflow.__version__}")
    print("convention: t=0 noise, t=1 data; networks predict the velocity")
    print("sampling methods, sample(model, x0, method, nfe, grid, solver_options=...):")
    print(sampling_methods_table())
    print(f"time grids: {', '.join(GRID_NAMES)}")
    print(f"time distributions: {', '.join(TIME_DISTRIBUTIONS)}")
    print(f"interpolants: {', '.join(PATHS)}")
    return 0


def _sample_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmflow sample", description="Generate media from a trained flow.")
    parser.add_argument("--checkpoint", type=str | None, default=None, help="Lightning checkpoint")
    parser.add_argument(
        "--pretrained", type=str | None, default=None, help="folder from `mmflow export`"
    )
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--num_samples", type=PositiveInt, default=64)
    parser.add_argument("--batch_size", type=PositiveInt, default=64)
    parser.add_argument("--sampler", type=str | None, default=None, help="default: the model's")
    parser.add_argument("--nfe", type=PositiveInt | None, default=None, help="default: the model's")
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
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    noise = flow.adapter.source.from_noise(eps, cond)
    samples, total_nfe = [], 0
    for start in range(0, num_samples, batch_size):
        stop = start + batch_size
        part = condition_rows(cond, start, stop)
        result = flow.generate(
            part, noise[start:stop], sampler=sampler, nfe=nfe, cfg_scale=cfg_scale
        )
        if not bool(torch.isfinite(result.samples).all()):
            raise TrainingFault(
                f"samples {start}..{start + len(result.samples) - 1} hold NaN or infinite "
                "values: the flow diverges under this sampler and NFE; nothing was written"
            )
        samples.append(result.samples)
        total_nfe += result.nfe
    return flow.adapter.decode(torch.cat(samples), cond), total_nfe


def output_folder(path: str, option: str = "--out") -> Path:
    """``path`` as a folder to write into; an existing file there is a user's error."""
    folder = Path(path)
    if folder.is_file():
        raise ValueError(f"{option} {folder}: is a file; give a folder to write into")
    return folder


def _sample(argv: Sequence[str]) -> int:
    args = _sample_parser().parse_args(list(argv))
    out = output_folder(args.out)
    flow = load_flow(args.checkpoint, args.pretrained, args.device)
    media, nfe = sample_media(
        flow, args.num_samples, args.batch_size, args.seed, args.sampler, args.nfe, args.cfg_scale
    )
    written = flow.adapter.save_media(media, out, "samples")
    for path in written:
        print(path)
    batches = -(-args.num_samples // args.batch_size)
    print(f"{args.num_samples} samples in {batches} batches, {nfe // batches} counted NFE each")
    return 0


def _export(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="mmflow export", description="Checkpoint -> pretrained folder.")
    parser.add_argument("--checkpoint", type=str, required=True)
    parser.add_argument("--out", type=str, required=True)
    args = parser.parse_args(list(argv))
    out = output_folder(args.out)
    print(save_pretrained(pretrained_from_checkpoint(args.checkpoint), out))
    return 0


def _couplings(argv: Sequence[str]) -> int:
    """``mmflow couplings --checkpoint CKPT --data recipe.yaml --out DIR --num_samples N ...``."""
    from mmflow.data import load_datamodule
    from mmflow.fewstep.couplings import write_couplings

    parser = ArgumentParser(
        prog="mmflow couplings",
        description="Run a teacher's sampler over many noises and store the (noise, sample, "
        "condition) triples in shards; a killed run resumes where it stopped.",
    )
    parser.add_argument("--checkpoint", type=str | None, default=None, help="Lightning checkpoint")
    parser.add_argument(
        "--pretrained", type=str | None, default=None, help="`mmflow export` folder"
    )
    parser.add_argument(
        "--data", type=str, required=True, help="recipe whose `data:` gives conditions"
    )
    parser.add_argument("--out", type=str, required=True, help="folder of the shards")
    parser.add_argument("--num_samples", type=PositiveInt, required=True)
    parser.add_argument("--shard_size", type=PositiveInt, default=500)
    parser.add_argument("--batch_size", type=PositiveInt, default=250)
    parser.add_argument("--sampler", type=str | None, default=None, help="default: the teacher's")
    parser.add_argument(
        "--nfe", type=PositiveInt | None, default=None, help="default: the teacher's"
    )
    parser.add_argument(
        "--cfg_scale", type=float | None, default=None, help="default: the teacher's"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--process_index", type=NonNegativeInt, default=0)
    parser.add_argument("--num_processes", type=PositiveInt, default=1)
    parser.add_argument("--accelerator", type=str, default="cpu")
    parser.add_argument("--devices", type=PositiveInt, default=1, help="Lightning deals shards out")
    args = parser.parse_args(list(argv))
    output_folder(args.out)
    flow = load_flow(args.checkpoint, args.pretrained)
    datamodule = load_datamodule(args.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    examples = getattr(datamodule, "datasets", {}).get("train")
    if examples is None:
        raise ValueError(
            f"{args.data}: its datamodule has no `datasets['train']` to take conditions from"
        )
    written = write_couplings(
        flow,
        args.checkpoint or args.pretrained,
        examples,
        args.out,
        num_samples=args.num_samples,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        sampler=args.sampler or flow.defaults.sampler,
        nfe=args.nfe or flow.defaults.nfe,
        cfg_scale=flow.defaults.cfg_scale if args.cfg_scale is None else args.cfg_scale,
        seed=args.seed,
        process_index=args.process_index,
        num_processes=args.num_processes,
        trainer_kwargs={"accelerator": args.accelerator, "devices": args.devices},
    )
    print(f"{len(written)} shards written to {args.out}")
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


def _benchmark(argv: Sequence[str]) -> int:
    """``mmflow benchmark NAME ARGS``: the checkout's ``python -m benchmarks.NAME ARGS``.

    The benchmark scripts are not part of the installed package (they plot, and compare with
    diffusers); they are found from the current directory, the repository root."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: mmflow benchmark NAME [ARGS]  (runs python -m benchmarks.NAME from a checkout)"
        )
        return 0
    name = argv[0]
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as error:
        if error.name not in ("benchmarks", f"benchmarks.{name}"):
            raise
        raise ValueError(
            f"no benchmark `{name}` here: run from the repository root, where "
            f"benchmarks/{name}.py lives"
        ) from None
    return module.main(list(argv[1:]))


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "sample": _sample,
    "evaluate": _evaluate,
    "export": _export,
    "couplings": _couplings,
    "benchmark": _benchmark,
    "info": _info,
}


SIGTERM_EXIT_STATUS = 143
"""128 + SIGTERM, the status a shell reports for a process ended by SIGTERM."""

USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError)


def run_command(name: str, command: Callable[[], int]) -> int:
    """Run ``command``; an error a user causes (a missing or corrupt file, a bad value) ends in
    one line naming the file or key and exit status 2, a training fault (a non-finite loss,
    :class:`~mmflow.faults.TrainingFault`) in one line naming the step and exit
    status 1 (printed by the first of data-parallel processes, which all stop together).
    ``MMFLOW_DEBUG=1`` shows the traceback."""
    try:
        return command()
    except (*USER_ERRORS, TrainingFault) as error:
        if os.environ.get("MMFLOW_DEBUG"):
            raise
        fault = isinstance(error, TrainingFault)
        if not fault or rank_zero_only.rank == 0:
            print(f"{name}: error: {_root_cause(error)}", file=sys.stderr)
        return 1 if fault else 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (2 for a user's error)."""
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"mmflow {mmflow.__version__}")
        return 0
    command = argv[0] if argv else "mmflow"
    if command in COMMANDS:
        return run_command(f"mmflow {command}", lambda: COMMANDS[command](argv[1:]))

    def fit_or_validate() -> int:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        from mmflow.training.cli import MMFlowCLI

        try:
            MMFlowCLI(args=None if from_console else argv)
        except SIGTERMException:
            print(
                f"mmflow {command}: stopped by SIGTERM; the last checkpoint holds the last "
                "step (resume with --ckpt_path last)",
                file=sys.stderr,
            )
            return SIGTERM_EXIT_STATUS
        return 0

    return run_command(f"mmflow {command}", fit_or_validate)


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
