"""Real text and sentiment content for lastfm-kgcn's artists from HetRec tags (tf-idf: fast)."""

import numpy as np
import pandas as pd
import pytest

from mmkgrec.data.split import split
from mmkgrec.features.lastfm import attach_lastfm_content, scoped_content, tag_assignments
from tests.conftest import requires_data

real_data = requires_data("lastfm-kgcn", "hetrec-lastfm-2k")


@pytest.fixture(scope="module")
def content(lastfm, real_root):
    from dataclasses import replace

    from mmkgrec.data.formats.hetrec import attach_hetrec_text

    ds = replace(lastfm, modalities={}, modality_masks={}, notes=list(lastfm.notes),
                 meta=dict(lastfm.meta), provenance=list(lastfm.provenance))
    ds = attach_hetrec_text(ds, real_root / "hetrec-lastfm-2k")
    return attach_lastfm_content(ds, real_root / "hetrec-lastfm-2k", text_backend="tfidf")


@real_data
def test_masks_mark_the_untagged_fifth(content, real_root):
    tags = tag_assignments(real_root / "hetrec-lastfm-2k")
    tagged = np.isin(content.items, tags["item"].unique())
    np.testing.assert_array_equal(content.modality_masks["text"], tagged)
    np.testing.assert_array_equal(content.modality_masks["sentiment"], tagged)
    assert tagged.sum() == 3083 and 0.15 < 1 - tagged.mean() < 0.25  # about a fifth untagged
    assert not content.modalities["text"][~tagged].any()
    assert np.abs(content.modalities["text"][tagged]).sum(1).min() > 0


@real_data
def test_sentiment_follows_the_tags(content):
    """Artists whose tags read happier get a higher compound mean than those tagged 'sad'."""
    tags = content.item_attrs["tags"].str.lower()
    compound = content.modalities["sentiment"][:, 0]
    happy = tags.str.contains("happy|love|beautiful|awesome").to_numpy()
    sad = tags.str.contains("sad|depress|hate|death").to_numpy() & ~happy
    assert happy.sum() > 20 and sad.sum() > 20
    assert compound[happy].mean() > compound[sad].mean()


@real_data
def test_train_scope_uses_only_train_positive_tags(content, real_root):
    data_split = split(content, "topk", seed=0)
    scoped = scoped_content(content, data_split, "train")
    tags = tag_assignments(real_root / "hetrec-lastfm-2k")
    train = data_split.train_positives()
    train_keys = set(zip(content.users[train["user"]], content.items[train["item"]]))
    kept_items = {item for user, item in zip(tags["user"], tags["item"]) if (user, item) in train_keys}
    np.testing.assert_array_equal(scoped.modality_masks["text"], np.isin(content.items, list(kept_items)))
    assert scoped.modality_masks["text"].sum() < content.modality_masks["text"].sum()
    # no-eval: everything but the assignments on valid / test positives
    no_eval = scoped_content(content, data_split, "no-eval")
    held = pd.concat([data_split.positives("valid"), data_split.positives("test")])
    held_keys = set(zip(content.users[held["user"]], content.items[held["item"]]))
    kept_items = {i for u, i in zip(tags["user"], tags["item"]) if (u, i) not in held_keys}
    np.testing.assert_array_equal(no_eval.modality_masks["text"],
                                  np.isin(content.items, list(kept_items)))
    assert (scoped.modality_masks["text"] <= no_eval.modality_masks["text"]).all()
    # the original dataset is untouched and the split still matches its ids
    assert content.meta["content scope"] == "all" and scoped.meta["content scope"] == "train"
    assert scoped.n_items == content.n_items and scoped.triples is content.triples


def fake_hetrec(folder, items, users):
    """A minimal HetRec folder: every user tags every 3rd item with one of three tags."""
    folder.mkdir()
    (folder / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + "".join(
        f"{i}\tartist {i}\t\t\n" for i in items))
    (folder / "tags.dat").write_text("tagID\ttagValue\n1\thappy love\n2\tsad death\n3\trock\n")
    (folder / "user_artists.dat").write_text("userID\tartistID\tweight\n1\t1\t1\n")
    (folder / "user_friends.dat").write_text("userID\tfriendID\n1\t2\n")
    rows = [f"{u}\t{i}\t{1 + k % 3}\t1\t1\t2009\n" for k, i in enumerate(items[::3]) for u in users]
    (folder / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n" + "".join(rows))


def test_train_scoped_run_saves_and_reloads(tmp_path):
    """A run with content_scope=train checkpoints against the scoped dataset and reloads."""
    import torch

    from mmkgrec.data import load
    from mmkgrec.data.formats.native import write_native
    from mmkgrec.train.run import RunSpec, load_run, run_experiment

    base = load("synthetic-tiny")
    base.modalities, base.modality_masks = {}, {}
    fake_hetrec(tmp_path / "hetrec", list(base.items), list(base.users[:20]))
    write_native(attach_lastfm_content(base, tmp_path / "hetrec", text_backend="tfidf"),
                 tmp_path / "ds")
    spec = RunSpec(model="mkgcn", dataset=str(tmp_path / "ds"), protocol="topk",
                   content_scope="train", model_options={"dim": 8},
                   train_options={"epochs": 2})
    run = run_experiment(spec, tmp_path / "run")
    assert run.dataset.meta["content scope"] == "train"
    assert run.dataset.modality_masks["text"].sum() < base.modality_masks["text"].sum()
    again = load_run(tmp_path / "run")
    assert again.dataset.fingerprint() == run.dataset.fingerprint()
    users = torch.arange(5)
    run.model.prepare_ranking(), again.model.prepare_ranking()
    torch.testing.assert_close(run.model.score_users(users), again.model.score_users(users))
