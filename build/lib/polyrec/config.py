"""Typed experiment configuration, loadable from YAML with ``key=value`` overrides."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from polyrec.errors import ConfigError
from polyrec.weighting import build_weighting


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FeatureSpec(_Strict):
    """One input feature, read from the user or item table.

    kinds: ``categorical`` (vocabulary with out-of-vocabulary and missing indices),
    ``multi`` (several categorical values in one cell, split by ``sep``, mean-pooled),
    ``bucket`` (numeric cut at ``boundaries``, missing values get their own bucket),
    ``numeric`` (standardized with training statistics, missing values become the mean).
    """

    name: str
    source: Literal["user", "item"]
    kind: Literal["categorical", "multi", "bucket", "numeric"] = "categorical"
    column: str | None = None
    sep: str = "|"
    boundaries: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.kind == "bucket" and not self.boundaries:
            raise ValueError(f"feature '{self.name}': kind 'bucket' needs 'boundaries'")
        if self.boundaries and sorted(self.boundaries) != self.boundaries:
            raise ValueError(f"feature '{self.name}': 'boundaries' must be increasing")
        return self

    @property
    def col(self) -> str:
        return self.column or self.name


class TaskSpec(_Strict):
    """A task is data: which label column, what kind of target, how it is scored.

    ``depends_on`` names a binary parent task whose positive rows are the only rows
    where this task's label exists (ESMM's "like happens after watch"): the loss is
    masked to those rows, and for a binary child the entire-space probability
    p(parent)·p(child) is evaluated under ``joint_name``.
    """

    name: str
    label: str | None = None
    kind: Literal["binary", "regression"]
    loss: Literal["bce", "mse", "huber"] | None = None
    weight: float = Field(1.0, ge=0)
    depends_on: str | None = None
    joint_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.loss is None:
            self.loss = "bce" if self.kind == "binary" else "mse"
        if (self.kind == "binary") != (self.loss == "bce"):
            raise ValueError(f"task '{self.name}': loss '{self.loss}' does not fit kind '{self.kind}'")
        return self

    @property
    def col(self) -> str:
        return self.label or self.name

    @property
    def joint(self) -> str:
        return self.joint_name or f"{self.depends_on}&{self.name}"


class SplitSpec(_Strict):
    """``temporal`` / ``leave_last_out``: per user by time; ``random``: per row; ``column``: given
    with the rows, in the column ``column`` (values train / valid / test), as separate files
    ``data.train``/``valid``/``test`` are. Given rows are taken as they are, repeated pairs
    (pre-drawn negatives) included."""

    method: Literal["temporal", "random", "leave_last_out", "column"] = "temporal"
    # > 0: early stopping and model selection read the validation split
    valid: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)
    column: str = "split"

    @property
    def given(self) -> bool:
        return self.method == "column"


class NegativeSpec(_Strict):
    """Sampled negatives: for each interaction, ``per_positive`` items the user never
    interacted with; ``labels`` gives their label values (other labels stay missing)."""

    per_positive: int = Field(4, ge=0)
    labels: dict[str, float] = Field(default_factory=dict)


class DataSpec(_Strict):
    """Where the rows come from: a built-in ``dataset``, one ``interactions`` file (split by
    ``split``), or the split given as files ``train``, ``valid``, ``test``. ``item_col: null``
    is a tabular dataset (one row per user, several labels, nothing to rank)."""

    dataset: str | None = None          # a built-in dataset (polyrec.data.sources.DATASETS)
    interactions: str | None = None
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    users: str | None = None
    items: str | None = None
    user_col: str = "user_id"
    item_col: str | None = "item_id"
    time_col: str | None = "timestamp"
    title_col: str | None = None
    verb: str = "interacted with"   # past tense, for explanations: "because you watched ..."
    cache_dir: str | None = None
    seed: int = 2024                   # the split, sampled negatives and cold items; train.seed is the model's
    split: SplitSpec = Field(default_factory=SplitSpec)
    negatives: NegativeSpec = Field(default_factory=NegativeSpec)
    # Cold-start evaluation: items held out of train and valid entirely (sampled negatives
    # included) and reported apart on test: a share of the catalog (seeded by data.seed), a list
    # of item ids, or a file of ids (one per line, or a CSV/Parquet with the item column).
    cold_items: Annotated[float, Field(ge=0, lt=1)] | list[str] | str = 0.0
    # Read data.train (a Parquet file or a folder of them) from disk in every epoch instead of
    # holding it in memory (polyrec.data.stream); valid and test stay in memory
    streaming: bool = False
    shuffle_buffer: int = Field(262_144, ge=0)   # streamed rows shuffled together (0: file order)

    @field_validator("cold_items", mode="before")
    @classmethod
    def _ids_as_text(cls, value):
        return [str(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        files = [self.train, self.valid, self.test]
        sources = [self.dataset is not None, self.interactions is not None, any(f is not None for f in files)]
        if sum(sources) != 1:
            raise ValueError("data: give exactly one of 'dataset' (built-in), 'interactions' (a CSV/Parquet path) "
                             "or 'train', 'valid' and 'test' (the split as files)")
        if sources[2]:
            if None in files:
                raise ValueError("data: a split given as files needs all three of 'train', 'valid' and 'test'")
            self.split = self.split.model_copy(update={"method": "column"})
        if self.split.method in ("temporal", "leave_last_out") and self.time_col is None:
            raise ValueError(f"data.split.method '{self.split.method}' orders each user's rows by time: it needs "
                             "data.time_col (or use random or column)")
        if self.item_col is None:
            if self.negatives.per_positive:
                raise ValueError("data.item_col is null (no items): there is nothing to sample negatives from; "
                                 "set data.negatives.per_positive: 0")
            if self.items is not None or self.title_col is not None or self.cold_items != 0.0:
                raise ValueError("data.item_col is null (no items): remove data.items, data.title_col and "
                                 "data.cold_items")
        if self.streaming and (not sources[2] or Path(self.train).suffix.lower() not in ("", ".parquet")):
            raise ValueError("data.streaming reads the training rows from Parquet: give the split as files, "
                             "data.train a .parquet file or a folder of them (and data.valid, data.test)")
        return self


class ModelSpec(_Strict):
    arch: Literal["single", "sharedbottom", "mmoe", "ple"] = "mmoe"
    esmm: bool = False
    # ESMM trains a dependent task only through p(parent)·p(child); this adds the plain
    # p(child | parent) loss on the parent's positive rows with this weight (0 = the paper's ESMM).
    esmm_conditional_weight: float = Field(0.0, ge=0)
    embed_dim: int = Field(16, gt=0)
    expert_dims: list[PositiveInt] = Field(default_factory=lambda: [128, 64], min_length=1)
    tower_dims: list[PositiveInt] = Field(default_factory=lambda: [32])
    n_experts: int = Field(4, gt=0)
    ple_levels: int = Field(2, gt=0)
    ple_shared_experts: int = Field(1, gt=0)
    ple_task_experts: int = Field(1, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # BatchNorm after each hidden layer (off: plain Linear → ReLU, as DeepCTR's DNN by default)
    batch_norm: bool = True
    # feature name -> probability of hiding its value (out-of-vocabulary) in a training row:
    # teaches the model to score new items/users from side features and text.
    oov_dropout: dict[str, float] = Field(default_factory=dict)


class TextSpec(_Strict):
    """Text encoded by a pretrained language model, fed to the shared layers next to the IDs.

    ``item_template`` / ``user_template`` are Python format strings over table columns
    (``"{title} ({year}). Genres: {genres}"``). ``user_history`` > 0 adds the mean text
    embedding of the user's last N items strictly before the row's time (train rows: of the train
    period; valid and test rows and recommendations: of the train and valid periods, as the
    ``history`` section reads them). ``mode``: ``frozen`` encodes
    once (cached on disk) and trains a small adaptor; ``lora`` fine-tunes the encoder's
    attention with LoRA adapters jointly with the tasks.
    """

    model: str = "all-MiniLM-L6-v2"
    item_template: str | None = None
    user_template: str | None = None
    user_history: int = Field(0, ge=0)
    mode: Literal["frozen", "lora"] = "frozen"
    dim: int = Field(32, gt=0)
    whiten_dim: int = Field(64, gt=0)
    adaptor_experts: int = Field(4, gt=0)
    lora_rank: int = Field(8, gt=0)
    batch_size: int = Field(64, gt=0)
    max_length: int = Field(64, gt=0)
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TextSpec:
        if not (self.item_template or self.user_template or self.user_history):
            raise ValueError("text: give item_template, user_template or user_history (or remove the text section)")
        if self.mode == "lora" and not self.item_template:
            raise ValueError("text.mode 'lora' fine-tunes the item text encoder: it needs text.item_template")
        if self.user_history and not self.item_template:
            raise ValueError("text.user_history pools item texts: it needs text.item_template")
        return self


class HistorySpec(_Strict):
    """The user's behaviour history as an input of every task: per row, the user's last ``length``
    interactions strictly before the row's time (train rows: train-period interactions; valid and
    test rows and recommendations: train and valid periods), each event an item (its categorical
    embeddings, and its language-model vector when the config has item text and ``text`` is on)
    plus what the user did (its task labels). ``encoder``: ``attention`` (the candidate attends
    over the events, DIN) or ``transformer`` (a small causal transformer over the sequence)."""

    length: int = Field(20, gt=0)
    encoder: Literal["attention", "transformer"] = "attention"
    layers: int = Field(1, gt=0)          # transformer layers
    heads: int = Field(2, gt=0)           # transformer attention heads; must divide model.embed_dim
    text: bool = True


class StatsSpec(_Strict):
    """Leak-free statistics as numeric inputs, from each row's user's and item's interactions
    strictly before the row's time (train rows: train period; valid and test rows: train and valid
    periods): the user's activity, the item's popularity (all time and in the last ``window`` time
    units of data.time_col, e.g. seconds) and the item's mean of every task label, shrunk toward
    the overall mean by ``shrinkage`` pseudo-interactions (see :func:`polyrec.data.history.statistics`)."""

    window: float = Field(30 * 24 * 3600, gt=0)
    shrinkage: float = Field(10.0, ge=0)


class ColdStartSpec(_Strict):
    """ID embeddings generated from content for items (and users) with few or no interactions
    (:mod:`polyrec.models.generator`): an entity with ``n`` training interactions uses
    ``a·own + (1 - a)·generated``, ``a = n / (n + blend)``. ``method``: ``dropout`` trains the
    generator with the tasks on the rows whose ID ``model.oov_dropout`` hides (DropoutNet);
    ``align`` fits it after training to the warm entities' learned embeddings. ``sides``: whose
    ID feature (the feature read from ``data.item_col`` / ``data.user_col``) it generates."""

    method: Literal["dropout", "align"] = "dropout"
    sides: list[Literal["item", "user"]] = Field(default_factory=lambda: ["item"], min_length=1)
    blend: float = Field(5.0, gt=0)
    hidden: int = Field(64, gt=0)


class RetrievalSpec(_Strict):
    """A two-tower retrieval head (:mod:`polyrec.models.retrieval`) for catalogs too large to score
    whole: user and item towers over the ranker's field embeddings (and text), trained after the
    ranker on ``task``'s labels (default: the first binary task). Catalogs of more than
    ``threshold`` items are recommended from the ``candidates`` nearest items of an HNSW index
    (faiss; ``ef_search``: its search breadth), which the multi-task ranker then scores."""

    task: str | None = None
    dim: int = Field(32, gt=0)
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    epochs: int = Field(3, gt=0)
    lr: float = Field(3e-3, gt=0)
    threshold: int = Field(20_000, ge=0)
    candidates: int = Field(200, gt=0)
    ef_search: int = Field(256, gt=0)


class WeightingSpec(_Strict):
    method: str = "static"
    options: dict = Field(default_factory=dict)


class DistillSpec(_Strict):
    """Teacher → student signals for ``polyrec distill`` (each off at weight 0).

    ``soft_weight`` mixes each task's loss as (1-w)·hard + w·soft, the soft part matching
    the teacher's predictions on every training row (binary: cross-entropy against the
    teacher's probabilities at ``temperature``, scaled by T²; regression: squared error).
    ``ranking_weight`` adds, for ``ranking_users`` users per step, a ``listwise`` (KL of
    the score softmaxes) or ``pairwise`` (RankNet on the teacher's order) loss over each
    user's candidates: the teacher's top ``ranking_top`` unseen items plus random unseen
    ones up to ``ranking_candidates``. ``unlabeled_per_user`` adds that many random
    unseen (user, item) pairs per user, labelled by the teacher alone; ``new_items_per_user``
    adds pairs with items no training row shows (``data.cold_items``), so the student learns
    their ID embeddings from the teacher's text-based scores instead of mapping them to OOV:
    new items work without a language model at serving time. ``hidden_weight`` matches the
    student's shared representation to the teacher's on each batch by their pairwise cosine
    similarities (no projection, so the widths may differ), shared by the tasks equally.
    """
    soft_weight: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)
    ranking_weight: float = Field(0.0, ge=0)
    ranking_loss: Literal["listwise", "pairwise"] = "listwise"
    ranking_candidates: int = Field(50, gt=1)
    ranking_top: int = Field(20, ge=0)
    ranking_users: int = Field(32, gt=0)
    unlabeled_per_user: int = Field(0, ge=0)
    new_items_per_user: int = Field(0, ge=0)
    hidden_weight: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DistillSpec:
        if self.ranking_top > self.ranking_candidates:
            raise ValueError("distill.ranking_top cannot exceed distill.ranking_candidates")
        return self


class TrainSpec(_Strict):
    # per_task: each task's loss is its mean over the rows it labels (tasks weigh alike); per_row:
    # over all rows of the batch, so a task weighs by how many rows it labels (see Objective)
    loss_reduction: Literal["per_task", "per_row"] = "per_task"
    batch_size: int = Field(1024, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_epochs: int = Field(10, gt=0)
    patience: int = Field(2, ge=0)
    # the embedding tables get sparse gradients (only the rows a batch reads) and SparseAdam, so a
    # step costs the same however many users and items there are; the other weights keep Adam
    sparse_embeddings: bool = False
    # a run saves its whole training state at each epoch's end and every this many steps (0: epoch
    # ends only), so `polyrec train --resume` continues a killed run where it stopped
    checkpoint_every: int = Field(0, ge=0)
    # where training runs (auto: the GPU when there is one); the trained model is moved back to the
    # CPU for evaluation, saving and serving
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16: forward passes in training run under bfloat16 autocast (weights, optimizer and losses stay float32)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 2024
    threads: int | None = 2
    progress: bool = True


class EvalSpec(_Strict):
    """How lists are ranked and measured. ``rank_by``: the task recommendations are ranked by (else
    the first binary task); ``fusion``: rank by Π score^weight over named task (or joint) scores
    instead, e.g. ``{watch: 1, like: 0.5}``; ``diversity``: the default MMR λ of recommend (0: off)."""
    ks: list[PositiveInt] = Field(default_factory=lambda: [10], min_length=1)
    ranking: bool = True
    rank_by: str | None = None
    fusion: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None
    diversity: float = Field(0.0, ge=0, le=1)


class Config(_Strict):
    data: DataSpec
    features: list[FeatureSpec]
    tasks: list[TaskSpec]
    model: ModelSpec = Field(default_factory=ModelSpec)
    text: TextSpec | None = None
    history: HistorySpec | None = None
    stats: StatsSpec | None = None
    cold_start: ColdStartSpec | None = None
    retrieval: RetrievalSpec | None = None
    weighting: WeightingSpec = Field(default_factory=WeightingSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    distill: DistillSpec | None = None   # read by `polyrec distill` only

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [t.name for t in self.tasks]
        if not names:
            raise ValueError("tasks: declare at least one task")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: duplicate task names in {names}")
        by_name = {t.name: t for t in self.tasks}
        for t in self.tasks:
            if t.depends_on is not None:
                parent = by_name.get(t.depends_on)
                if parent is None or parent.kind != "binary" or parent.depends_on is not None:
                    raise ValueError(f"task '{t.name}': depends_on must name a binary task without a parent of its own")
        feats = [f.name for f in self.features]
        if len(set(feats)) != len(feats):
            raise ValueError(f"features: duplicate feature names in {feats}")
        if self.data.item_col is None:
            item_side = [f.name for f in self.features if f.source == "item"]
            if item_side or (self.text is not None and (self.text.item_template or self.text.user_history)):
                raise ValueError(f"data.item_col is null (no items), so nothing can be read from items: remove the "
                                 f"item features {item_side} and text.item_template / text.user_history")
        categorical = {f.name for f in self.features if f.kind in ("categorical", "bucket")}
        for name, p in self.model.oov_dropout.items():
            if name not in categorical or not 0 <= p < 1:
                raise ValueError(f"model.oov_dropout: '{name}: {p}' needs a categorical or bucket feature "
                                 f"({sorted(categorical)}) and a probability in [0, 1)")
        for section in ("history", "stats", "text.user_history"):
            if self._reads(section) and (self.data.time_col is None or self.data.item_col is None):
                raise ValueError(f"{section} reads interactions in time order: it needs data.time_col and "
                                 f"data.item_col (or turn {section} off)")
        if self.history is not None:
            if self.history.encoder == "transformer" and self.model.embed_dim % self.history.heads:
                raise ValueError(f"history.heads ({self.history.heads}) must divide model.embed_dim "
                                 f"({self.model.embed_dim})")
        if self.cold_start is not None:
            for side in self.cold_start.sides:
                feature = self.id_feature(side)
                if feature is None:
                    raise ValueError(f"cold_start.sides: '{side}' needs the {side} ID as a categorical feature "
                                     f"(a feature with source {side} read from data.{side}_col)")
                if self.cold_start.method == "dropout" and not self.model.oov_dropout.get(feature):
                    raise ValueError(f"cold_start.method 'dropout' learns from rows whose ID is hidden: set "
                                     f"model.oov_dropout: {{{feature}: 0.1}} (or use method 'align')")
        if self.data.streaming:
            needs_all_rows = {"history": self.history, "stats": self.stats, "cold_start": self.cold_start,
                              "retrieval": self.retrieval, "distill": self.distill,
                              "text.user_history": self.text and self.text.user_history,
                              "eval.ranking": self.eval.ranking, "data.cold_items": self.data.cold_items}
            used = [name for name, value in needs_all_rows.items() if value]
            if used:
                raise ValueError(f"data.streaming keeps no training row in memory, and {used} read(s) every "
                                 "training interaction: turn them off (eval.ranking: false; AUC and logloss on "
                                 "the valid and test rows still run) or train in memory")
        if self.eval.rank_by is not None and self.eval.rank_by not in by_name:
            raise ValueError(f"eval.rank_by: '{self.eval.rank_by}' is not a task ({names})")
        if self.retrieval is not None:
            if self.data.item_col is None:
                raise ValueError("retrieval finds items for users: it needs data.item_col (or remove the section)")
            task = by_name.get(self.retrieval.task) if self.retrieval.task else None
            if (task is None and self.retrieval.task) or (task is not None and task.kind != "binary"):
                raise ValueError(f"retrieval.task: '{self.retrieval.task}' is not a binary task ({names})")
        if self.eval.fusion is not None:
            self.check_fusion(self.eval.fusion, "eval.fusion")
        weighting = build_weighting(self.weighting, self.tasks)   # options checked now, not mid-training
        if self.train.sparse_embeddings and weighting.needs_parameter_grads:
            raise ValueError(f"weighting.method '{self.weighting.method}' combines each task's gradient of every "
                             "parameter, which sparse embedding gradients do not support: set "
                             "train.sparse_embeddings false or use another weighting method")
        if weighting.needs_representation and self.model.arch == "single":
            raise ValueError(f"weighting.method '{self.weighting.method}' balances task gradients at the shared "
                             "representation, and model.arch 'single' shares none: use sharedbottom, mmoe or ple, "
                             "or another weighting method")
        if self.distill is not None and self.distill.hidden_weight and self.model.arch == "single":
            raise ValueError("distill.hidden_weight matches shared representations, and model.arch 'single' shares "
                             "none: use sharedbottom, mmoe or ple, or hidden_weight 0")
        return self

    def check_fusion(self, weights: dict[str, float], where: str) -> None:
        """Fusion weights name task or joint scores (positive ones: a regression task must predict
        positive values to be fused, e.g. a rating), at least one weight non-zero."""
        scores = [t.name for t in self.tasks] + [t.joint for t in self.tasks if t.depends_on and t.kind == "binary"]
        unknown = [name for name in weights if name not in scores]
        if unknown or not any(weights.values()):
            raise ValueError(f"{where}: weights must name scores among {scores} and not all be 0; "
                             f"got {dict(weights)}")

    def _reads(self, name: str) -> bool:
        return bool(self.text and self.text.user_history) if name == "text.user_history" else \
            getattr(self, name) is not None

    @property
    def reads_history(self) -> bool:
        """Whether rows read the user's earlier interactions (the ``history`` section or
        ``text.user_history``): each row then carries its span of the event log."""
        return self._reads("history") or self._reads("text.user_history")

    @property
    def reads_events(self) -> bool:
        """Whether the event logs of the interactions are kept: for histories or statistics."""
        return self.reads_history or self.stats is not None

    def id_feature(self, side: str) -> str | None:
        """The categorical feature holding the user's or item's ID (read from data.user_col / item_col)."""
        col = self.data.user_col if side == "user" else self.data.item_col
        return next((f.name for f in self.features if f.source == side and f.col == col
                     and f.kind == "categorical"), None)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Config:
        """A YAML file's config; its relative data paths are resolved from the file's folder
        (``--set`` overrides, typed at a shell, stay relative to the current folder)."""
        return cls.from_dict(read_yaml(path), overrides)

    @classmethod
    def from_dict(cls, raw: dict, overrides: list[str] | None = None) -> Config:
        raw = copy.deepcopy(raw)   # the caller's mapping stays as it was
        for item in overrides or []:
            apply_override(raw, item)
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            lines = [f"  {'.'.join(map(str, e['loc']))}: " * bool(e["loc"]) + e["msg"].removeprefix("Value error, ")
                     for e in err.errors()]
            raise ConfigError("invalid config:\n" + "\n".join(lines)) from None

    def with_overrides(self, overrides: list[str]) -> Config:
        return Config.from_dict(self.model_dump(), overrides)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path`` with relative file paths made relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; give a YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections (data, features, tasks, ...), "
                          f"found a {type(raw).__name__}")
    for section, keys in _PATH_KEYS.items():
        values = raw.get(section)
        for key in keys if isinstance(values, dict) else ():
            if isinstance(values.get(key), str) and not Path(values[key]).expanduser().is_absolute():
                values[key] = str(path.parent / values[key])
    return raw


# config keys that name files or folders: relative values in a YAML file are relative to that file
_PATH_KEYS = {"data": ("interactions", "train", "valid", "test", "users", "items", "cache_dir", "cold_items"),
              "text": ("cache_dir",)}


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; ``value`` is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. model.arch=ple)")
    key, value = item.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        if node.get(part) is None:  # absent, or an optional section that is off (e.g. text: null)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError:  # e.g. a text template such as "{title} ({year})": keep it as a string
        node[leaf] = value
