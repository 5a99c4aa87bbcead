"""Catalog mapping and split; training on synthetic features: deterministic, learns, exports graphs that
match torch."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from exporters.catalog import CatalogMapping, add_catalog_arguments, load_catalog, mapping_from_args

pytest.importorskip("torch")

from encoders_onnx.fusion import FusionModel  # noqa: E402
from encoders_onnx.session import l2_normalize  # noqa: E402
from exporters.features import Features  # noqa: E402
from exporters.metrics import item_to_item, text_to_image  # noqa: E402
from exporters.train import TrainConfig, export_bundle, fit, kmeans, nearest, neighbour_banks, title_groups  # noqa: E402


def test_csv_catalog_through_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "shop.csv").write_text(
        "sku,name,kind,dept,section\n"
        "a1,Red Shirt,Shirts,Apparel,Topwear\n"
        "b2,Blue Jeans,Jeans,Apparel,Bottomwear\n"
        "a1,Duplicate,Shirts,Apparel,Topwear\n"
        "c3,,Socks,Apparel,Innerwear\n"
    )
    mapping = CatalogMapping(id="sku", title="name", fine=("kind",), coarse=("dept", "section"), image="pics/{sku}.jpg")
    catalog = load_catalog(tmp_path, mapping)
    assert catalog.ids == ["a1", "b2", "c3"] and catalog.dropped_duplicates == 1
    first = catalog.products[0]
    assert (first.title, first.fine, first.coarse) == ("Red Shirt", "Shirts", "Apparel / Topwear")
    assert first.image == tmp_path / "pics" / "a1.jpg" and first.video is None
    assert catalog.labels("coarse").tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="column 'title' is missing"):
        load_catalog(tmp_path, CatalogMapping(id="sku"))


def test_jsonl_catalog_with_category_path_and_description(tmp_path: Path) -> None:
    lines = [
        {"id": 7, "title": "Linen Dress", "text": "Light summer dress", "path": "Women > Dresses > Maxi", "img": "/abs/7.png"},
        {"id": 8, "title": "Wool Hat", "text": "", "path": "Accessories > Hats", "img": ""},
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    mapping = CatalogMapping.from_dict({"description": "text", "fine": "path", "coarse": ["path[:1]"], "image": "img"})
    a, b = load_catalog(tmp_path / "items.jsonl", mapping).products
    assert (a.id, a.text, a.fine, a.coarse) == ("7", "Linen Dress. Light summer dress", "Women > Dresses > Maxi", "Women")
    assert a.image == Path("/abs/7.png") and b.image is None and b.text == "Wool Hat"


def test_flags_override_the_mapping_file(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"title": "productDisplayName", "fine": "articleType"}))
    parser = argparse.ArgumentParser()
    add_catalog_arguments(parser)
    args = parser.parse_args(["--dataset", "x", "--mapping", str(tmp_path / "m.json"), "--fine", "subCategory",
                              "--coarse", "masterCategory,subCategory"])
    mapping = mapping_from_args(args)
    assert mapping.title == "productDisplayName" and mapping.fine == ("subCategory",)
    assert mapping.coarse == ("masterCategory", "subCategory")


def test_split_is_deterministic_disjoint_and_stable_under_growth(tmp_path: Path) -> None:
    ids = [f"p{i}" for i in range(3000)]
    (tmp_path / "c.csv").write_text("id,title\n" + "".join(f"{i},t\n" for i in ids))
    (tmp_path / "grown").mkdir()
    (tmp_path / "grown" / "c.csv").write_text("id,title\n" + "".join(f"{i},t\n" for i in ["new1", *reversed(ids)]))
    mapping = CatalogMapping(fine=("title",), image=None)
    catalog = load_catalog(tmp_path / "c.csv", mapping)
    split = catalog.split(seed=0)
    named = {s: {catalog.ids[i] for i in rows} for s, rows in split.items()}
    assert sum(len(v) for v in named.values()) == len(ids) == len(set().union(*named.values()))
    assert all(0.07 < len(named[s]) / len(ids) < 0.13 for s in ("val", "test"))
    assert {s: r.tolist() for s, r in catalog.split(seed=0).items()} == {s: r.tolist() for s, r in split.items()}
    grown = load_catalog(tmp_path / "grown", mapping)
    regrown = {s: {grown.ids[i] for i in rows} for s, rows in grown.split(seed=0).items()}
    assert all(named[s] <= regrown[s] for s in named)
    assert {catalog.ids[i] for i in catalog.split(seed=1)["test"]} != named["test"]


SMALL = TrainConfig(shared_dim=32, hidden=64, fused_dim=32, batch_size=64, head_batch_size=64, max_epochs=5, patience=2, ae_bottleneck=32)


def synthetic(n: int = 500, classes: int = 12, seed: int = 0) -> tuple[Features, np.ndarray, dict[str, np.ndarray]]:
    """Products with a class and a private latent, seen through two unrelated random 'encoders'."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    latent = 1.5 * rng.standard_normal((classes, 16))[labels] + rng.standard_normal((n, 16))
    text = l2_normalize(latent @ rng.standard_normal((16, 48)) + 2.0 * rng.standard_normal((n, 48)))
    image = l2_normalize(latent @ rng.standard_normal((16, 80)) + 2.0 * rng.standard_normal((n, 80)))
    present = {"text": np.ones(n, bool), "image": rng.random(n) > 0.1}
    image[~present["image"]] = 0.0
    order = rng.permutation(n)
    split = {"train": order[: int(0.8 * n)], "val": order[int(0.8 * n) : int(0.9 * n)], "test": order[int(0.9 * n) :]}
    return Features({"text": text, "image": image}, present, {"text": "t1", "image": "i1"}), labels, split


