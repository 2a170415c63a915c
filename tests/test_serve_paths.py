"""One recommendation path: `mmkgrec recommend`, :func:`mmkgrec.train.run.recommend` and
`GET /users/{id}/recommendations` rank with the same function and the same exclusion rule."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import run_cli
from mmkgrec.models.base import (
    AttentionExplanations,
    HistoryUsers,
    ItemsFromLinks,
    ItemVectors,
    UsersFromItems,
)
from mmkgrec.train.run import load_run, recommend
from test_serve import ids, kgcn_dir, make_client, mkgcn_dir, pop_dir  # noqa: F401 (fixtures)


@pytest.mark.parametrize("which", ["mkgcn_dir", "kgcn_dir", "pop_dir"])
def test_cli_and_http_return_the_same_list(which, request, tmp_path, capsys):
    run_dir = request.getfixturevalue(which)
    run = load_run(run_dir)
    frame = recommend(run, user="u3", k=12)
    with make_client(run_dir, tmp_path / "f.sqlite") as client:
        http = ids(client.get("/users/u3/recommendations", params={"k": 12}))
    assert list(frame["item_id"]) == http and len(http) == 12
    # the exclusion rule: every interaction row of the user, in any split, is left out
    ds = run.dataset
    seen = set(ds.items[ds.interactions.loc[ds.interactions["user"] == 3, "item"].to_numpy()])
    assert not seen & set(http)
    assert seen - set(ds.items[run.split.user_history()[1][
        run.split.user_history()[0][3]:run.split.user_history()[0][4]]])  # valid / test rows too
    code, out, _ = run_cli(capsys, "recommend", str(run_dir), "--user", "u3", "--k", "12")
    assert code == 0
    assert re.findall(r"(?<![\w-])s\d+\b", out)[:12] == http


def test_new_listener_cli_equals_http(mkgcn_dir, tmp_path):  # noqa: F811
    run = load_run(mkgcn_dir)
    frame = recommend(run, liked=["s1", "s2", "s5"], k=8)
    with make_client(mkgcn_dir, tmp_path / "f.sqlite") as client:
        http = ids(client.post("/recommendations", json={"liked": ["s1", "s2", "s5"], "k": 8}))
    assert list(frame["item_id"]) == http and not {"s1", "s2", "s5"} & set(http)


def test_capabilities_are_declared_protocols(mkgcn_dir, kgcn_dir, pop_dir):  # noqa: F811
    mkgcn, kgcn, pop = (load_run(d).model for d in (mkgcn_dir, kgcn_dir, pop_dir))
    for proto in (UsersFromItems, HistoryUsers, ItemVectors, ItemsFromLinks, AttentionExplanations):
        assert isinstance(mkgcn, proto), proto
    assert isinstance(kgcn, ItemVectors) and isinstance(kgcn, ItemsFromLinks)
    assert not isinstance(kgcn, UsersFromItems)
    assert not any(isinstance(pop, p) for p in (UsersFromItems, ItemVectors, ItemsFromLinks))
    # an extended catalogue keeps the model's capabilities, over I + N items
    extended = mkgcn.with_new_items([(np.array([0]), np.array([mkgcn.n_items + 5]))], [{}])
    assert extended.n_items == mkgcn.n_items + 1 and isinstance(extended, HistoryUsers)
    import torch

    with torch.no_grad():
        assert extended.score_users(torch.tensor([3])).shape == (1, mkgcn.n_items + 1)
