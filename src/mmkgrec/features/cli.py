"""``mmkgrec features ...`` (extract, list) and ``mmkgrec data attach-features``.

Only typer and rich are imported here; the extractors load inside the commands, so that
``mmkgrec --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mmkgrec.errors import ConfigError

app = typer.Typer(help="Modal features from a catalogue: audio, lyrics / tags text, sentiment, "
                       "cover images.", no_args_is_help=True)


def _console() -> Console:
    return Console()  # created per command, so it sees the terminal width of that moment


@app.command("list")
def list_command() -> None:
    """List the feature extractors: modality, width, inputs, weights, whether they run here."""
    from mmkgrec.features.registry import EXTRACTORS

    console = _console()
    table = Table(title="feature extractors")
    for column in ("name", "modality", "width", "inputs", "weights", "available"):
        table.add_column(column, justify="right" if column == "width" else "left")
    for name, cls in EXTRACTORS.items():
        extractor = cls()
        ok, reason = extractor.available()
        table.add_row(name, extractor.modality, str(extractor.width), " | ".join(cls.inputs),
                      cls.weights, ("yes" if ok else "[red]no[/]") + f": {reason}")
    console.print(table)


@app.command("extract")
def extract_command(
    catalogue: Path = typer.Argument(..., help="Catalogue .csv / .tsv / .parquet (item_id plus "
                                     "audio_path, lyrics, lyrics_path, image_path, tags, title, "
                                     "artist)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    extractors: str | None = typer.Option(None, "--extractors", help="Comma-separated names "
                                             "(see `mmkgrec features list`); default: one or two "
                                             "per modality the catalogue has."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes."),
    train_items: Path | None = typer.Option(None, "--train-items", help="File of TRAIN item "
                                               "ids, one per line: codebooks and TF-IDF are "
                                               "fitted on these only (default: all items)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute everything; keep no cache."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Cache folder (default: "
                                             "OUT/cache)."),
    options: list[str] = typer.Option([], "--set", help="Extractor option NAME.KEY=VALUE (VALUE "
                                      "as JSON, else text), e.g. --set mfcc_bof.codebook_size=64; "
                                      "repeatable."),
) -> None:
    """Extract modality features of every catalogue item (parallel, cached by content)."""
    from mmkgrec.features.extraction import extract

    console = _console()
    names = [n.strip() for n in extractors.split(",") if n.strip()] if extractors else None
    report = extract(catalogue, out, names, options=parse_sets(options), workers=workers,
                     train_items=train_items, cache_dir=cache_dir, use_cache=not no_cache)
    table = Table(title=f"features of {report.items:,} items -> {report.out_dir}")
    for column in ("extractor", "modality", "width", "present", "computed", "cached", "failed",
                   "absent"):
        left = column in ("extractor", "modality")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for r in report.extractors.values():
        table.add_row(r.name, r.modality, str(r.width), *(f"{v:,}" for v in (
            r.present, r.computed, r.cached, r.failed, r.absent)))
    console.print(table)
    for note in report.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False)
    if report.errors:
        console.print(f"{len(report.errors)} item errors listed in {report.out_dir / 'errors.csv'}",
                      highlight=False)
    console.print(f"computed {report.computed:,}, from cache {report.cached:,} in "
                  f"{report.seconds:.1f} s")


def parse_sets(entries: list[str]) -> dict[str, dict]:
    """``["mfcc_bof.codebook_size=64"]`` -> ``{"mfcc_bof": {"codebook_size": 64}}``."""
    out: dict[str, dict] = {}
    for entry in entries:
        key, sep, raw = entry.partition("=")
        name, dot, option = key.strip().partition(".")
        if not sep or not dot or not name or not option:
            raise ConfigError(f"--set {entry!r}: expected NAME.KEY=VALUE, e.g. "
                              f"mfcc_bof.codebook_size=64")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(name, {})[option] = value
    return out


def attach_command(
    dataset: str = typer.Argument(..., help="Dataset name (see `mmkgrec data list`) or directory."),
    features: Path = typer.Argument(..., help="Directory written by `mmkgrec features extract`."),
    out: Path = typer.Option(..., "--out", help="Output directory (native format)."),
    source: Path | None = typer.Option(None, "--source", help="Directory holding the dataset "
                                          "folders (default: $MMKGREC_DATA, ../shared/data, then "
                                          "the download cache)."),
) -> None:
    """Join extracted features to a dataset's items by id and write it in the native format."""
    from mmkgrec.data.formats.native import write_native
    from mmkgrec.data.registry import load
    from mmkgrec.features.attach import attach_features

    console = _console()
    with console.status(f"loading {dataset}"):
        loaded = load(dataset, source=source)
    before = len(loaded.notes)
    result = attach_features(loaded, features)
    write_native(result, out)
    for note in result.notes[before:]:
        console.print(f"[dim]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.name} with modalities "
                  f"{', '.join(f'{k} ({v})' for k, v in result.modality_dims().items())} to {out}",
                  highlight=False, soft_wrap=True)
