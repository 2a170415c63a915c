"""benchmarks/mmkg_ablation.py: which MMKG-CF variants an ablation table runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mmkg_ablation.py"
spec = importlib.util.spec_from_file_location("mmkg_ablation", SCRIPT)
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def test_kg_rows_remove_each_kg_route_and_both():
    tuned = {"model": {"kg_weight": 2.0, "kg_item_knn": 10, "user_kg_weight": 1.0}}
    rows = ablation.variants(tuned, [], user_facts=False)
    assert rows == {"no KG": ["mmkgcf.kg_weight=0", "mmkgcf.kg_item_knn=0"],
                    "no KG item graph": ["mmkgcf.kg_item_knn=0"],
                    "no KG edges": ["mmkgcf.kg_weight=0"]}  # no user-fact row without facts
    assert not any(ablation.is_tuned(change, tuned, []) for change in rows.values())


def test_a_config_without_the_item_graph_gets_one_kg_row_and_a_kg_free_one_gets_kg_back():
    older = {"model": {"kg_weight": 2.0}}  # written before kg_item_knn: its default, 0
    assert set(ablation.variants(older, [])) == {"no KG"}
    assert ablation.is_tuned(["mmkgcf.kg_item_knn=0"], older, [])
    assert ablation.variants({"model": {"kg_weight": 0.0}}, []) == {"KG": ["mmkgcf.kg_weight=1"]}


def test_user_fact_and_content_rows_follow_the_dataset():
    tuned = {"model": {"kg_weight": 1.0, "user_kg_weight": 0.0}}
    rows = ablation.variants(tuned, ["text", "sentiment"], user_facts=True)
    assert rows["+ user facts"] == ["mmkgcf.user_kg_weight=1"]
    assert {"KG only", "+ text", "+ sentiment", "+ text + sentiment"} <= set(rows)


def test_a_tuned_tag_graph_counts_as_content():
    tuned = {"model": {"kg_weight": 0.5, "tag_item_knn": 20, "content_route": "latent"}}
    rows = ablation.variants(tuned, ["text", "sentiment"])
    assert rows["KG only"] == ["mmkgcf.modalities=[]", "mmkgcf.tag_item_knn=0"]
    assert rows["+ tags"] == ["mmkgcf.modalities=[]"]
    assert rows["+ text"] == ['mmkgcf.modalities=["text"]', "mmkgcf.tag_item_knn=0"]
    assert rows["+ text + sentiment"][-1] == "mmkgcf.tag_item_knn=0"
    assert not any(ablation.is_tuned(change, tuned, ["text", "sentiment"])
                   for change in rows.values())
    assert "+ tags" not in ablation.variants({"model": {"kg_weight": 0.5}}, ["text"])


def test_friendship_rows_follow_the_dataset_and_the_tuned_weight():
    on = {"model": {"kg_weight": 0.5, "social_weight": 1.0}}
    rows = ablation.variants(on, [], user_links=True)
    assert rows["no friendships"] == ["mmkgcf.social_weight=0"]
    assert not ablation.is_tuned(rows["no friendships"], on, [])
    alone = ablation.variants(on, ["text"], user_links=True)["friendships only (no KG or content)"]
    assert {"mmkgcf.kg_weight=0", "mmkgcf.user_kg_weight=0", "mmkgcf.modalities=[]",
            "mmkgcf.tag_item_knn=0"} <= set(alone) and "mmkgcf.social_weight=0" not in alone
    off = ablation.variants({"model": {"kg_weight": 0.5}}, [], user_links=True)
    assert off["+ friendships"] == ["mmkgcf.social_weight=1"] and "no friendships" not in off
    assert not {"+ friendships", "no friendships"} & set(ablation.variants(on, []))  # no links
