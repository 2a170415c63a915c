"""One Trainer for every model: negatives, minibatches, Adam, early stopping, checkpoints, resume.

Per epoch: ``model.start_epoch(epoch, rng)``; the sampler builds the epoch's rows (BCE: train
positives + sampled negatives; BPR: (user, positive, negative) triples); ``torch.randperm`` cuts
them into minibatches; loss = BCE-with-logits, BPR ``-log sigmoid(s_pos - s_neg)`` or sampled
softmax (``softmax``: each user's positive against every positive and negative of the batch,
logits / ``temperature``; the same triples as BPR), plus
``l2 * model.regularization(users, items)`` (Adam's weight decay stays 0); a model with its
own objective (``training_loss(users, items, third)``, e.g. MKRLN's policy gradient) replaces
that loss. Every ``eval_every`` epochs (and after the last one) the model is validated: ctr
split -> AUC over all valid rows; topk split -> NDCG@20 of the full ranking. The best weights
are kept (in memory and in ``out_dir/best/``); ``patience`` evaluations without improvement
stop training, never before epoch ``min_epochs``. TEST is evaluated once, at the end, with the
best weights (a ctr split is then also ranked: full ranking of all items for its test positives,
so both views come from one run).

``out_dir`` layout::

    log.jsonl       one JSON record per epoch: epoch (1-based), loss, seconds, valid metrics
    curve.png       loss and the validation metric vs epoch
    metrics.json    the result of fit()
    best/           checkpoint of the best weights (see mmkgrec.train.checkpoint)
    last/           resumable state after the latest epoch: weights, Adam state, RNG states,
                    best-so-far metric / epoch / weights, patience counter, log

``fit(resume=True)`` continues from ``last/`` and gives the same metrics as an uninterrupted run
(same machine, device and thread count).

Under torchrun (``WORLD_SIZE > 1``) the same ``fit`` trains data-parallel with
DistributedDataParallel (see :mod:`mmkgrec.train.distributed`): each rank trains on its shard of
the epoch's rows with ``ceil(batch_size / world)`` rows per step, rank 0 evaluates, decides early
stopping (broadcast to all ranks) and writes every file; checkpoints hold the plain model.

``sparse_embeddings=True`` trains the large ID-embedding tables with row-sparse gradients and
``torch.optim.SparseAdam`` (lazy Adam: moments of untouched rows are not decayed), the rest with
Adam, so a step costs O(batch) instead of O(table rows); it needs a model that reads its tables
by lookup only (e.g. ``l2_scope="batch"``; LightGCN's full propagation cannot). Off by default.

Pieces: :mod:`~mmkgrec.train.optim` (Adam / MixedAdam), :mod:`~mmkgrec.train.resume` (the state
in ``last/``), :mod:`~mmkgrec.train.logs` (progress, log.jsonl, curve.png),
:mod:`~mmkgrec.train.distributed` (DDP); the loop is here.
"""

from __future__ import annotations

import gc
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from mmkgrec.config import parse_config
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split, Stage
from mmkgrec.errors import ConfigError, MMKGRecError
from mmkgrec.evaluate.ranking import evaluate_ctr, evaluate_topk
from mmkgrec.graph.negatives import NegativeSampler
from mmkgrec.train.checkpoint import (
    WEIGHTS,
    latest_complete,
    load_checkpoint,
    load_model_state,
    load_optimizer,
    load_rng_state,
    load_tensors,
    replace_directory,
    save_checkpoint,
    save_optimizer,
    save_rng_state,
)
from mmkgrec.train.distributed import DistContext, ddp_loss, shard_indices
from mmkgrec.train.distributed import setup as setup_distributed
from mmkgrec.train.logs import append_log, epoch_progress, plot_curve, rewrite_log
from mmkgrec.train.optim import check_sparse_gradients, make_optimizer, sparsify
from mmkgrec.train.resume import (
    BEST_IN_LAST,
    best_state,
    check_resumable,
    fresh_state,
    link_or_copy,
    snapshot,
)

MONITOR_K = 20  # topk early stopping watches NDCG@20


