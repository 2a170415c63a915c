"""Hyper-parameter search with Optuna (seeded TPE) on the VALIDATION metric, never on test.

The search space of a model is the ``[search]`` table of its ``configs/<model>.toml``, one entry
per option (a field of the model's Config or of TrainConfig; ``model.`` / ``train.`` may prefix
a name that is both)::

    [search]
    lr = {low = 1e-4, high = 1e-1, log = true}    # float (int when low and high are integers)
    dim = {choices = [16, 32, 64]}                 # categorical
    knn = {choices = [5, 10], when = "content_route=latent"}  # only when that option holds

A model without one gets :data:`GENERIC_SPACE` (lr, l2, dim; only the options it has). A loss
fixed for the search adds its own options (:data:`LOSS_SPACE`: ``--set loss=softmax`` searches
the temperature too, for every model alike). Each trial
trains with ``Trainer.fit(evaluate_test=False)`` and reports the best validation NDCG@20 (topk)
or AUC (ctr). The best options are written as ``OUT/<dataset>/<model>.toml`` (``[model]`` /
``[train]``: every effective option of the best trial, defaults included, except ``seed`` and
``device``; read by ``mmkgrec benchmark --tuned OUT``), every trial as ``<model>-trials.csv``.
The study itself is journalled in ``<model>-study.jsonl``: a search stopped part-way resumes
with the trials it lacks (an uninterrupted search is reproducible from the TPE seed; a resumed
one continues from the trials stored, its sampler seeded with the seed plus their number, so
that it does not draw the first trials' points again). A trial the stop cut off is run again
first, at its point: otherwise the slowest configurations, the ones a stop is likeliest to
interrupt, would drop out of the search.
"""

from __future__ import annotations

import json
import math
import time
from importlib import resources
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field

from mmkgrec.config import file_slug, tomllib
from mmkgrec.errors import ConfigError
from mmkgrec.models import model_class
from mmkgrec.train.run import RunSpec, build_model, parse_overrides, prepare_data, resolved_configs
from mmkgrec.train.trainer import TrainConfig, Trainer

GENERIC_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "l2": {"low": 1e-6, "high": 1e-2, "log": True},
    "dim": {"choices": [16, 32, 64]},
}
#: options a fixed loss brings into every model's space (``--set loss=softmax``: the same
#: temperature search for every model compared)
LOSS_SPACE = {"softmax": {"temperature": {"low": 0.05, "high": 1.0, "log": True}}}
NOT_SAVED = {"seed", "device"}  # per-run / per-machine options stay out of the tuned file


class TuneSpec(BaseModel):
    """What to tune; ``overrides`` (KEY=VALUE) are fixed for every trial."""

    model_config = ConfigDict(extra="forbid")

    model: str
    dataset: str
    protocol: str = "topk"
    trials: int = Field(20, ge=1)
    seed: int = Field(0, ge=0)  # the split's and the sampler's seed
    presplit: str | None = None
    source: str | None = None
    overrides: list[str] = []
    timeout_s: float | None = Field(None, gt=0)
    content_scope: Literal["train", "no-eval", "all"] = "train"  # as RunSpec
    candidates: str | None = None
    threshold: float | None = None
    mmkg: Literal["attribute", "entity"] = "attribute"
    label: str | None = None  # the dataset's name in OUT/<label>/ (default: from `dataset`)


def search_space(model: str) -> dict[str, tuple[str, dict]]:
    """``{option: (scope, distribution)}`` of ``model``; scope is ``"model"`` or ``"train"``.

    Raises:
        ConfigError: an entry names an unknown option or is neither a range nor choices.
    """
    cls = model_class(model)
    path = resources.files("mmkgrec.models").joinpath("configs", f"{model}.toml")
    raw = tomllib.loads(path.read_text()) if path.is_file() else {}
    declared = raw.get("search")
    if declared is None:  # generic space, restricted to the options this model has
        trainable = getattr(cls, "trainable", True)
        declared = {k: v for k, v in GENERIC_SPACE.items() if k in cls.Config.model_fields
                    or (trainable and k in TrainConfig.model_fields)}
    return parse_space(model, declared, f"{path} [search]")


# ``needs = PART`` in a [search] entry: the option acts on this MMKG attribute only.
DATASET_PARTS = ("triples", "user_triples", "user_links", "modalities", "item_tag_links")


