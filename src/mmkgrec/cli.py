"""The ``mmkgrec`` command line: a thin layer over the Python API.

Every command calls a plain function of :mod:`mmkgrec.data` (and later models / train / serve).
Failures the user can fix exit with code 2 and a one-paragraph message, never a traceback
(set ``MMKGREC_DEBUG=1`` to see one).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from mmkgrec import __version__
from mmkgrec.allocator import retain_freed_memory
from mmkgrec.errors import MMKGRecError, run_command
from mmkgrec.features.cli import app as features_app
from mmkgrec.features.cli import attach_command
from mmkgrec.serve.cli import export_feedback, serve

app = typer.Typer(
    help="mmkgrec: music recommendation from multi-modal knowledge graphs (MKGCN and peers).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
data_app = typer.Typer(help="Datasets: statistics, conversion, download, splits.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
data_app.command("attach-features")(attach_command)
app.command("serve")(serve)
app.command("export-feedback")(export_feedback)
console = Console()

SOURCE_OPTION = typer.Option(None, "--source", help="Directory holding the dataset folders "
                             "(default: $MMKGREC_DATA, ../shared/data, then the download cache).")
SEED_OPTION = typer.Option(0, "--seed", help="Seed (synthetic generator, splits).")


class TargetFormat(str, Enum):
    native = "native"
    recbole = "recbole"


class ContentScope(str, Enum):
    all = "all"
    train = "train"
    no_eval = "no-eval"


CONTENT_SCOPE_OPTION = typer.Option(
    ContentScope.train, "--content-scope", help="Where user-contributed content (the HetRec "
    "tags of lastfm-kgcn-content / -tags) comes from: train (default: train positives' tags "
    "only), no-eval (all but the valid / test positives' tags) or all (every tag: a labelled "
    "upper bound that sees held-out plays).")
CANDIDATES_OPTION = typer.Option(
    None, "--candidates", help="Items ranked: all, positive (items with a positive in the split, "
    "as RecBole ranks; topk default), new (cold default: every song without a train positive) "
    "or held-out (cold: only the stage's held-out songs). Default: the protocol's.")
THRESHOLD_OPTION = typer.Option(
    None, "--threshold", help="A positive is an interaction with value >= THRESHOLD (play count, "
    "rating); default: the dataset's own (docs/data.md).")


class MmkgMode(str, Enum):
    attribute = "attribute"
    entity = "entity"


MMKG_OPTION = typer.Option(
    MmkgMode.attribute, "--mmkg", help="attribute (content stays item features) or entity "
    "(tags, moods and content clusters become KG entities, built per split from its train "
    "items).")


class Protocol(str, Enum):
    ctr = "ctr"
    topk = "topk"
    cold = "cold"


@app.command()
def version() -> None:
    """Print the installed version."""
    console.print(f"mmkgrec {__version__}")


@data_app.command("list")
def data_list() -> None:
    """List the named datasets and where their files were found."""
    from mmkgrec.data.registry import datasets, locate
    from mmkgrec.data.synthetic import PRESETS

    table = Table(title="datasets")
    for column in ("name", "description", "files"):
        table.add_column(column)
    for spec in datasets().values():
        try:
            where = ", ".join(str(locate(folder)) for folder in spec.needs)
        except MMKGRecError:
            where = f"not found (mmkgrec data fetch {' '.join(spec.needs)})"
        table.add_row(spec.name, spec.description, where)
    for preset in PRESETS:
        table.add_row(f"synthetic-{preset}", "embedded synthetic music MMKG", "generated")
    console.print(table)


@data_app.command("stats")
def data_stats(
    name: str = typer.Argument(..., help="Dataset name (see `mmkgrec data list`) or directory."),
    source: Path | None = SOURCE_OPTION,
    seed: int = SEED_OPTION,
    threshold: float | None = THRESHOLD_OPTION,
) -> None:
    """Print the counts of a dataset: users, items, entities, relations, triples, positives."""
    from mmkgrec.data import load

    with console.status(f"loading {name}"):
        dataset = load(name, source=source, seed=seed, threshold=threshold)
    table = Table(title=f"{dataset.name}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in dataset.summary().items():
        text = f"{value:,}" if isinstance(value, int) else (
            f"{value:.6g}" if isinstance(value, float) else str(value))
        table.add_row(key, text)
    console.print(table)
    for note in dataset.notes:
        console.print(f"[dim]note:[/] {note}")
    for record in dataset.provenance:
        console.print(f"[dim]source ({record['role']}):[/] {record['file']} sha256 "
                      f"{record['sha256'][:12]}…", soft_wrap=True, highlight=False)


@data_app.command("convert")
def data_convert(
    src: str = typer.Argument(..., help="Dataset name or directory (any supported format)."),
    dst: Path = typer.Argument(..., help="Output directory."),
    to: TargetFormat = typer.Option(..., "--to", help="Output format."),
    source: Path | None = SOURCE_OPTION,
    seed: int = SEED_OPTION,
) -> None:
    """Convert a dataset to the native Parquet format or to RecBole atomic files."""
    from mmkgrec.data import load
    from mmkgrec.data.formats import convert

    with console.status(f"reading {src}"):
        dataset = load(src, source=source, seed=seed)
    out = convert(dataset, dst, to.value)
    console.print(f"wrote {dataset.name} ({dataset.n_users:,} users, {dataset.n_items:,} items, "
                  f"{len(dataset.triples):,} triples) as {to.value} to {out}")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="lastfm-kgcn, music-d or hetrec-lastfm-2k."),
    dest: Path | None = typer.Option(None, "--dest", help="Target folder (default: the cache)."),
    mirror: str | None = typer.Option(None, "--mirror", help="Base URL replacing the original."),
) -> None:
    """Download a public dataset's original files, verifying their pinned sha256."""
    from mmkgrec.data.registry import fetch

    with console.status(f"fetching {name}"):
        path = fetch(name, dest=dest, base_url=mirror)
    console.print(f"{name}: files verified in {path}")


