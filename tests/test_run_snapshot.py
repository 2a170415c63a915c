"""Self-contained run directories: the dataset snapshot travels with the run, so a run copied to
a fresh folder, with its data folder deleted and from another working directory, still
recommends, evaluates and serves; a changed dataset behind a reference is a clear error."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pandas as pd
import pytest

from conftest import run_cli
from mmkgrec.data.formats.native import write_native
from mmkgrec.data.registry import load
from mmkgrec.errors import MMKGRecError
from mmkgrec.train.run import RunSpec, load_run, recommend, run_experiment

TRAIN = ["--set", "epochs=1", "--set", "dim=8", "--protocol", "topk"]


def _catalogue_dataset():
    """synthetic-tiny with the display columns a catalogue gives: title and artist, no name."""
    ds = load("synthetic-tiny")
    attrs = pd.DataFrame({"title": [f"Song {i}" for i in range(ds.n_items)],
                          "artist": [f"Band {i % 7}" for i in range(ds.n_items)],
                          "tags": ds.item_attrs["tags"].to_numpy()})
    return dataclasses.replace(ds, item_attrs=attrs)


def test_a_moved_run_serves_without_its_data_folder(tmp_path, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    from test_serve import make_client

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    write_native(_catalogue_dataset(), work / "data" / "mine")
    monkeypatch.chdir(work)  # a relative --dataset path, as a new user types it
    code, _, err = run_cli(capsys, "train", "--model", "kgcn", "--dataset", "data/mine",
                           "--out", "runs/k", *TRAIN)
    assert code == 0, err
    before = recommend(load_run("runs/k"), user="u3", k=6)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(work / "runs" / "k", moved)
    shutil.rmtree(work)  # the data folder and the original run are gone
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)

    run = load_run(moved)
    frame = recommend(run, user="u3", k=6)
    assert list(frame["item_id"]) == list(before["item_id"])
    assert list(frame["name"]) == [f"Band {int(i[1:]) % 7} – Song {int(i[1:])}"
                                   for i in frame["item_id"]]  # display attributes travelled
    assert {"artist", "title", "tags"} <= set(frame.columns)
    code, out, err = run_cli(capsys, "recommend", str(moved), "--user", "u3", "--k", "6")
    assert code == 0, err
    assert re.findall(r"(?<![\w-])s\d+\b", out)[:6] == list(frame["item_id"])
    assert "Band" in out
    code, _, err = run_cli(capsys, "evaluate", str(moved), "--stage", "test")
    assert code == 0, err
    with make_client(moved, tmp_path / "f.sqlite") as client:
        body = client.get("/users/u3/recommendations", params={"k": 6}).json()
    assert ids_of(body) == list(frame["item_id"])
    assert body["items"][0]["name"] == frame["name"][0]
    assert body["items"][0]["attributes"]["artist"].startswith("Band")


def ids_of(body) -> list[str]:
    return [x["item_id"] for x in body["items"]]


def test_a_reference_run_refuses_a_changed_dataset(tmp_path):
    data = tmp_path / "data"
    ds = load("synthetic-tiny")
    write_native(ds, data)
    run_experiment(RunSpec(model="pop", dataset=str(data), protocol="topk"), tmp_path / "run",
                   progress=False, snapshot=False)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["dataset"]["snapshot"] is None and not (tmp_path / "run" / "dataset").exists()
    assert saved["dataset"]["fingerprint"] == ds.fingerprint()
    assert len(recommend(load_run(tmp_path / "run"), user="u3", k=3)) == 3  # the reference holds
    inter = ds.interactions.copy()
    inter.loc[inter.index[:5], "value"] = inter["value"].to_numpy()[:5] + 1.0  # data edited
    write_native(dataclasses.replace(ds, interactions=inter), data)
    with pytest.raises(MMKGRecError, match="not the dataset this run was trained on"):
        load_run(tmp_path / "run")
    shutil.rmtree(data)
    with pytest.raises(MMKGRecError, match="holds no dataset snapshot"):
        load_run(tmp_path / "run")


def test_a_tampered_snapshot_is_an_error_and_old_runs_still_load(tmp_path):
    run_experiment(RunSpec(model="pop", dataset="synthetic-tiny", protocol="topk"),
                   tmp_path / "run", progress=False)
    snapshot = tmp_path / "run" / "dataset"
    assert (snapshot / "dataset.json").is_file() and (snapshot / "item_attrs.parquet").is_file()
    expected = list(recommend(load_run(tmp_path / "run"), user="u3", k=5)["item_id"])
    old = tmp_path / "old"  # a run directory written before snapshots: a name reference only
    shutil.copytree(tmp_path / "run", old)
    shutil.rmtree(old / "dataset")
    manifest = json.loads((old / "run.json").read_text())
    del manifest["dataset"]
    (old / "run.json").write_text(json.dumps(manifest))
    assert list(recommend(load_run(old), user="u3", k=5)["item_id"]) == expected
    target = snapshot / "interactions.parquet"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(MMKGRecError, match="interactions.parquet"):
        load_run(tmp_path / "run")


def _moved_mmkgcf_run(ds, option: str, work, monkeypatch, capsys):
    """Train MMKG-CF with ``--set option`` on ``ds`` (written natively), delete the data folder,
    reload the run from its snapshot: (the reloaded run, its u3 top 6 before the deletion)."""
    write_native(ds, work / "data" / "mine")
    monkeypatch.chdir(work)
    code, _, err = run_cli(capsys, "train", "--model", "mmkgcf", "--dataset", "data/mine",
                           "--out", "runs/m", "--set", option, *TRAIN)
    assert code == 0, err
    before = list(recommend(load_run("runs/m"), user="u3", k=6)["item_id"])
    shutil.rmtree(work / "data")
    return load_run("runs/m"), before


def test_user_side_facts_travel_with_the_run(tmp_path, monkeypatch, capsys):
    """A dataset with user-side KG facts: MMKG-CF trained with user_kg_weight > 0 reloads, from
    its snapshot alone, with the same fact edges and the same recommendations."""
    import numpy as np

    ds = load("synthetic-tiny")
    positives = set(zip(ds.interactions["user"], ds.interactions["item"]))
    pairs = [(u, i) for u in range(ds.n_users) for i in range(0, ds.n_items, 5)
             if (u, i) not in positives][:40]
    facts = np.array([(u, 0, i) for u, i in pairs], dtype=np.int64)  # [40, 3]
    ds = dataclasses.replace(ds, user_relations=np.array(["tagged"]), user_triples=facts)
    run, before = _moved_mmkgcf_run(ds, "user_kg_weight=1", tmp_path / "work", monkeypatch, capsys)
    np.testing.assert_array_equal(run.dataset.user_triples, facts)
    dense = run.model.adjacency.to_dense()
    assert (dense[facts[:, 0], ds.n_users + facts[:, 2]] > 0).all()
    assert list(recommend(run, user="u3", k=6)["item_id"]) == before


def test_user_links_travel_with_the_run(tmp_path, monkeypatch, capsys):
    """A dataset with user-user links: MMKG-CF trained with social_weight > 0 reloads, from its
    snapshot alone, with the same user-user edges and the same recommendations."""
    import numpy as np

    from mmkgrec.data.dataset import MMKG

    ds = load("synthetic-tiny")
    links = MMKG.undirected_links(np.array([(u, (u * 7 + 3) % ds.n_users)
                                            for u in range(ds.n_users)], dtype=np.int64))
    ds = dataclasses.replace(ds, user_links=links)
    run, before = _moved_mmkgcf_run(ds, "social_weight=1", tmp_path / "work", monkeypatch, capsys)
    np.testing.assert_array_equal(run.dataset.user_links, links)
    dense = run.model.adjacency.to_dense()
    assert (dense[links[:, 0], links[:, 1]] > 0).all() and (dense[links[:, 1], links[:, 0]] > 0).all()
    assert list(recommend(run, user="u3", k=6)["item_id"]) == before
