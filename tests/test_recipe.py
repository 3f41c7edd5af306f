"""The recipe protocol of the training stages and the shared --config/--set/--force arguments."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

import pytest

from fmrilm.config import add_config_args, config_from_args
from fmrilm.stages import lm_common
from fmrilm.stages.commands import STAGE_MODULES
from fmrilm.stages.recipe import Recipe, run_recipe


class Recorded(Recipe):
    """A recipe that records the driver's calls; `fail` names the step that raises."""

    name = "recorded"

    def __init__(self, export_dir=None, force=False, fail=None):
        super().__init__(cfg=None, export_dir=export_dir, force=force)
        self.calls, self.fail = [], fail

    def _call(self, step):
        self.calls.append(step)
        if step == self.fail:
            raise RuntimeError(f"{step} failed")

    def prepare(self):
        self._call("prepare")

    def setup(self):
        self._call("setup")

    def train(self):
        self._call("train")
        return 7

    def save(self, step):
        self._call(f"save {step}")
        return "the export"

    def cleanup(self):
        self._call("cleanup")


def test_driver_runs_the_steps_in_order():
    recipe = Recorded()
    assert run_recipe(recipe) == "the export"
    assert recipe.calls == ["prepare", "setup", "train", "save 7", "cleanup"]


@pytest.mark.parametrize(("fail", "calls"), [("train", ["prepare", "setup", "train", "cleanup"]),
                                             ("save 7", ["prepare", "setup", "train", "save 7", "cleanup"])])
def test_cleanup_runs_when_training_or_saving_raises(fail, calls):
    recipe = Recorded(fail=fail)
    with pytest.raises(RuntimeError, match="failed"):
        run_recipe(recipe)
    assert recipe.calls == calls


def test_a_failed_setup_has_nothing_to_clean_up():
    recipe = Recorded(fail="setup")
    with pytest.raises(RuntimeError, match="setup failed"):
        run_recipe(recipe)
    assert recipe.calls == ["prepare", "setup"]


def test_a_finished_export_is_skipped_unless_forced(tmp_path, capsys):
    export = tmp_path / "stage2_joint-x"
    export.mkdir()
    (export / lm_common.STAGE_FILE).write_text("{}")
    kept = Recorded(export_dir=export)
    assert run_recipe(kept) == export and kept.calls == []
    assert "already finished" in capsys.readouterr().out
    forced = Recorded(export_dir=export, force=True)
    assert run_recipe(forced) == "the export" and forced.calls[0] == "prepare"
    unfinished = Recorded(export_dir=tmp_path / "stage2_joint-y")
    assert run_recipe(unfinished) == "the export"


def test_every_training_stage_is_a_recipe_named_by_its_role():
    for role, module in STAGE_MODULES.items():
        found = [v for v in vars(importlib.import_module(module)).values()
                 if isinstance(v, type) and issubclass(v, Recipe) and v.__module__ == module]
        assert [r.name for r in found] == [role]


@dataclass
class Toy:
    name: str = "toy"
    a: int = 0
    b: int = 0


def test_config_arguments_parse_into_the_config(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("name: from-file\na: 5\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser, "toy_demo", force_help="replace an existing output")
    args = parser.parse_args(["--config", str(path), "--set", "a=1", "b=2", "--force"])
    assert args.force is True
    assert config_from_args(Toy, args) == Toy(name="from-file", a=1, b=2)
    # a command's own overrides come first: --set has the last word
    assert config_from_args(Toy, args, ["a=9", "name=given"]) == Toy(name="given", a=1, b=2)
    defaults = parser.parse_args([])
    assert (defaults.config, defaults.set, defaults.force) == ("toy_demo", [], False)
    assert "(default: toy_demo)" in parser.format_help()


def test_no_force_flag_without_its_help():
    parser = argparse.ArgumentParser()
    add_config_args(parser, None)
    assert parser.parse_args([]).config is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--force"])