@data_app.command("build-mmkg")
def data_build_mmkg(
    name: str = typer.Argument(..., help="Dataset name or directory (with modalities / tags)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the native dataset to."),
    mode: MmkgMode = typer.Option(..., "--mode", help="attribute (features stay item "
                                  "attributes) or entity (tags, moods and content clusters "
                                  "become KG entities)."),
    clusters: int = typer.Option(32, "--clusters", min=2, help="k-means clusters per modality."),
    min_tag_items: int = typer.Option(2, "--min-tag-items", min=1, help="Drop tags on fewer items."),
    keep_modalities: bool = typer.Option(False, "--keep-modalities", help="entity: keep the "
                                         "feature matrices as attributes too."),
    content_scope: ContentScope = CONTENT_SCOPE_OPTION,
    protocol: Protocol = typer.Option(Protocol.topk, "--protocol", help="The split the content "
                                      "is scoped to (with --seed), saved as OUT/split."),
    presplit: Path | None = typer.Option(None, "--presplit", help="Folder with "
                                            "train/valid/test.tsv to scope the content to."),
    source: Path | None = SOURCE_OPTION,
    seed: int = SEED_OPTION,
    threshold: float | None = THRESHOLD_OPTION,
) -> None:
    """Build the attribute-based or entity-based MMKG of a dataset and write it (native format).

    User-contributed content (tags) is first scoped to one split (--content-scope; default:
    train positives' tags only) and content clusters are fitted on that split's train items; the
    split is saved as OUT/split (train/valid/test.tsv, original ids) so that training on OUT uses
    exactly it: `mmkgrec train --dataset OUT --protocol topk --presplit OUT/split`.
    """
    from mmkgrec.data import load
    from mmkgrec.data.formats.native import write_native
    from mmkgrec.data.split import apply_presplit
    from mmkgrec.data.split import split as make_split
    from mmkgrec.features.content import has_user_content, scope_content
    from mmkgrec.graph.mmkg_build import build_mmkg

    dataset = load(name, source=source, seed=seed, threshold=threshold)
    fit_items = None
    if has_user_content(dataset) or mode is MmkgMode.entity:
        parts = (apply_presplit(dataset, presplit) if presplit is not None
                 else make_split(dataset, protocol=protocol.value, seed=seed))
        dataset, parts = scope_content(dataset, parts, content_scope.value)
        fit_items = parts.item_popularity() > 0
        if has_user_content(dataset) and content_scope is not ContentScope.all:
            for key in ("content hetrec dir", "hetrec dir"):  # scoped once, for this split
                dataset.meta.pop(key, None)
        parts.save(out / "split")
        _write_presplit(dataset, parts, out / "split")
    built = build_mmkg(dataset, mode.value, clusters=clusters, min_tag_items=min_tag_items,
                       keep_modalities=keep_modalities, seed=seed, fit_items=fit_items)
    write_native(built, out)
    table = Table(title=f"{built.name}: {mode.value}-based MMKG")
    for column in ("entities", "relations", "triples", "modalities"):
        table.add_column(column, justify="right")
    table.add_row(f"{dataset.n_entities:,} -> {built.n_entities:,}",
                  f"{dataset.n_relations} -> {built.n_relations}",
                  f"{len(dataset.triples):,} -> {len(built.triples):,}",
                  ", ".join(built.modalities) or "none")
    console.print(table)
    if mode is MmkgMode.entity:
        console.print(f"[dim]note:[/] {built.notes[-1]}")
    if fit_items is not None:
        same = (f"--presplit {out / 'split'}" if protocol is Protocol.topk or presplit
                else f"--protocol {protocol.value} --seed {seed}")
        console.print(f"content scoped ({built.meta.get('content scope', content_scope.value)}) "
                      f"to the split saved in {out / 'split'}; train on that split: {same}",
                      highlight=False)
    console.print(f"saved to {out}")


