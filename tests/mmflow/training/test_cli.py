"""``MMFlowCLI``: ``--trainer.default_root_dir`` moves every output of every recipe."""

import warnings

import pytest
import yaml

from mmflow.training.cli import MMFlowCLI

from ..test_cli import ROOT

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


class _ParsedConfig(Exception):
    """Carries the config as the CLI would instantiate it, then stops."""


class _StopBeforeBuilding(MMFlowCLI):
    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        raise _ParsedConfig(self.config[self.subcommand])


def config_as_built(*args: str):
    with pytest.raises(_ParsedConfig) as stopped, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        _StopBeforeBuilding(args=["fit", *args])
    return stopped.value.args[0]


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_default_root_dir_moves_every_output_of_a_recipe(recipe, tmp_path):
    old = yaml.safe_load(recipe.read_text())["trainer"]["default_root_dir"].rstrip("/")
    config = config_as_built(
        "--config", str(recipe), f"--trainer.default_root_dir={tmp_path}/run"
    ).as_dict()
    config.pop("config")
    left = [s for s in strings(config) if s == old or s.startswith(f"{old}/")]
    assert not left, f"{recipe.name}: outputs still under {old}: {left}"
    moved = [s for s in strings(config) if s.startswith(f"{tmp_path}/run")]
    assert len(moved) >= 2, moved  # at least the root and the checkpoint folder


def test_outputs_stay_where_the_recipe_says_without_the_override():
    recipe = ROOT / "recipes" / "image" / "mnist.yaml"
    config = config_as_built("--config", str(recipe))
    assert config.trainer.callbacks[0].init_args.dirpath == "outputs/mnist/checkpoints"
