"""Shared fixtures. Real data is read from $MMKGREC_DATA or ../shared/data; tests that need it
skip with the reason when it is absent. Nothing is ever downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("MMKGREC_DATA", REPO.parent / "shared" / "data"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``mmkgrec ARGV`` in-process: (exit code, stdout, stderr)."""
    from mmkgrec.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(argv))
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def assert_pair_scores_match_ranking(model, n_users: int = 5) -> None:
    """The model's per-pair forward (training) and ``score_users`` (full ranking) agree."""
    import torch

    model.eval()
    users = torch.arange(n_users)
    with torch.no_grad():
        full = model.score_users(users)  # [n_users, I]
        assert full.shape == (n_users, model.n_items)
        pairs = model(users.repeat_interleave(model.n_items),
                      torch.arange(model.n_items).repeat(n_users)).reshape(n_users, -1)
    torch.testing.assert_close(pairs, full, rtol=1e-5, atol=1e-5)


def requires_data(*folders: str):
    """Skip unless every named folder exists under the data root."""
    root = data_root()
    missing = [f for f in folders if not (root / f).is_dir()]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"real data {', '.join(missing)} not found under {root} (set MMKGREC_DATA)",
    )


@pytest.fixture(scope="session")
def real_root() -> Path:
    return data_root()


@pytest.fixture(scope="session")
def lastfm(real_root):
    if not (real_root / "lastfm-kgcn").is_dir():
        pytest.skip(f"lastfm-kgcn not found under {real_root}")
    from mmkgrec.data.formats.kgcn import read_kgcn

    return read_kgcn(real_root / "lastfm-kgcn")


@pytest.fixture(scope="session")
def musicd(real_root):
    if not (real_root / "music-d").is_dir():
        pytest.skip(f"music-d not found under {real_root}")
    from mmkgrec.data.formats.mkgcn import read_mkgcn

    return read_mkgcn(real_root / "music-d")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One thread: tiny tensors run fastest, deterministically; two ran 10-60x slower on 2 busy cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_topk():
    """(synthetic-tiny, its topk split with seed 0), shared read-only by the whole session."""
    from mmkgrec.data import load, split

    ds = load("synthetic-tiny")
    return ds, split(ds, protocol="topk", seed=0)


@pytest.fixture(scope="session")
def small_topk():
    """(synthetic, its topk split with seed 0), shared read-only by the whole session."""
    from mmkgrec.data import load, split

    ds = load("synthetic")
    return ds, split(ds, protocol="topk", seed=0)