def test_fixed_seed_gives_identical_models_and_metrics() -> None:
    features, labels, split = synthetic()
    first = fit(features, labels, split, SMALL, seed=3)
    second = fit(features, labels, split, SMALL, seed=3)
    assert _scores(first.history) == _scores(second.history)
    for a, b in ((first.heads, second.heads), (first.fusion, second.fusion), (first.autoencoder, second.autoencoder)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert np.array_equal(x.numpy(), y.numpy()), name
    other = fit(features, labels, split, SMALL, seed=4)
    assert _scores(other.history) != _scores(first.history)


def _scores(history: dict) -> dict:
    """Everything but wall time."""
    return {stage: {k: v for k, v in h.items() if k != "seconds"} for stage, h in history.items()}


def test_training_learns_alignment_and_fusion_beats_chance() -> None:
    features, labels, split = synthetic()
    trained = fit(features, labels, split, SMALL, seed=0)
    chance_recall = 10 / len(split["val"])
    assert trained.history["heads"]["val_score"] > 3 * chance_recall
    assert trained.history["fusion"]["val_score"] > 3 / 12  # p@10 on 12 balanced classes: chance ~ 1/12


@pytest.mark.parametrize("config", [SMALL, dataclasses.replace(SMALL, head_hidden=16, autoencoder="cross_modal")],
                         ids=["linear-heads-joint-autoencoder", "mlp-heads-cross-modal-autoencoder"])
def test_exported_bundle_matches_torch_and_handles_missing_modalities(tmp_path: Path, config: TrainConfig) -> None:
    import torch

    features, labels, split = synthetic()
    trained = fit(features, labels, split, config, seed=0)
    bundle = export_bundle(trained, features, tmp_path, config, {"seed": 0})
    for name in ("text_head", "image_head", "fusion", "autoencoder"):
        manifest = json.loads((tmp_path / f"{name}.manifest.json").read_text())
        assert manifest["max_abs_diff"] <= 1e-4
        assert manifest["inputs"][0]["shape"][0] == "batch"
    assert bundle["heads"]["video"] == {"model": "image_head", "trained": False, "tied_to": "image"}

    model = FusionModel(tmp_path, providers="cpu")
    test = features.rows(split["test"])
    torch_z = {m: trained.banks[m](trained.heads.heads[m](torch.from_numpy(test.vectors[m]))).detach().numpy()
               for m in ("text", "image")}
    z = model.project(text=test.vectors["text"], image=test.vectors["image"])
    assert z["video"] is None
    for m in ("text", "image"):
        np.testing.assert_allclose(z[m], torch_z[m], atol=1e-5)
    assert text_to_image(z["text"], z["image"])["recall@10"] > 0
    mask = np.stack([test.present["text"], test.present["image"], np.zeros(len(test.present["text"]), bool)], axis=1)
    fused = model.fuse_arrays(text=test.vectors["text"], image=test.vectors["image"], present_mask=mask)
    assert fused.present.all() and fused.vectors.shape == (len(mask), 32)
    assert item_to_item(fused.vectors, labels[split["test"]])["p@10"] > 2 / 12


def test_cross_modal_autoencoder_rebuilds_a_hidden_modality_better_than_chance() -> None:
    import torch

    features, labels, split = synthetic()
    trained = fit(features, labels, split, dataclasses.replace(SMALL, autoencoder="cross_modal"), seed=0)
    test = features.rows(split["test"])
    has = test.present["image"]
    text, image = (torch.from_numpy(test.vectors[m][has]) for m in ("text", "image"))
    title_only = torch.tensor([[1.0, 0.0]]).expand(len(text), 2)
    with torch.no_grad():
        rebuilt_image = trained.autoencoder.decode(trained.autoencoder.encode([text, torch.zeros_like(image)], title_only))[1]
    # Each product's image rebuilt from its title alone finds its own image well above chance.
    recall = text_to_image(l2_normalize(rebuilt_image.numpy()), image.numpy())["recall@10"]
    assert recall > 3 * 10 / len(text)



def test_heads_learn_the_label_unless_told_not_to() -> None:
    """The heads' supervised term reads the labels (shuffled labels train other heads); at weight 0
    they are label-free (the same heads), which ``pseudo_labels`` requires."""
    from exporters.train import fit_heads, seed_everything

    features, labels, split = synthetic()
    train, val = features.rows(split["train"]), features.rows(split["val"])
    shuffled = np.random.default_rng(1).permutation(labels)

    def head_weights(config: TrainConfig, y: np.ndarray) -> np.ndarray:
        heads, _ = fit_heads(train, val, y[split["train"]], config, seed_everything(0, config.threads))
        return np.concatenate([w.numpy().ravel() for w in heads.state_dict().values()])

    assert SMALL.head_supcon_weight > 0
    assert not np.array_equal(head_weights(SMALL, labels), head_weights(SMALL, shuffled))
    label_free = dataclasses.replace(SMALL, head_supcon_weight=0.0)
    assert np.array_equal(head_weights(label_free, labels), head_weights(label_free, shuffled))
    with pytest.raises(ValueError, match="--head-supcon-weight 0"):
        dataclasses.replace(SMALL, pseudo_labels=12)


CLASS_WORDS = ("shirt", "jeans", "socks", "dress", "cap", "belt", "watch", "scarf", "boots", "tie", "bag", "skirt")


@pytest.mark.parametrize("knobs, learned_from", [
    ({"pseudo_labels": 12, "head_supcon_weight": 0.0}, "12 k-means clusters"),
    ({"title_groups": 1, "title_group_min": 3}, "groups of the titles' last words (up to 1"),  # the heads' term reads them too
])
def test_label_free_fusions_learn_no_label_and_still_group_the_classes(
        tmp_path: Path, knobs: dict, learned_from: str) -> None:
    """``pseudo_labels`` (k-means clusters of the projections) and ``title_groups`` (the titles'
    last words): neither the heads nor the fusion learn the labels (shuffled labels give the very
    same weights), the test vectors still group the real classes, and the bundle says what the
    fusion learned."""
    import torch

    features, labels, split = synthetic()
    # a title names its class, except every fourth, which names the next one: groups are not the classes
    titles = [f"Brand {'xyz'[i % 3]} {i} {CLASS_WORDS[(label + (i % 4 == 0)) % len(CLASS_WORDS)]}"
              for i, label in enumerate(labels)]
    config = dataclasses.replace(SMALL, **knobs)
    trained = fit(features, labels, split, config, seed=0, titles=titles)
    shuffled = fit(features, np.random.default_rng(1).permutation(labels), split, config, seed=0, titles=titles)
    for part in ("heads", "fusion"):
        for (name, x), (_, y) in zip(getattr(trained, part).state_dict().items(), getattr(shuffled, part).state_dict().items()):
            assert np.array_equal(x.numpy(), y.numpy()), f"{part}.{name}"
    supervised = fit(features, labels, split, SMALL, seed=0, titles=titles)  # the same run learning the labels differs

    def weights(t: object) -> np.ndarray:
        return np.concatenate([w.numpy().ravel() for w in t.fusion.state_dict().values()])

    assert not np.array_equal(weights(supervised), weights(trained))
    test = features.rows(split["test"])
    with torch.no_grad():
        z = [trained.heads.heads[m](torch.from_numpy(test.vectors[m])) for m in test.modalities]
        mask = torch.from_numpy(np.stack([test.present[m] for m in test.modalities], axis=1).astype(np.float32))
        fused = trained.fusion(z, mask).numpy()
    assert item_to_item(fused, labels[split["test"]])["p@10"] > 3 / 12  # chance ~ 1/12
    bundle = export_bundle(trained, features, tmp_path, config, {"seed": 0})
    assert bundle["fusions"]["learned"]["loss"].startswith(f"supervised contrastive on {learned_from}")


def test_title_groups_are_the_titles_last_words_shared_by_enough_train_products() -> None:
    titles = ["Nike Men Blue Running Shoes", "PUMA running  shoes!", "Adidas Running Shoes 2", "Red Chief Formal Shoes",
              "Pack of 3", "", "Lone Hat", "Wool Hat", "Val Hat"]
    train = np.arange(8)  # "Val Hat" is not a train product: it joins a group but does not count for one
    two = title_groups(titles, train, words=2, min_size=2)
    assert two[0] == two[1] == two[2]  # "running shoes": case, punctuation and a trailing number do not matter
    assert two[3] != two[0] and two[6] == two[7] == two[8]  # too few "formal shoes" or "wool hat": "shoes", "hat"
    assert len(set(two.tolist())) == 5  # running shoes, shoes, hat; "pack of" and the empty title each alone
    one = title_groups(titles, train, words=1, min_size=2)
    assert one[0] == one[1] == one[2] == one[3] and one[6] == one[7] == one[8]
    assert len(set(one.tolist())) == 4  # shoes, hat, and "pack of" and the empty title each alone
    three = title_groups(titles, train, words=1, min_size=3)
    assert three[0] == three[3] and len({three[6], three[7], three[8]}) == 3  # two train hats are too few


def test_label_free_fusions_are_exclusive_and_title_groups_need_titles() -> None:
    with pytest.raises(ValueError, match="set one of them, not both"):
        dataclasses.replace(SMALL, head_supcon_weight=0.0, pseudo_labels=12, title_groups=2)
    for bad in ({"title_groups": -1}, {"title_groups": 2, "title_group_min": 0}):
        with pytest.raises(ValueError, match="title_group_min at least 1"):
            dataclasses.replace(SMALL, **bad)
    features, labels, split = synthetic()
    with pytest.raises(ValueError, match="needs the products' titles"):
        fit(features, labels, split, dataclasses.replace(SMALL, title_groups=2), seed=0)


def test_kmeans_finds_separated_clusters_and_bounds_k() -> None:
    rng = np.random.default_rng(0)
    centres = l2_normalize(rng.standard_normal((4, 8)))
    truth = rng.integers(0, 4, 400)
    x = l2_normalize(centres[truth] + 0.05 * rng.standard_normal((400, 8)))
    found = nearest(x, kmeans(x, 4, seed=0))
    assert len({(t, f) for t, f in zip(truth, found)}) == 4  # one found cluster per true one
    with pytest.raises(ValueError, match="between 1 and the 400 training products"):
        kmeans(x, 401, seed=0)


def test_neighbour_banks_hold_the_train_products_that_have_another_modality() -> None:
    import torch

    present = {"text": np.array([True, True, True, False]), "image": np.array([True, False, True, True])}
    projected = {"text": l2_normalize(np.arange(8, dtype=np.float32).reshape(4, 2) + 1),
                 "image": l2_normalize(np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32))}
    generator = torch.Generator().manual_seed(0)
    banks = neighbour_banks(projected, present, dataclasses.replace(SMALL, neighbours=5), generator)
    # Products 0 and 2 have both: each modality's keys are its own rows, values the other's.
    for m, other in (("text", "image"), ("image", "text")):
        np.testing.assert_allclose(banks[m].keys.numpy(), projected[m][[0, 2]], atol=1e-6)
        np.testing.assert_allclose(banks[m].values.numpy(), projected[other][[0, 2]], atol=1e-6)
        assert banks[m].neighbours == 2  # never more than the bank holds
    capped = neighbour_banks(projected, present, dataclasses.replace(SMALL, neighbour_rows=1), generator)
    assert len(capped["text"].keys) == 1 and capped["text"].keys[0].tolist() in projected["text"][[0, 2]].tolist()
    assert neighbour_banks({"text": projected["text"]}, {"text": present["text"]}, SMALL, generator) == {}


def test_no_neighbours_serves_the_plain_heads(tmp_path: Path) -> None:
    import torch

    features, labels, split = synthetic()
    config = dataclasses.replace(SMALL, neighbours=0)
    trained = fit(features, labels, split, config, seed=0)
    assert trained.banks == {}
    export_bundle(trained, features, tmp_path, config, {"seed": 0})
    test = features.rows(split["test"])
    z = FusionModel(tmp_path, providers="cpu").project(text=test.vectors["text"])["text"]
    np.testing.assert_allclose(z, trained.heads.heads["text"](torch.from_numpy(test.vectors["text"])).detach().numpy(), atol=1e-5)
