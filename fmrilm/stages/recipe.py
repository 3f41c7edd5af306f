"""The recipe protocol every training stage follows (torchtune's recipes): setup → train → save → cleanup.

A training stage is a :class:`Recipe` named by its role (``tokenizer``, ``backbone``, ``joint``,
``instruct``), and :func:`run_recipe` is the one skeleton that drives each of them, in one process
or on every rank the ``deepspeed`` launcher starts (``fmrilm train <stage>`` launches any of them):

1. an export whose name is decided before any work is kept when it is finished, unless forced;
2. :meth:`Recipe.prepare` (an LM stage joins the process group and, forced, clears the old run);
3. :meth:`Recipe.setup` builds the model, the data and the engine;
4. :meth:`Recipe.train` takes the optimizer steps, resuming from the latest checkpoint;
5. :meth:`Recipe.save` writes the export (on the main rank) and returns its directory;
6. :meth:`Recipe.cleanup` ends the engine, also when training or saving raised.

Each stage module keeps ``run(cfg)``, the entry point of the pipeline and the tests, as
``run_recipe(<Stage>Recipe(cfg))``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from fmrilm.stages import lm_common


class Recipe(ABC):
    """One training stage: subclasses name its role and implement setup, train and save.

    Parameters
    ----------
    cfg : dataclass
        The stage's typed config.
    export_dir : Path or None
        The export this run writes, when its name is decided before any work: a finished one is
        kept unless `force`. None for a stage that names its output after what it trained on (the
        tokenizer), which always runs.
    force : bool
        Redo a finished export.

    Attributes
    ----------
    name : str
        The stage's role, as ``fmrilm train <name>`` calls it.
    engine : TrainEngine or None
        Built by :meth:`setup`; :meth:`cleanup` ends it.
    """

    name: str = ""

    def __init__(self, cfg, export_dir: Path | None = None, force: bool = False):
        self.cfg = cfg
        self.export_dir = export_dir
        self.force = force
        self.engine = None

    def prepare(self) -> None:  # noqa: B027 (an optional hook: the tokenizer needs nothing before setup)
        """Before :meth:`setup`, on every rank; nothing by default."""

    @abstractmethod
    def setup(self) -> None:
        """Build model, data and ``self.engine``."""

    @abstractmethod
    def train(self) -> int:
        """Optimizer steps up to ``engine.max_steps``; returns the last step."""

    @abstractmethod
    def save(self, step: int) -> Path | None:
        """Write the export after `step` steps (collective); its directory on the main rank."""

    def cleanup(self) -> None:
        """End the engine (collective: a launcher's process group is torn down)."""
        if self.engine is not None:
            self.engine.cleanup()


def run_recipe(recipe: Recipe) -> Path | None:
    """Run a stage: skip a finished export unless forced, else prepare → setup → train → save, and
    cleanup once setup has succeeded, whatever happens after it.

    Returns
    -------
    Path or None
        The export directory (on the main rank; what :meth:`Recipe.save` returns elsewhere).
    """
    if recipe.export_dir is not None and lm_common.skip_finished(recipe.export_dir, recipe.force):
        return recipe.export_dir
    recipe.prepare()
    # a setup that raised has no engine to end, and its ranks may be out of step for a barrier
    recipe.setup()
    try:
        return recipe.save(recipe.train())
    finally:
        recipe.cleanup()


class LMRecipe(Recipe):
    """A language-model stage (backbone, joint, instruct): export and training directories named
    before any work, ``force`` from its config, and the shared :func:`~fmrilm.stages.lm_common.train_loop`.

    :meth:`setup` fills ``engine``, ``data`` (the :class:`~fmrilm.stages.lm_common.TrainingSet`),
    ``skipped`` (the corpus's skip counter), ``pad_id`` and ``max_length``.
    """

    def __init__(self, cfg, export_dir: Path, train_dir: Path):
        super().__init__(cfg, export_dir, cfg.force)
        self.train_dir = train_dir
        self.data: lm_common.TrainingSet | None = None
        self.skipped = None
        self.pad_id: int | None = None
        self.max_length: int | None = None

    def prepare(self) -> None:
        lm_common.prepare_run(self.train_dir, self.export_dir, self.force)

    def train(self) -> int:
        """Up to ``engine.max_steps``, resuming; corrupt shards skipped are logged with the losses."""
        return lm_common.train_loop(self.engine, self.data, self.pad_id, self.max_length, self.name, self.skipped)
