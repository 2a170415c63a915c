"""Real text and sentiment content for lastfm-kgcn's artists from HetRec tags (tf-idf: fast)."""

import numpy as np
import pandas as pd
import pytest
from tests.conftest import requires_data

from mmkgrec.data.split import split
from mmkgrec.features.lastfm import attach_lastfm_content, scoped_content, tag_assignments

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
    # user-side (u, tagged, a) facts: train scope on train positives only; no-eval on every tagged
    # pair but the held-out positives, most of them outside the user's plays
    def fact_keys(dataset):
        f = dataset.user_triples
        return set(zip(dataset.users[f[:, 0]], dataset.items[f[:, 2]]))
    known_users, known_items = set(content.users), set(content.items)
    tagged_keys = {(u, i) for u, i in zip(tags["user"], tags["item"])
                   if u in known_users and i in known_items}
    assert fact_keys(scoped) == tagged_keys & train_keys and len(fact_keys(scoped)) > 1000
    assert fact_keys(no_eval) == {k for k in tagged_keys if k not in held_keys}
    assert len(fact_keys(no_eval) - train_keys) > 10_000
    assert scoped.user_relations.tolist() == ["tagged"] and not fact_keys(no_eval) & held_keys
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


def _content_dir(tmp_path, name, base, extra_rows=(), extra_tag=None):
    """A native lastfm-style content dataset over ``base`` whose HetRec folder has, besides the
    fake_hetrec tags, ``extra_rows`` (user, item, tagID) assignments of ``extra_tag``."""
    from mmkgrec.data.formats.native import write_native

    hetrec = tmp_path / f"{name}-hetrec"
    fake_hetrec(hetrec, list(base.items), list(base.users[:20]))
    if extra_tag is not None:
        with open(hetrec / "tags.dat", "a") as f:
            f.write(f"9\t{extra_tag}\n")
        with open(hetrec / "user_taggedartists.dat", "a") as f:
            f.writelines(f"{u}\t{i}\t9\t1\t1\t2009\n" for u, i in extra_rows)
    from mmkgrec.data.formats.hetrec import attach_hetrec_text

    ds = attach_hetrec_text(base, hetrec)
    write_native(attach_lastfm_content(ds, hetrec, text_backend="tfidf"), tmp_path / name)
    return str(tmp_path / name)


@pytest.fixture
def plain_base():
    from mmkgrec.data import load

    base = load("synthetic-tiny")
    base.modalities, base.modality_masks = {}, {}
    base.item_attrs = None
    return base


def test_default_scope_keeps_held_out_tags_out_of_every_feature(tmp_path, plain_base):
    """A tag given only on valid / test plays reaches no feature, attribute or entity under the
    default content scope; under the labelled upper bound "all" it does (so the test can fail)."""
    from dataclasses import replace

    from mmkgrec.train.run import RunSpec, prepare_data

    held = split(plain_base, "topk", seed=0)
    pairs = pd.concat([held.positives("valid"), held.positives("test")])
    rows = list(zip(plain_base.users[pairs["user"]], plain_base.items[pairs["item"]]))[:40]
    clean = _content_dir(tmp_path, "clean", replace(plain_base, meta={}, notes=[]))
    leaky = _content_dir(tmp_path, "leaky", replace(plain_base, meta={}, notes=[]), rows,
                         "zzleak happy")
    assert RunSpec().content_scope == "train"  # the default everywhere

    def derived(path, **options):
        spec = RunSpec(model="mkgcn", dataset=path, protocol="topk", seed=0, **options)
        return prepare_data(spec)[0]

    for options in ({}, {"content_scope": "no-eval"}, {"mmkg": "entity"}):
        a, b = derived(clean, **options), derived(leaky, **options)
        assert a.fingerprint() == b.fingerprint(), options  # modalities, KG: identical
        assert not b.item_attrs["tags"].str.contains("zzleak").any()
        assert not any("zzleak" in str(e) for e in b.entities)
    upper_a, upper_b = derived(clean, content_scope="all"), derived(leaky, content_scope="all")
    assert upper_a.fingerprint() != upper_b.fingerprint()
    assert upper_b.item_attrs["tags"].str.contains("zzleak").any()


def test_text_transform_is_fitted_on_train_items_only(tmp_path, plain_base):
    """Cold split, no-eval scope: tags on a held-out song (from users who never played it) give
    it content, but the TF-IDF / SVD fitted on train items does not move: every train item's
    text vector is the same with or without them."""
    from dataclasses import replace

    from mmkgrec.train.run import RunSpec, prepare_data

    cold = split(plain_base, "cold", seed=0)
    item = plain_base.items[cold.cold_items["test"][0]]
    players = set(plain_base.users[cold.test["user"][cold.test["item"] == cold.cold_items["test"][0]]])
    taggers = [u for u in plain_base.users[:20] if u not in players][:5]
    base = replace(plain_base, meta={}, notes=[])
    without = _content_dir(tmp_path, "without", base)
    with_tags = _content_dir(tmp_path, "with", base, [(u, item) for u in taggers],
                             "brand new words only here")
    spec = dict(model="mkgcn", protocol="cold", seed=0, content_scope="no-eval")
    a = prepare_data(RunSpec(dataset=without, **spec))
    b = prepare_data(RunSpec(dataset=with_tags, **spec))
    train_items = a[1].item_popularity() > 0
    np.testing.assert_array_equal(a[0].modalities["text"][train_items],
                                  b[0].modalities["text"][train_items])
    assert b[0].modality_masks["text"][cold.cold_items["test"][0]]


def test_build_mmkg_scopes_content_to_the_split_it_saves(tmp_path, plain_base, capsys):
    """`data build-mmkg --mode entity` on user content: scoped to one split, saved as OUT/split;
    training the result on that split works (exit 0), on another split it is refused (exit 2)."""
    from dataclasses import replace

    from conftest import run_cli
    from mmkgrec.data import load
    from mmkgrec.data.split import Split, apply_presplit

    source = _content_dir(tmp_path, "content", replace(plain_base, meta={}, notes=[]))
    out = tmp_path / "entity"
    code, text, _ = run_cli(capsys, "data", "build-mmkg", source, "--mode", "entity", "--out",
                            str(out), "--clusters", "4", "--seed", "1")
    assert code == 0, text
    built = load(str(out))
    assert built.meta["content scope"] == "train" and "content hetrec dir" not in built.meta
    saved = Split.load(out / "split")
    assert apply_presplit(built, out / "split").fingerprint(False) == saved.fingerprint(False)
    assert built.meta["content split"] == saved.fingerprint(False)
    common = ["train", "--model", "kgcn", "--dataset", str(out), "--protocol", "topk", "--set",
              "epochs=1"]
    code, text, _ = run_cli(capsys, *common, "--presplit", str(out / "split"), "--out",
                            str(tmp_path / "run"))
    assert code == 0, text
    code, text, err = run_cli(capsys, *common, "--seed", "2", "--out", str(tmp_path / "other"))
    assert code == 2 and "scoped" in text + err