def parse_space(model: str, declared: dict, where: str = "[search]") -> dict[str, tuple[str, dict]]:
    """Validate a ``[search]`` table of ``model`` (see :func:`search_space`); ``where`` names it
    in error messages."""
    model_fields = set(model_class(model).Config.model_fields)
    train_fields = set(TrainConfig.model_fields)
    space = {}
    for key, dist in declared.items():
        scope, _, name = key.rpartition(".")
        if scope not in ("", "model", "train"):
            raise ConfigError(f"{where}: {key!r}: prefix must be model. or train.")
        scope = scope or ("model" if name in model_fields else "train")
        if name not in (model_fields if scope == "model" else train_fields):
            raise ConfigError(f"{where}: {key!r} is not an option of {model} "
                              f"({sorted(model_fields)}) nor of training ({sorted(train_fields)})")
        if not isinstance(dist, dict) or not ("choices" in dist or {"low", "high"} <= set(dist)):
            raise ConfigError(f"{where}: {key!r} must be {{low=.., high=.., log=..}} or "
                              f"{{choices=[..]}}, got {dist!r}")
        condition = dist.get("when")
        if condition is not None:
            option, equals, _ = str(condition).partition("=")
            if not equals or option not in model_fields | train_fields:
                raise ConfigError(f"{where}: {key!r}: when must be 'OPTION=VALUE' with an option "
                                  f"of {model} or of training, got {condition!r}")
        needs = dist.get("needs")
        if needs is not None and needs not in DATASET_PARTS:
            raise ConfigError(f"{where}: {key!r}: needs must be one of {list(DATASET_PARTS)} "
                              f"(a part of the dataset the option acts on), got {needs!r}")
        space[name] = (scope, dict(dist))
    return space


def applicable(space: dict[str, tuple[str, dict]], dataset) -> dict[str, tuple[str, dict]]:
    """``space`` without the entries whose ``needs = PART`` is empty in ``dataset`` (e.g. the
    weight of user-side KG facts on a dataset without any): such an option changes no score, and
    searching it would only spend TPE's trials. ``needs`` is dropped from the entries kept."""
    kept = {}
    for name, (scope, entry) in space.items():
        dist = dict(entry)
        needs = dist.pop("needs", None)
        if needs is None or len(getattr(dataset, needs)):
            kept[name] = (scope, dist)
    return kept


def conditional(space: dict[str, tuple[str, dict]], model: str, fixed_model: dict,
                fixed_train: dict) -> dict[str, tuple[str, dict]]:
    """``space`` without the entries whose ``when = "OPTION=VALUE"`` does not hold for the
    options fixed for the search (``--set``, else the option's default); ``when`` is dropped
    from the entries kept, so an unconditional space is unchanged."""
    model_fields, kept = model_class(model).Config.model_fields, {}
    for name, (scope, dist) in space.items():
        condition = dist.pop("when", None)
        if condition is not None:
            option, _, wanted = str(condition).partition("=")
            if option in model_fields:
                value = fixed_model.get(option, model_fields[option].default)
            else:
                value = fixed_train.get(option, TrainConfig.model_fields[option].default)
            try:
                expected = json.loads(wanted)
            except json.JSONDecodeError:
                expected = wanted  # a bare string: when = "content_route=latent"
            if value != expected:
                continue
        kept[name] = (scope, dist)
    return kept


def suggest(trial, space: dict[str, tuple[str, dict]]) -> tuple[dict, dict]:
    """One trial's (model options, train options) drawn from ``space``."""
    chosen: dict[str, dict] = {"model": {}, "train": {}}
    for name, (scope, dist) in space.items():  # a handful of options
        if "choices" in dist:
            # Optuna stores scalars only: lists (e.g. layer widths) travel as JSON text.
            encoded = [json.dumps(c) if isinstance(c, (list, dict)) else c
                       for c in dist["choices"]]
            value = trial.suggest_categorical(name, encoded)
            if isinstance(value, str) and value[:1] in ("[", "{"):
                value = json.loads(value)
        elif isinstance(dist["low"], int) and isinstance(dist["high"], int):
            value = trial.suggest_int(name, dist["low"], dist["high"], log=dist.get("log", False),
                                      step=dist.get("step", 1))
        else:
            value = trial.suggest_float(name, float(dist["low"]), float(dist["high"]),
                                        log=dist.get("log", False), step=dist.get("step"))
        chosen[scope][name] = value
    return chosen["model"], chosen["train"]


