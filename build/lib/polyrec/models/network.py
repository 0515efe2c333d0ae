"""The multi-task model: feature tables → embeddings → shared body (architecture) → task towers."""
from __future__ import annotations

import torch
from torch import nn

from polyrec.config import ColdStartSpec, HistorySpec, ModelSpec, RetrievalSpec, TextSpec
from polyrec.data.features import EncodedSide
from polyrec.data.rows import Samples
from polyrec.models.generator import IdGenerator, SideLayout
from polyrec.models.history import EventTable, HistoryBlock, StatsTable
from polyrec.models.layers import (
    FeatureEmbedding,
    FeatureTables,
    GroupedLinear,
    GroupedMLP,
    own_state,
)
from polyrec.models.mmoe import MMoE
from polyrec.models.ple import PLE
from polyrec.models.retrieval import TwoTower
from polyrec.models.sharedbottom import SharedBottom
from polyrec.models.text import TextBlock

# An architecture maps [B, D] inputs to [B, T, H] per-task representations, and returns with
# them the shared representation every task reads (for weighting and distillation).
ARCHITECTURES = {"sharedbottom": SharedBottom, "mmoe": MMoE, "ple": PLE}


class TaskNetwork(nn.Module):
    """Embeddings (and text, and the behaviour history), a shared body and one tower per task:
    features → logits [B, T]."""

    def __init__(self, num_embeddings: int, tables: FeatureTables, n_tasks: int, spec: ModelSpec, arch: str,
                 text: TextSpec | None = None, history: HistorySpec | None = None, n_feedback: int = 0,
                 n_stats: int = 0, cold_start: ColdStartSpec | None = None,
                 id_slots: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        n_cat, n_multi, n_num = tables.in_counts   # statistics join the numeric features
        self.embedding = FeatureEmbedding(num_embeddings, spec.embed_dim, (n_cat, n_multi, n_num + n_stats))
        # one ID generator per side named in cold_start.sides: id_slots[side] = (column, OOV index)
        self.generators = nn.ModuleDict({
            side: IdGenerator(SideLayout(side, tables.side_counts("cat"), tables.side_counts("multi"),
                                         tables.side_counts("num"), column),
                              spec.embed_dim, getattr(tables, f"{side}_text").shape[1], cold_start.hidden, oov,
                              cold_start.blend, cold_start.method)
            for side, (column, oov) in (id_slots or {}).items()})
        self.text = TextBlock(text) if text is not None else None
        self.n_user_cat = tables.user_cat.shape[1]
        self.history = None
        if history is not None:
            text_dim = tables.item_text.shape[1] if text is not None and history.text else 0
            self.history = HistoryBlock(history, spec.embed_dim, n_feedback, text_dim, spec.dropout)
        in_dim = self.embedding.out_dim + sum(block.out_dim for block in (self.text, self.history) if block is not None)
        self.body = ARCHITECTURES[arch](in_dim, n_tasks, spec)
        self.towers = GroupedMLP(self.body.out_dim, spec.tower_dims, n_tasks, spec.dropout, spec.batch_norm)
        self.heads = GroupedLinear(self.towers.out_dim, 1, n_tasks)

    def forward(self, cat, multi, num, item_text, user_text, history_text=None, events=None, counts=None):
        x = self.embedding(cat, multi, num)              # [B, D]
        for side, generator in self.generators.items():
            x = generator(x, self.embedding, cat, multi, num, item_text if side == "item" else user_text,
                          counts[side])
        if self.text is not None:
            x = torch.cat([x, self.text(item_text, user_text, history_text)], 1)
        if self.history is not None:
            x = torch.cat([x, self.read_history(cat, events)[0]], 1)
        per_task, shared = self.body(x)                  # [B, T, H], [B, S, H]
        return self.heads(self.towers(per_task)).squeeze(-1), shared  # [B, T]

    def read_history(self, cat: torch.Tensor, events: tuple):
        """The history block's output [B, 2D] and its attention weights over the events [B, L] (or None)."""
        item_cat, event_items, feedback, mask, event_text, candidate_text = events
        # an item's vector is the sum of its fields' embeddings; made once for the catalog and
        # gathered, which is much cheaper to train than a lookup per event and field
        catalog = self.embedding.table(item_cat).sum(1)                   # [I, D]
        candidate = self.embedding.table(cat[:, self.n_user_cat:]).sum(1)  # [B, D]
        return self.history(catalog[event_items], feedback, mask, candidate, event_text, candidate_text)


class MultiTaskModel(nn.Module):
    """Scores (user, item) catalog indices for every task; outputs logits (binary) or values (regression).

    ``arch='single'`` is the single-task baseline: one independent network per task
    (its own embeddings too), trained side by side; no parameter is shared.
    ``oov_dropout`` lists (categorical column, its out-of-vocabulary index, probability):
    while training, the value is replaced by OOV with that probability, so the model
    learns to score an item whose ID it has never seen from its other features and text.
    ``item_encoder`` (LoRA mode) computes item text embeddings instead of the table's.
    ``events`` (with ``history`` or ``text.user_history``): the interactions rows read as their
    history (the behaviour history block's events, and the items whose mean text is the user's
    history text); ``stats`` (with a stats section): the statistics known now (see :meth:`forward`).
    """

    def __init__(self, tables: FeatureTables, num_embeddings: int, n_tasks: int, spec: ModelSpec,
                 text: TextSpec | None = None, oov_dropout: list[tuple[int, int, float]] = (),
                 item_encoder: nn.Module | None = None, history: HistorySpec | None = None,
                 events: EventTable | None = None, stats: StatsTable | None = None,
                 cold_start: ColdStartSpec | None = None, id_slots: dict[str, tuple[int, int]] | None = None,
                 retrieval: RetrievalSpec | None = None):
        super().__init__()
        self.tables = tables
        self.cold_start = cold_start
        if cold_start is not None:
            # training interactions per user and item, which the ID generators blend by (model_for sets them)
            self.register_buffer("user_count", torch.zeros(len(tables.user_cat)))
            self.register_buffer("item_count", torch.zeros(len(tables.item_cat)))
        self.oov_dropout = list(oov_dropout)
        self.item_encoder = item_encoder
        self.events, self.stats = events, stats
        self.history_length = history.length if history is not None else 0
        self.event_text = history is not None and history.text and text is not None
        self.text_history = text.user_history if text is not None else 0   # events in the history text
        n_feedback = events.feedback.shape[1] if events is not None else 0
        n_stats = stats.width if stats is not None else 0
        net = lambda tasks, arch: TaskNetwork(num_embeddings, tables, tasks, spec, arch, text, history,  # noqa: E731
                                              n_feedback, n_stats, cold_start, id_slots)
        if spec.arch == "single":
            self.nets = nn.ModuleList(net(1, "sharedbottom") for _ in range(n_tasks))
        else:
            self.nets = nn.ModuleList([net(n_tasks, spec.arch)])
        self.retrieval = TwoTower(tables, spec.embed_dim, retrieval) if retrieval is not None else None

    def forward(self, user: torch.Tensor, item: torch.Tensor, history: torch.Tensor | None = None,
                stats: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (binary tasks) or values (regression) [B, T]. A row's own moment
        (:meth:`Samples.context`): ``history`` [B, 2], its span of the event log, and ``stats``
        [B, S], its statistics; without them a row reads what is known now (the user's whole
        known history, today's statistics)."""
        return self.forward_shared(user, item, history, stats)[0]

    def forward_shared(self, user: torch.Tensor, item: torch.Tensor, history: torch.Tensor | None = None,
                       stats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs [B, T] and the shared representation they were computed from (None for
        ``single``, which shares nothing): what representation-level weighting balances."""
        cat, multi, num, item_text, user_text = self.tables(user, item)
        if self.stats is not None:
            num = torch.cat([num, self.stats(user, item, stats)], 1)
        if self.training and self.oov_dropout:
            cat = cat.clone()
            for column, oov, p in self.oov_dropout:
                drop = torch.rand(len(cat), device=cat.device) < p
                cat[drop, column] = oov
        if self.item_encoder is not None:
            item_text = self.item_encoder(item)
        events = self._events(user, item, history)[0] if self.history_length else None
        history_text = self.history_text(user, history) if self.text_history else None
        counts = {"user": self.user_count[user], "item": self.item_count[item]} if self.cold_start else None
        outputs = [net(cat, multi, num, item_text, user_text, history_text, events, counts) for net in self.nets]
        return torch.cat([logits for logits, _ in outputs], 1), outputs[0][1] if len(outputs) == 1 else None

    def _events(self, user: torch.Tensor, item: torch.Tensor, spans: torch.Tensor | None):
        """What a history block reads, gathered once for every network, and the event items [B, L]."""
        items, feedback, mask = self.events(user, spans, self.history_length)
        text = self.tables.item_text
        return (self.tables.item_cat, items, feedback, mask, text[items] if self.event_text else None,
                text[item] if self.event_text else None), items

    def history_text(self, user: torch.Tensor, spans: torch.Tensor | None = None) -> torch.Tensor:
        """[B, E] the user-history text of each row: the mean (whitened, frozen) text of the user's last
        ``text.user_history`` events of its span (strictly before the row; without spans, everything
        known now); zeros for an empty history."""
        items, _, mask = self.events(user, spans, self.text_history)
        weights = mask.unsqueeze(-1).to(self.tables.item_text.dtype)
        return (self.tables.item_text[items] * weights).sum(1) / weights.sum(1).clamp(min=1)

    @torch.no_grad()
    def attended_events(self, user: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each row's history items [B, L] and the attention the (first) network gave them [B, L]
        (None for an encoder without per-event weights), reading each user's whole known history."""
        events, items = self._events(user, item, None)
        cat = self.tables(user, item)[0]
        return items, self.nets[0].read_history(cat, events)[1]

    def fork(self) -> MultiTaskModel:
        """A model sharing these weights whose catalog state (feature tables, event log, statistics,
        interaction counts, LoRA tokens) is its own: adding users or items to it leaves this one as
        it is, so a server can keep scoring with this one and swap the fork in when it is ready."""
        clone = own_state(self)
        for name in ("tables", "events", "stats", "item_encoder"):
            if clone._modules.get(name) is not None:
                clone._modules[name] = own_state(clone._modules[name])
        return clone

    def for_new_user(self, user: EncodedSide, recent: torch.Tensor) -> MultiTaskModel:
        """This model with one new user (encoded profile ``user``, its ``recent`` items oldest first)
        as its only user, index 0: scoring a profile without adding it (the items are shared)."""
        view = own_state(self)
        view.tables = self.tables.with_users(user)
        if self.events is not None:
            view.events = EventTable.of_user(recent, self.events.feedback.shape[1])
        if self.stats is not None:
            view.stats = self.stats.of_new_users(1)
        if self.cold_start is not None:
            view.user_count = self.user_count.new_zeros(1)
        return view

    def append_counts(self, side: str, n: int) -> None:
        """New users or items (cold start) start with no interactions: the generator speaks for them."""
        if self.cold_start is not None:
            old = getattr(self, f"{side}_count")
            setattr(self, f"{side}_count", torch.cat([old, old.new_zeros(n)]))

    def item_id_rows(self, items: torch.Tensor) -> torch.Tensor:
        """The ID-embedding rows [n] of catalog ``items`` (the generator's OOV index where an item has none)."""
        return self.tables.item_cat[items, self._item_id_column]

    @property
    def _item_id_column(self) -> int:
        return self.nets[0].generators["item"].layout.id_column - self.tables.user_cat.shape[1]

    def items_without_id(self, items: torch.Tensor) -> torch.Tensor:
        """Those of catalog ``items`` whose ID maps to OOV (never trained on, no row of their own)."""
        return items[self.item_id_rows(items) == self.nets[0].generators["item"].oov]

    def own_item_rows(self, items: torch.Tensor, rows: list[int]) -> None:
        """Items with an OOV ID (catalog indices ``items``) get their own ID-embedding rows (global
        indices ``rows``, one past the table's end each), started at their generated embedding."""
        cat, multi, num, item_text, _ = self.tables(torch.zeros_like(items), items)
        if self.item_encoder is not None:
            item_text = self.item_encoder(items)
        with torch.no_grad():
            for net in self.nets:
                generator = net.generators["item"]
                net.embedding.grow(generator.net(generator.content(net.embedding, cat, multi, num, item_text)))
        self.tables.item_cat[items, self._item_id_column] = torch.tensor(rows)

    def fit_item_rows(self, samples: Samples, rows: list[int], objective, epochs: int, lr: float) -> float:
        """Fine-tune the ID-embedding ``rows`` alone on ``samples`` (every other parameter, and the
        batch-norm statistics, stay as they are); the final loss."""
        self.eval()
        tables = [net.embedding.table.weight for net in self.nets]
        optimizer = torch.optim.Adam(tables, lr=lr)
        frozen = torch.ones(len(tables[0]), dtype=torch.bool)
        frozen[rows] = False
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = objective.losses(self(samples.user, samples.item), samples.labels).sum()
            loss.backward()
            for weight in tables:
                weight.grad[frozen] = 0
            optimizer.step()
        return float(loss.detach())

    def align_generators(self) -> dict[str, float]:
        """Fit each ID generator to the warm entities' learned ID embeddings (cold_start.method
        ``align``, after training); the final weighted squared error per side."""
        losses = {}
        for side in self.cold_start.sides:
            n = len(getattr(self.tables, f"{side}_cat"))
            every, first = torch.arange(n), torch.zeros(n, dtype=torch.long)
            user, item = (every, first) if side == "user" else (first, every)
            cat, multi, num, item_text, user_text = self.tables(user, item)
            if side == "item" and self.item_encoder is not None:
                with torch.no_grad():
                    item_text = self.item_encoder(item)
            for net in self.nets:
                losses[side] = net.generators[side].align(net.embedding, cat, multi, num,
                                                          item_text if side == "item" else user_text,
                                                          getattr(self, f"{side}_count"))
        return losses

    def fit_retrieval(self, samples: Samples, column: int, spec: RetrievalSpec, batch_size: int, seed: int) -> float:
        """Train the two-tower retrieval head on task ``column``'s labels (after the ranker); its last loss."""
        return self.retrieval.fit(self.nets[0].embedding, self.tables, samples, column, spec, batch_size, seed)

    def retrieval_vectors(self, side: str, index: torch.Tensor | None = None) -> torch.Tensor:
        """The retrieval head's unit vectors [N, dim] of users or items (all of the side without ``index``)."""
        if index is None:
            return self.retrieval.catalog_vectors(self.nets[0].embedding, self.tables, side)
        with torch.no_grad():
            return self.retrieval.vectors(self.nets[0].embedding, self.tables, side, index)

    def task_parameters(self) -> set[nn.Parameter]:
        """Parameters that belong to one task only (towers and output heads); the rest are shared."""
        if len(self.nets) > 1:
            return set(self.parameters())
        net = self.nets[0]
        return set(net.towers.parameters()) | set(net.heads.parameters())

    def set_output_bias(self, values: list[float | None]) -> None:
        """Start each task's output at a given value (e.g. the mean rating), so regression
        towers do not spend the first epoch learning the label's offset."""
        heads = [net.heads.bias for net in self.nets]
        flat = [(h, g) for h in heads for g in range(h.shape[0])]
        with torch.no_grad():
            for (bias, g), value in zip(flat, values):
                if value is not None:
                    bias[g].fill_(value)

    def frozen_keys(self) -> set[str]:
        """State keys a bundle leaves out: the base language model's weights (LoRA mode)."""
        return self.item_encoder.frozen_keys("item_encoder.") if self.item_encoder is not None else set()

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def n_serving_parameters(self) -> int:
        """What scoring needs: every parameter (a LoRA-tuned language model counts whole) plus the
        cached text embeddings the model reads; a frozen model's text is those embeddings only."""
        text = self.tables.user_text.numel() + (self.tables.item_text.numel() if self.item_encoder is None else 0)
        return self.n_parameters() + text


def build_model(config, encoder, tables: FeatureTables, item_encoder: nn.Module | None = None,
                events: EventTable | None = None, stats: StatsTable | None = None) -> MultiTaskModel:
    """The model a config describes, over encoded user and item tables (and, with history and
    stats sections, the event logs and the statistics known now)."""
    cold = config.cold_start
    id_slots = {side: encoder.oov_slots({config.id_feature(side): 0.0})[0][:2] for side in cold.sides} if cold else None
    return MultiTaskModel(tables, encoder.num_embeddings, len(config.tasks), config.model, config.text,
                          encoder.oov_slots(config.model.oov_dropout), item_encoder, config.history, events, stats,
                          cold, id_slots, config.retrieval)


def model_for(config, data, item_encoder: nn.Module | None = None) -> MultiTaskModel:
    """A new model for :class:`~polyrec.data.dataset.PreparedData`: its encoded tables and, with
    history and stats sections, its event logs and statistics."""
    n_users, n_items = len(data.catalog.user_ids), len(data.catalog.item_ids)
    events = EventTable.of(data.histories, n_users) if config.reads_history else None
    stats = StatsTable.of(data.histories, n_users, n_items, config.stats) if config.stats is not None else None
    model = build_model(config, data.encoder, FeatureTables(data.users, data.items), item_encoder, events, stats)
    if config.cold_start is not None:
        users, items = data.interaction_counts()
        model.user_count.copy_(torch.from_numpy(users))
        model.item_count.copy_(torch.from_numpy(items))
    return model