def _write_presplit(dataset, parts, folder: Path) -> None:
    """train/valid/test.tsv (original ids, the play value) of a topk-style split."""
    import pandas as pd

    values = dataset.positives().set_index(["user", "item"])["value"]
    for name in ("train", "valid", "test"):
        frame = parts.positives(name)
        pd.DataFrame({"user_id": dataset.users[frame["user"]], "item_id": dataset.items[frame["item"]],
                      "rating": values.reindex(pd.MultiIndex.from_frame(frame)).to_numpy()}
                     ).to_csv(folder / f"{name}.tsv", sep="\t", index=False)


@data_app.command("split")
def data_split(
    name: str = typer.Argument(..., help="Dataset name or directory."),
    out: Path = typer.Option(..., "--out", help="Directory to write the split to."),
    protocol: Protocol = typer.Option(Protocol.topk, "--protocol", help="ctr (6:2:2 with negatives), "
                                      "topk (per-user 8:1:1 of positives) or cold (8:1:1 of items: "
                                      "new songs are ranked for users)."),
    presplit: Path | None = typer.Option(None, "--presplit", help="Folder with train/valid/test.tsv "
                                            "to apply instead of splitting."),
    temporal: bool = typer.Option(False, "--temporal", help="topk: latest positives go to test."),
    source: Path | None = SOURCE_OPTION,
    seed: int = SEED_OPTION,
) -> None:
    """Split a dataset under a leak-free protocol and save the split."""
    from mmkgrec.data import load
    from mmkgrec.data.split import apply_presplit, split

    dataset = load(name, source=source, seed=seed)
    parts = (apply_presplit(dataset, presplit) if presplit is not None
             else split(dataset, protocol=protocol.value, seed=seed, temporal=temporal))
    parts.save(out)
    table = Table(title=f"{dataset.name}: {parts.protocol} split")
    for column in ("part", "rows", "users"):
        table.add_column(column, justify="right")
    for part in ("train", "valid", "test"):
        frame = getattr(parts, part)
        table.add_row(part, f"{len(frame):,}", f"{frame['user'].nunique():,}")
    console.print(table)
    for note in parts.notes:
        console.print(f"[dim]note:[/] {note}")
    console.print(f"saved to {out}")