class TrainConfig(BaseModel):
    """Training options shared by every model. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    l2: float = Field(1e-4, ge=0)  # weight of model.regularization(users, items)
    loss: Literal["bce", "bpr", "softmax"] = "bce"
    temperature: float = Field(0.2, gt=0)  # softmax loss: logits / temperature
    negatives: Literal["fixed", "uniform", "ratio"] = "uniform"
    alpha: float = 0.75  # ratio sampling: P(item) ∝ (train popularity + 1) ** alpha
    n_negatives: int = Field(1, ge=1)  # per train positive
    patience: int | None = Field(5, ge=1)  # evaluations without improvement; None: no early stop
    min_epochs: int = Field(0, ge=0)  # no early stop before this epoch (a slow start is not a peak)
    eval_every: int = Field(1, ge=1)  # epochs
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_users: int = Field(256, ge=1)
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20, 50])
    max_train_seconds: float | None = Field(None, gt=0)  # checked after each epoch
    sparse_embeddings: bool = False  # SparseAdam on the large ID tables (module docstring)
    # torch.use_deterministic_algorithms during fit: with several CPU threads, the backward of
    # x[index] (index_put_ accumulate) otherwise sums duplicates in a varying order (docs/architecture.md)
    deterministic: bool = True

    @field_validator("ks")
    @classmethod
    def _check_ks(cls, ks):
        if not ks or min(ks) < 1:
            raise ValueError(f"cut-offs must be positive integers, got {ks}")
        return sorted(set(ks))

    @field_validator("alpha")
    @classmethod
    def _check_alpha(cls, alpha):
        if not math.isfinite(alpha):
            raise ValueError("alpha must be finite")
        return alpha

    @classmethod
    def parse(cls, **options) -> TrainConfig:
        """Validate ``options``; raise ConfigError naming each bad option."""
        return parse_config(cls, "training options", options)


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_kernels(enabled: bool):
    """Deterministic torch kernels inside the block (``enabled``), the caller's setting after.
    ``warn_only``: an op without a deterministic kernel (some on CUDA) warns instead of failing;
    bitwise cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set before CUDA starts."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU. ConfigError for ``"cuda"`` without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(device)


