"""User-contributed content (tags) rebuilt per split, so no held-out interaction leaks into it.

Called once per run between the split and the model (``train.run.derive_data``, the benchmark,
``mmkgrec data build-mmkg``); the data layer only reads and stores the content.
"""

from __future__ import annotations

from dataclasses import replace

from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.errors import ConfigError
from mmkgrec.features.lastfm import scoped_content

CONTENT_SCOPES = ("train", "no-eval", "all")  # the first is the default everywhere


def has_user_content(dataset: MMKG) -> bool:
    """Whether part of ``dataset``'s content comes from users (HetRec tags), so that it must be
    rebuilt per split (:func:`scope_content`)."""
    return "content hetrec dir" in dataset.meta or "hetrec dir" in dataset.meta


def scope_content(dataset: MMKG, data_split: Split, scope: str) -> tuple[MMKG, Split]:
    """``(dataset, split)`` with user-contributed content (tags) rebuilt from a leak-controlled
    subset (``train``, the default: train positives' tags only; ``no-eval``: all but valid/test
    positives' tags); the split is re-pointed at the rebuilt dataset (its parts are unchanged).
    ``scope="all"`` (a labelled upper bound that sees held-out plays) and datasets without user
    content return both as they are.

    Raises:
        ConfigError: an unknown scope, or a dataset whose content was scoped against another
            split (e.g. written by ``mmkgrec data build-mmkg --content-scope``).
    """
    if scope not in CONTENT_SCOPES:
        raise ConfigError(f"content scope must be one of {', '.join(CONTENT_SCOPES)}, got {scope!r}")
    built_for = dataset.meta.get("content split")
    if built_for is not None:  # already scoped (e.g. by `mmkgrec data build-mmkg`)
        if (built_for != data_split.fingerprint(with_candidates=False)
                or dataset.meta.get("content scope") != scope):
            raise ConfigError(
                f"dataset {dataset.name!r}: its content was scoped ({dataset.meta.get('content scope')}) "
                f"against split {str(built_for)[:12]}...; train it with that scope on that split "
                f"(build-mmkg saves it as <out>/split) or rebuild it for this one")
        return dataset, data_split
    if scope == "all" or not has_user_content(dataset):
        return dataset, data_split
    scoped = scoped_content(dataset, data_split, scope)
    return scoped, replace(data_split, dataset_fingerprint=scoped.fingerprint())