def _check_model(name: str) -> str:
    """A registered model name; the registry (and torch) is imported only when a command runs,
    so ``mmkgrec --help`` stays fast."""
    from mmkgrec.models import MODELS

    if name not in MODELS:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(map(repr, MODELS))}")
    return name


@app.command()
def train(
    model: str = typer.Option("mkgcn", "--model", callback=_check_model,
                              help="Model to train (a registered name: mkgcn, kgcn, lightgcn, ...)."),
    dataset: str = typer.Option("synthetic", "--dataset", help="Dataset name or directory."),
    protocol: Protocol = typer.Option(Protocol.ctr, "--protocol", help="ctr, topk or cold."),
    presplit: Path | None = typer.Option(None, "--presplit", help="Folder with "
                                            "train/valid/test.tsv (topk) to use as the split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the model and training."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Run directory to write."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with [model] / "
                                          "[train] tables overriding the defaults."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE override of a model or "
                                        "train option, e.g. --set dim=32 --set epochs=5."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    content_scope: ContentScope = CONTENT_SCOPE_OPTION,
    candidates: str | None = CANDIDATES_OPTION,
    threshold: float | None = THRESHOLD_OPTION,
    mmkg: MmkgMode = MMKG_OPTION,
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine: DDP via "
                              "torchrun (one per GPU on CUDA); several machines: docs/scaling.md."),
    source: Path | None = SOURCE_OPTION,
) -> None:
    """Train a model, early-stop on validation, evaluate test once; write a run directory."""
    from mmkgrec.train.distributed import is_main_process, launch
    from mmkgrec.train.run import RunSpec, parse_overrides, read_config_file, run_experiment

    if nproc > 1:  # re-run this command (minus --nproc) under torchrun
        raise typer.Exit(launch(nproc, _ARGV))

    file_model, file_train = read_config_file(config) if config else ({}, {})
    set_model, set_train = parse_overrides(overrides, model)
    spec = RunSpec(model=model, dataset=dataset, protocol=protocol.value, seed=seed,
                   source=str(source) if source else None,
                   presplit=str(presplit) if presplit else None,
                   content_scope=content_scope.value, candidates=candidates,
                   threshold=threshold, mmkg=mmkg.value,
                   model_options={**file_model, **set_model},
                   train_options={**file_train, **set_train})
    run = run_experiment(spec, out, resume=resume)
    if is_main_process():  # under torchrun only rank 0 reports
        _print_metrics(f"{model} on {run.dataset.name} ({run.split.protocol})", run.metrics or {})
        console.print(f"run directory: {out}")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run directory written by `mmkgrec train`."),
    stage: str = typer.Option("test", "--stage", help="valid or test."),
) -> None:
    """Re-evaluate a trained run on its own split (valid or test)."""
    from mmkgrec.evaluate.ranking import evaluate_ctr, evaluate_topk
    from mmkgrec.train.run import load_run

    run = load_run(run_dir)
    if stage not in ("valid", "test"):
        raise MMKGRecError(f"--stage must be valid or test, not {stage!r}")
    part: Literal["valid", "test"] = "valid" if stage == "valid" else "test"
    metrics = (evaluate_ctr(run.model, run.split, part) if run.split.protocol == "ctr" else {})
    topk, _ = evaluate_topk(run.model, run.split, part, ks=(5, 10, 20, 50))
    _print_metrics(f"{run.spec.model} on {run.dataset.name}: {stage}", {stage: {**metrics, **topk}})