class Trainer:
    """Trains and evaluates one model on one split. See the module docstring.

    Args:
        model: a :class:`~mmkgrec.models.base.Recommender`.
        split: the split (only its train part is trained on).
        config: a :class:`TrainConfig` or a dict of its options.
        out_dir: where logs, checkpoints and ``metrics.json`` go; None keeps everything in memory.
        dataset: optional; recorded (name, fingerprint) in checkpoints instead of the split's copy.
        progress: show a rich progress bar; None: only when stdout is a terminal.

    ``fit`` seeds python / numpy / torch with ``config.seed`` first; model initialisation happens
    before, so seed it too (``seed_everything`` or the model's own ``seed``) for repeatable runs.
    """

    def __init__(self, model: nn.Module, split: Split, config: TrainConfig | dict | None = None,
                 out_dir: str | Path | None = None, *, dataset: MMKG | None = None,
                 progress: bool | None = None):
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.parse(
            **(config or {}))
        if self.config.negatives == "fixed" and split.protocol != "ctr":
            raise ConfigError("negatives='fixed' needs a ctr split (its labelled negatives); "
                              f"this split is {split.protocol!r}: use 'uniform' or 'ratio'")
        self.model: Any = model  # a Recommender: start_epoch, regularization, ... (models/base.py)
        self.split, self.dataset = split, dataset
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._writer = self.out_dir  # where files go: out_dir, or None on ranks other than 0
        self.device = resolve_device(self.config.device)
        self.progress = sys.stdout.isatty() if progress is None else progress
        self.monitor = "auc" if split.protocol == "ctr" else f"ndcg@{MONITOR_K}"
        self.ks = sorted(set(self.config.ks) | {MONITOR_K})
        self.model_name = getattr(model, "name", type(model).__name__)
        self.rng = np.random.default_rng(self.config.seed)

    # ---- the run --------------------------------------------------------------------------------
    def fit(self, resume: bool = False,
            on_batch: Callable[[int, int], None] | None = None, *,
            evaluate_test: bool = True) -> dict:
        """Train, early-stop on validation, then evaluate TEST once with the best weights.

        Args:
            resume: continue from ``out_dir/last/`` when it exists (else start afresh).
            on_batch: called as ``on_batch(epoch, batch)`` (0-based) after each optimiser step.
            evaluate_test: False skips the final TEST evaluation (hyper-parameter search must
                never see test); ``"test"`` is then None and ``eval_seconds.test`` 0.

        Returns:
            ``{"valid": best valid metrics, "test": test metrics, "best_epoch", "epochs_run",
            "stop_reason", "train_seconds_per_epoch", "eval_seconds": {"valid", "test"},
            "monitor", "model", "protocol", "device"}``; also written to ``out_dir/metrics.json``.
            Epochs are 1-based; ``eval_seconds.valid`` is the mean of one validation pass.
            Under torchrun every rank returns rank 0's results (with ``"world_size"``).
        """
        if resume and self.out_dir is None:
            raise ConfigError("resume=True needs the out_dir of the interrupted run")
        context = setup_distributed(self.config.device)  # None in a single process
        try:
            with deterministic_kernels(self.config.deterministic):
                return self._fit(context, resume, on_batch, evaluate_test)
        finally:
            if context is not None:
                gc.collect()  # free the DDP wrapper (its reducer) while the group still exists
                context.close()

    def _fit(self, context: DistContext | None, resume: bool, on_batch, evaluate_test: bool
             ) -> dict:
        cfg, model = self.config, self.model
        main = context is None or context.is_main
        self._writer = self.out_dir if main else None  # only rank 0 writes files
        if context is not None:
            self.device = context.device
            self.progress = self.progress and main
        seed_everything(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        model.to(self.device)
        trainable = getattr(model, "trainable", True)
        sparse = sparsify(model) if trainable and cfg.sparse_embeddings else {}
        try:
            optimizer = make_optimizer(model, sparse, cfg.lr) if trainable else None
            state = fresh_state()
            # state dict snapshot of the best evaluation
            best_weights: tuple[dict[str, Tensor], dict] | None = None
            last = (latest_complete(self.out_dir / "last")
                    if resume and self.out_dir is not None else None)  # fit() checked out_dir
            if last is not None:
                state, best_weights = self._resume(last, optimizer)
            elif self._writer is not None:
                self._clear_out_dir()

            if not trainable:  # fitted in closed form: validate once, no optimisation
                if main:
                    valid, seconds = self._evaluate("valid")
                    state.update(best_valid=valid, stop_reason="not trainable",
                                 valid_seconds=[seconds])
                    state["log"].append({"epoch": 0, "valid": valid, "eval_seconds": seconds})
                    append_log(self._writer, state["log"][-1])
            else:
                sampler = NegativeSampler(self.split, cfg.negatives, cfg.alpha, cfg.n_negatives,
                                          self.rng)
                step = self._step_function(context, sparse)
                while state["stop_reason"] is None:
                    best_weights = self._run_epoch(state, optimizer, sampler, on_batch,
                                                   best_weights, context, step)
                if best_weights is not None and main:
                    load_model_state(model, *best_weights, where="the best epoch's snapshot")
        finally:
            for module, was_sparse in sparse.values():
                module.sparse = was_sparse

        results = self._results(state, evaluate_test) if main else None
        if context is not None:
            results = context.broadcast(results)  # rank 0's, on every rank
        assert results is not None
        return results

    def _results(self, state: dict, evaluate_test: bool) -> dict:
        """Rank 0: test evaluation, the results dict, ``best/``, ``metrics.json``, ``curve.png``."""
        test, test_seconds = self._evaluate("test") if evaluate_test else (None, 0.0)
        train_seconds = state["train_seconds"]
        results = {
            "model": self.model_name, "protocol": self.split.protocol, "monitor": self.monitor,
            "valid": state["best_valid"], "test": test, "best_epoch": state["best_epoch"],
            "epochs_run": len(train_seconds), "stop_reason": state["stop_reason"],
            "train_seconds_per_epoch": float(np.mean(train_seconds)) if train_seconds else 0.0,
            "eval_seconds": {"valid": float(np.mean(state["valid_seconds"] or [0.0])),
                             "test": test_seconds},
            "device": str(self.device),
        }
        if state.get("world_size", 1) > 1:
            results["world_size"] = state["world_size"]
        if self._writer is not None:
            self._save_model(self._writer / "best", metrics=results)
            (self._writer / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
            plot_curve(self._writer / "curve.png", state["log"], self.monitor)
        return results

    def _step_function(self, context: DistContext | None, sparse: dict
                       ) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The training loss of a batch: ``self._loss``, or it inside DDP under torchrun
        (:func:`mmkgrec.train.distributed.ddp_loss`)."""
        if context is None:
            return self._loss
        return ddp_loss(context, self.model, self._loss, sparse)


    def _run_epoch(self, state: dict, optimizer, sampler: NegativeSampler, on_batch,
                   best_weights, context: DistContext | None = None, step=None):
        """Train one epoch, validate when due, update ``state``, write ``last/``.

        Under torchrun only rank 0 validates and writes; its ``state`` (early stopping, time
        limit) is then broadcast so that every rank stops after the same epoch.
        """
        cfg = self.config
        main = context is None or context.is_main
        epoch = state["epoch"]  # 0-based index of this epoch
        self.model.train()
        self.model.start_epoch(epoch, self.rng)
        start = time.perf_counter()
        loss = self._train_epoch(epoch, optimizer, sampler, on_batch, context, step)
        seconds = time.perf_counter() - start
        if main:
            state["epoch"] = epoch + 1
            state["train_seconds"].append(seconds)
            if context is not None:
                state["world_size"] = context.world_size
            out_of_time = (cfg.max_train_seconds is not None
                           and sum(state["train_seconds"]) >= cfg.max_train_seconds)
            final = state["epoch"] >= cfg.epochs or out_of_time
            record = {"epoch": epoch + 1, "loss": loss, "train_seconds": seconds}
            if state["epoch"] % cfg.eval_every == 0 or final:
                valid, eval_seconds = self._evaluate("valid")
                state["valid_seconds"].append(eval_seconds)
                record.update(valid=valid, eval_seconds=eval_seconds)
                if state["best_metric"] is None or valid[self.monitor] > state["best_metric"]:
                    state.update(best_metric=valid[self.monitor], best_epoch=epoch + 1,
                                 best_valid=valid, bad_evaluations=0)
                    best_weights = snapshot(self.model)
                    if self._writer is not None:
                        self._save_model(self._writer / "best", metrics={"valid": valid},
                                         extra={"epoch": epoch + 1})
                else:
                    state["bad_evaluations"] += 1
                    if (cfg.patience is not None and state["bad_evaluations"] >= cfg.patience
                            and state["epoch"] >= cfg.min_epochs):
                        state["stop_reason"] = "early stopping"
            if state["stop_reason"] is None and final:
                state["stop_reason"] = "time limit" if out_of_time else "epochs"
            state["log"].append(record)
            append_log(self._writer, record)
            if self._writer is not None:
                self._save_last(state, optimizer)
        if context is not None:  # every rank continues (or stops) as rank 0 decided
            decided = context.broadcast(state)
            if not main:
                state.clear()
                state.update(decided)
        return best_weights

    def _train_epoch(self, epoch: int, optimizer, sampler: NegativeSampler, on_batch,
                     context: DistContext | None = None, step=None) -> float:
        """One pass over the epoch's rows (this rank's shard); returns the mean loss (data loss
        + l2 term) over all rows of all ranks."""
        cfg, device = self.config, self.device
        step = step or self._loss
        rows = sampler.epoch_pairs() if cfg.loss == "bce" else sampler.epoch_triples()
        columns = [torch.as_tensor(column, device=device) for column in rows]  # 3 x [n]
        n = len(columns[0])
        if context is None:
            order = torch.randperm(n).to(device)  # [n], drawn on the CPU generator on every device
            batch_size = cfg.batch_size
        else:  # DistributedSampler's shard; batch_size stays the global batch
            order = shard_indices(n, epoch, cfg.seed, context.rank,
                                  context.world_size).to(device)  # [ceil(n / world)]
            batch_size = math.ceil(cfg.batch_size / context.world_size)
        m = len(order)
        sparse_params = getattr(optimizer, "sparse_params", {})
        total = torch.zeros((), device=device)
        n_batches = math.ceil(m / batch_size)
        with epoch_progress(self.progress, f"epoch {epoch + 1}/{cfg.epochs}", n_batches) as advance:
            for batch, start in enumerate(range(0, m, batch_size)):
                index = order[start:start + batch_size]  # [B]
                loss = step(*(column[index] for column in columns))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if sparse_params:
                    check_sparse_gradients(sparse_params, self.model_name)
                optimizer.step()
                total += loss.detach() * len(index)
                if on_batch is not None:
                    on_batch(epoch, batch)
                advance()
        if context is not None:  # the mean over every rank's rows
            sums = context.all_reduce_sum(torch.stack([total.float(), total.new_tensor(m)]))
            total, m = sums[0], int(sums[1].item())
        mean = total.item() / max(m, 1)
        if not math.isfinite(mean):
            raise MMKGRecError(f"training diverged: the loss of epoch {epoch + 1} is {mean}; "
                               f"lower lr (now {cfg.lr:g}) or raise l2")
        return mean

    def _loss(self, users: Tensor, items: Tensor, third: Tensor) -> Tensor:
        """BCE: (users, items, labels); BPR and softmax: (users, positives, negatives). Adds the
        L2 term (BPR and softmax: of the same users, positives and negatives).

        A model with its own objective defines ``training_loss(users, items, third)`` (e.g.
        MKRLN's policy gradient over the batch's users); it then replaces all of the above."""
        cfg, model = self.config, self.model
        custom = getattr(model, "training_loss", None)
        if custom is not None:
            return custom(users, items, third)
        if cfg.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(model(users, items), third)
            reg_users, reg_items = users, items
        else:  # BPR and softmax: (users, positives, negatives), penalised together
            reg_users, reg_items = torch.cat([users, users]), torch.cat([items, third])  # [2B]
        if cfg.loss == "bpr":  # one forward over positives and negatives together
            positive, negative = model(reg_users, reg_items).split(len(users))  # [B] each
            loss = -F.logsigmoid(positive - negative).mean()
        elif cfg.loss == "softmax":  # the batch's positives and negatives: every user's candidates
            logits = model.score_matrix(users, reg_items) / cfg.temperature  # [B, 2B]
            diagonal = torch.arange(len(users), device=users.device)  # [B] own positive's column
            # another copy of the user's own positive is not a negative
            same = reg_items.unsqueeze(0) == items.unsqueeze(1)  # [B, 2B]
            same[diagonal, diagonal] = False
            loss = F.cross_entropy(logits.masked_fill(same, float("-inf")), diagonal)
        if cfg.l2:
            loss = loss + cfg.l2 * model.regularization(reg_users, reg_items)
        extra = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
        if extra is not None:  # e.g. KGAT's KG-embedding loss, weighted by the model
            loss = loss + extra
        return loss

    def _evaluate(self, stage: Stage) -> tuple[dict[str, float], float]:
        """(metrics, seconds) of the protocol's evaluation on ``stage``."""
        start = time.perf_counter()
        if self.split.protocol == "ctr":
            metrics = evaluate_ctr(self.model, self.split, stage, device=self.device)
            if stage == "test":  # also rank all items for the test positives (both views)
                ranked, _ = evaluate_topk(self.model, self.split, stage, self.ks,
                                          self.config.eval_batch_users, self.device)
                metrics.update(ranked)
        else:
            metrics, _ = evaluate_topk(self.model, self.split, stage, self.ks,
                                       self.config.eval_batch_users, self.device)
        return metrics, time.perf_counter() - start

    # ---- files ----------------------------------------------------------------------------------
    def _save_model(self, directory: Path, metrics: dict | None = None,
                    extra: dict | None = None) -> None:
        staging = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        self._write_checkpoint(staging, metrics=metrics, extra=extra)
        replace_directory(staging, directory)

    def _write_checkpoint(self, directory: Path, metrics=None, extra=None) -> None:
        config = getattr(self.model, "config", None)
        save_checkpoint(
            directory, self.model, model_name=self.model_name,
            model_config=config.model_dump(mode="json") if isinstance(config, BaseModel) else {},
            train_config=self.config.model_dump(mode="json"), split=self.split,
            dataset=self.dataset, metrics=metrics, extra=extra)

    def _save_last(self, state: dict, optimizer) -> None:
        """Write ``last/`` atomically: weights, optimizer, RNGs, trainer state, best weights."""
        assert self.out_dir is not None  # only called with an out_dir
        final = self.out_dir / "last"
        staging = final.with_name("last.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_optimizer(staging, optimizer)
        save_rng_state(staging, self.rng)
        best = self.out_dir / "best"
        if state["best_epoch"]:
            link_or_copy(best / WEIGHTS, staging / BEST_IN_LAST)
            state["best_weights"] = json.loads((best / "checkpoint.json").read_text())["weights"]
        self._write_checkpoint(staging, extra={"trainer": state})  # checkpoint.json last
        replace_directory(staging, final)

    def _resume(self, last: Path, optimizer) -> tuple[dict, tuple | None]:
        """Restore model, optimizer, RNGs and trainer state from ``last``."""
        _, meta = load_checkpoint(last, self.model, dataset=self.dataset, split=self.split)
        check_resumable(last, meta, self.config, self.model)
        if optimizer is not None:
            load_optimizer(last, optimizer)
        load_rng_state(last, self.rng)
        state = meta["extra"]["trainer"]
        if state["stop_reason"] in ("epochs", "time limit") and state["epoch"] < self.config.epochs:
            state["stop_reason"] = None  # more epochs were asked for: keep going
        best_weights = None
        if state["best_epoch"]:
            weights = state["best_weights"]
            tensors = load_tensors(last / BEST_IN_LAST, weights["sha256"], weights["aliases"])
            best_weights = best_state(tensors, meta)
        rewrite_log(self._writer, state["log"])
        return state, best_weights

    def _clear_out_dir(self) -> None:
        """A fresh run: drop the state and log of an earlier run in the same out_dir."""
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("last", "last.old", "last.tmp", "best", "best.old", "best.tmp"):
            shutil.rmtree(self.out_dir / name, ignore_errors=True)
        for name in ("log.jsonl", "metrics.json", "curve.png"):
            (self.out_dir / name).unlink(missing_ok=True)