def tune(spec: TuneSpec, out_dir: str | Path, *, progress: bool = False) -> dict:
    """Search ``spec.model``'s options on ``spec.dataset``; write the best config and trials.

    Args:
        spec: model, dataset, protocol, number of trials, seed, fixed overrides.
        out_dir: the tuned-configs folder; writes ``<dataset>/<model>.toml`` and
            ``<dataset>/<model>-trials.csv``.
        progress: Optuna's progress bar.

    Returns:
        ``{"best_value", "best_params", "monitor", "config_path", "trials_path"}``.
    """
    optuna = _import_optuna()
    fixed_model, fixed_train = parse_overrides(spec.overrides, spec.model)
    # an option fixed by --set is not searched (it would otherwise be drawn over)
    declared = {**search_space(spec.model), **{
        name: ("train", dict(dist))
        for name, dist in LOSS_SPACE.get(str(fixed_train.get("loss")), {}).items()}}
    declared = conditional(declared, spec.model, fixed_model, fixed_train)
    space = {name: entry for name, entry in declared.items()
             if name not in (fixed_model if entry[0] == "model" else fixed_train)}
    base = RunSpec(model=spec.model, dataset=spec.dataset, source=spec.source,
                   protocol=spec.protocol, presplit=spec.presplit, seed=spec.seed,
                   content_scope=spec.content_scope, candidates=spec.candidates,
                   threshold=spec.threshold, mmkg=spec.mmkg)
    dataset, data_split = prepare_data(base)  # the same data path as a single run
    space = applicable(space, dataset)
    monitor = "auc" if data_split.protocol == "ctr" else "ndcg@20"

    def trial_spec(model_options: dict, train_options: dict) -> RunSpec:
        return base.model_copy(update={"model_options": {**fixed_model, **model_options},
                                       "train_options": {**fixed_train, **train_options}})

    def objective(trial) -> float:
        run_spec = trial_spec(*suggest(trial, space))
        model_cfg, train_cfg = resolved_configs(run_spec)
        model = build_model(run_spec, dataset, data_split, model_cfg)
        result = Trainer(model, data_split, train_cfg, None, dataset=dataset,
                         progress=False).fit(evaluate_test=False)
        trial.set_user_attr("best_epoch", result["best_epoch"])
        trial.set_user_attr("train_s_per_epoch", result["train_seconds_per_epoch"])
        value = result["valid"][monitor]
        return value if math.isfinite(value) else float("-inf")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(out_dir) / file_slug(spec.label or spec.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    study = _open_study(optuna, folder / f"{spec.model}-study.jsonl", spec, space)
    start = time.perf_counter()
    n_trials = spec.trials if space else 1  # nothing to search: one trial is the answer
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if done < n_trials:  # an interrupted search resumes with the trials it lacks
        study.optimize(objective, n_trials=n_trials - done, timeout=spec.timeout_s,
                       show_progress_bar=progress)

    # the full effective options of the best trial (defaults with every override resolved)
    best = trial_spec(*suggest(optuna.trial.FixedTrial(study.best_params), space))
    model_cfg, train_cfg = resolved_configs(best)
    model_options = model_cfg.model_dump(mode="json")
    train_options = {k: v for k, v in train_cfg.model_dump(mode="json").items()
                     if k not in NOT_SAVED}
    config_path = folder / f"{spec.model}.toml"
    header = (f"# mmkgrec tune {spec.model} on {spec.dataset} ({spec.protocol}"
              f"{', pre-split ' + spec.presplit if spec.presplit else ''}): best valid {monitor} "
              f"{study.best_value:.4f} after {len(study.trials)} trials "
              f"({time.perf_counter() - start:.0f} s), TPE seed {spec.seed}\n")
    config_path.write_text(header + to_toml({"model": model_options, "train": train_options}),
                           encoding="utf-8")
    trials_path = folder / f"{spec.model}-trials.csv"
    study.trials_dataframe().to_csv(trials_path, index=False)
    return {"best_value": study.best_value, "best_params": study.best_params,
            "monitor": monitor, "config_path": config_path, "trials_path": trials_path}


def _open_study(optuna, journal: Path, spec: TuneSpec, space: dict):
    """The search's Optuna study, stored in a journal file so that a search stopped part-way
    (a killed job, the end of a session) resumes where it stopped. A journal written for other
    settings (search space, data, options) is an error, never silently mixed in."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    identity = json.dumps({"spec": spec.model_dump(mode="json", exclude={"trials", "timeout_s"}),
                           "space": {k: [scope, dist] for k, (scope, dist) in space.items()}},
                          sort_keys=True, default=str)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="search", storage=storage, load_if_exists=True,
                                direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=spec.seed))
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != identity:
        raise ConfigError(f"{journal} holds a search with other settings; delete it (or use "
                          f"another --out) to start this one")
    if study.trials:  # resumed: a sampler reseeded as new would redraw the first trials' points
        study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials))
    _rerun_interrupted(optuna, study)
    return study


def _rerun_interrupted(optuna, study) -> None:
    """A trial still RUNNING in the journal was cut off by the stop (one writer per journal):
    mark it failed and queue its point first, so a stop never drops a slow configuration from
    the search."""
    running = optuna.trial.TrialState.RUNNING
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def to_toml(tables: dict[str, dict]) -> str:
    """``{"model": {...}, "train": {...}}`` -> TOML text (scalars and lists of scalars); None
    values are left out (TOML has no null: the option keeps its default)."""
    clean = {table: {k: v for k, v in options.items() if v is not None}
             for table, options in tables.items()}
    for options in clean.values():
        for key, value in options.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"cannot write {key} = {value} to TOML")
    try:
        return tomli_w.dumps(clean)
    except TypeError as error:
        raise ConfigError(f"cannot write to TOML: {error}") from None


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("`mmkgrec tune` needs Optuna: pip install 'mmkgrec[tune]' "
                          "(or pip install optuna)") from None
    return optuna