@app.command()
def recommend(
    run_dir: Path = typer.Argument(..., help="Run directory written by `mmkgrec train`."),
    user: str | None = typer.Option(None, "--user", help="Original user id."),
    liked: str | None = typer.Option(
        None, "--liked", help="Comma-separated item ids of a new listener (models that build "
        "users from items serve them without retraining: mkgcn, mmkgcf, mkrln, pgpr)."),
    k: int = typer.Option(10, "--k", min=1, help="How many items."),
) -> None:
    """Recommend items to a known user or to a new listener given liked items."""
    from mmkgrec.train.run import load_run
    from mmkgrec.train.run import recommend as recommend_items

    run = load_run(run_dir)
    frame = recommend_items(run, user=user, liked=liked.split(",") if liked else None, k=k)
    who = f"user {user}" if user is not None else f"a new listener who liked {liked}"
    _print_frame(f"top {k} for {who} ({run.spec.model})", frame)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo's runs go."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    dataset: str = typer.Option("synthetic", "--dataset", help="Another synthetic preset "
                                "(e.g. synthetic-tiny) or dataset."),
) -> None:
    """Train MMKG-CF, MKGCN, KGCN, LightGCN and popularity on the embedded synthetic MMKG."""
    from mmkgrec.train.demo import run_demo

    run_demo(out, seed=seed, console=console, dataset_name=dataset)



@app.command()
def benchmark(
    datasets: str = typer.Option(..., "--datasets", help="Comma-separated dataset names."),
    models: str = typer.Option("all", "--models", help="Comma-separated models, or 'all' "
                               "(every registered model)."),
    protocol: Protocol = typer.Option(Protocol.topk, "--protocol",
                                      help="topk, ctr or cold (item cold start)."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds 0..N-1; seed s = split s "
                              "(shared by all models) and model seed s."),
    out: Path = typer.Option(..., "--out", help="Benchmark folder; rerunning resumes it."),
    presplit_root: Path | None = typer.Option(None, "--presplit-root", help="Folder with "
                                                 "<dataset>/{train,valid,test}.tsv (topk)."),
    recbole_reference: bool = typer.Option(False, "--recbole-reference", help="Add RecBole's "
                                           "rows from recbole-splits/README.md."),
    tuned: Path | None = typer.Option(None, "--tuned", help="Folder of `mmkgrec tune` "
                                         "configs (<dataset>/<model>.toml)."),
    tune_trials: int | None = typer.Option(None, "--tune-trials", min=1, help="First tune "
                                              "every model with this many Optuna trials on "
                                              "validation (equal budget), into --tuned (default "
                                              "OUT/tuned); existing tuned files are reused."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE for every model that has "
                                        "KEY: model.KEY, train.KEY, or <model>.KEY for one."),
    content_scope: ContentScope = CONTENT_SCOPE_OPTION,
    candidates: str | None = CANDIDATES_OPTION,
    threshold: float | None = THRESHOLD_OPTION,
    mmkg: MmkgMode = MMKG_OPTION,
    source: Path | None = SOURCE_OPTION,
    report_only: bool = typer.Option(False, "--report-only", help="Run nothing: rewrite the "
                                     "report of these cells from those saved in --out."),
) -> None:
    """Compare models on identical splits over seeds: tables, significance, breakdowns, plots.

    --datasets takes registry names, directories (labelled by their folder name) or LABEL=DIR."""
    from mmkgrec.experiments.benchmark import BenchmarkSpec, report_saved, run_benchmark

    spec = BenchmarkSpec.parse(
        datasets=[d for d in datasets.split(",") if d], models=[m for m in models.split(",") if m],
        protocol=protocol.value, seeds=list(range(seeds)),
        presplit_root=str(presplit_root) if presplit_root else None,
        recbole_reference=recbole_reference, tuned=str(tuned) if tuned else None,
        tune_trials=tune_trials,
        overrides=overrides, source=str(source) if source else None,
        content_scope=content_scope.value, candidates=candidates, threshold=threshold,
        mmkg=mmkg.value)
    report = report_saved(spec, out) if report_only else run_benchmark(spec, out, console=console)
    from rich.markdown import Markdown

    text = report.read_text(encoding="utf-8")
    console.print(Markdown("\n".join(line for line in text.splitlines()
                                     if not line.startswith("!["))))
    console.print(f"report: {report}; rows: {out / 'results.csv'}")


@app.command()
def tune(
    model: str = typer.Argument(..., help="Model to tune (see the registry)."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset name or directory."),
    protocol: Protocol = typer.Option(Protocol.topk, "--protocol", help="topk (valid NDCG@20) "
                                      "or ctr (valid AUC)."),
    trials: int = typer.Option(20, "--trials", min=1, help="Optuna trials."),
    presplit: Path | None = typer.Option(None, "--presplit", help="Folder with "
                                            "train/valid/test.tsv (topk)."),
    out: Path = typer.Option(..., "--out", help="Tuned-configs folder (for benchmark --tuned)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the models and TPE."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE fixed in every trial."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after this many "
                                            "seconds (finishing the running trial)."),
    content_scope: ContentScope = CONTENT_SCOPE_OPTION,
    candidates: str | None = CANDIDATES_OPTION,
    threshold: float | None = THRESHOLD_OPTION,
    mmkg: MmkgMode = MMKG_OPTION,
    source: Path | None = SOURCE_OPTION,
) -> None:
    """Search a model's hyper-parameters (Optuna TPE) on the validation metric, never test."""
    from mmkgrec.experiments.tune import TuneSpec
    from mmkgrec.experiments.tune import tune as run_tune
    from mmkgrec.models import model_class

    model_class(model)
    spec = TuneSpec(model=model, dataset=dataset, protocol=protocol.value, trials=trials,
                    seed=seed, presplit=str(presplit) if presplit else None,
                    source=str(source) if source else None, overrides=overrides,
                    timeout_s=timeout, content_scope=content_scope.value,
                    candidates=candidates, threshold=threshold, mmkg=mmkg.value)
    result = run_tune(spec, out, progress=sys.stdout.isatty())
    console.print(f"best valid {result['monitor']} {result['best_value']:.4f} with "
                  f"{result['best_params']}", highlight=False, soft_wrap=True)
    console.print(f"config: {result['config_path']}\ntrials: {result['trials_path']}")

def _print_metrics(title: str, metrics: dict) -> None:
    parts = [p for p in ("valid", "test") if isinstance(metrics.get(p), dict)]
    names = [m for m in ("auc", "f1", "accuracy", "recall@10", "recall@20", "ndcg@10", "ndcg@20",
                         "hit@20", "mrr@20") if any(m in metrics[p] for p in parts)]
    table = Table(title=title)
    table.add_column("metric")
    for part in parts:
        table.add_column(part, justify="right")
    for name in names:
        table.add_row(name, *[f"{metrics[p][name]:.4f}" if name in metrics[p] else "" for p in parts])
    console.print(table)
    if "train_seconds_per_epoch" in metrics:
        console.print(f"{metrics['epochs_run']} epochs, best {metrics['best_epoch']} "
                      f"({metrics['stop_reason']}); {metrics['train_seconds_per_epoch']:.2f} s/epoch; "
                      f"test evaluation {metrics['eval_seconds']['test']:.2f} s")


def _print_frame(title: str, frame) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right" if column in ("rank", "score") else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


_ARGV: list[str] = []  # the arguments main() was called with (train --nproc re-runs them)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit code 2 with a one-paragraph message on any user error.

    Usage errors are typer's own (also exit code 2); our errors, I/O and value errors are caught
    here so that no traceback reaches the user unless MMKGREC_DEBUG is set.
    """
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    retain_freed_memory()
    run_command(lambda: app(args=argv, prog_name="mmkgrec"))
