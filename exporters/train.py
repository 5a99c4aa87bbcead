"""Train the alignment heads, the learned fusion and the autoencoder fusion; export them as one bundle.

Stages (each timed and printed):
1. features: the frozen ONNX encoders over the catalog (cached, see exporters.features);
2. heads: one head per modality (linear, or a small MLP), symmetric InfoNCE on each product's
   modality pairs (optionally hard-negative weighted, optionally against a modality
   discriminator through gradient reversal), plus a supervised-contrastive term on the fine label
   (or the title groups), early-stopped on validation text->image recall@10;
3. fusion: an MLP over the frozen projections + presence mask, supervised-contrastive on the
   fine label (or, label-free, on groups of the titles' last words or k-means clusters), with
   modality dropout, early-stopped on validation precision@10 of the labels it learns;
4. autoencoder: label-free fusion (joint, or cross-modal: every modality rebuilt from each one
   alone), early-stopped on validation reconstruction loss;
5. neighbours: each head's bank of the train split's projections (see ``NeighbourBank``), served
   inside the exported head, never by the fusion graphs (they were trained on the plain projections);
6. export: every graph through the shared ``export_onnx`` (torch vs onnxruntime check), then
   ``bundle.json`` with the version, dims, training data summary and val/test metrics.

Only the train split is learned from; validation picks the epoch; test is only reported.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from encoders_onnx.fusion import BUNDLE_MANIFEST, FusionModel
from encoders_onnx.session import FP32, l2_normalize
from exporters.catalog import Catalog, CatalogMapping, add_catalog_arguments, load_catalog, mapping_from_args
from exporters.features import DEFAULT_CACHE_DIR, Features, MediaDecoding, add_feature_arguments, extract_features
from exporters.heads import (
    AlignmentHeads,
    CrossModalAutoencoder,
    FusionAutoencoder,
    FusionMLP,
    ModalityDiscriminator,
    NeighbourBank,
    ProjectAndFuse,
    info_nce,
    masked_reconstruction,
    modality_adversarial,
    supervised_contrastive,
)
from exporters.metrics import bundle_metrics, item_to_item, projection_mean, split_labels, text_to_image
from exporters.onnx_export import atomic_write, export_onnx


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of training; recorded in the bundle and part of its version."""

    shared_dim: int = 256
    hidden: int = 512
    fused_dim: int = 256
    batch_size: int = 512  # fusion and autoencoder
    head_batch_size: int = 2048  # InfoNCE negatives: every other product of the batch (512: t2i R@10 -0.014, P@10 -0.015)
    head_hidden: int = 0  # 0: linear heads; > 0: MLP heads through this many units
    hard_negatives: float = 0.0  # beta of hard-negative weighting in InfoNCE (0: uniform)
    adversarial_weight: float = 0.0  # gradient-reversal weight of a modality discriminator (0: none)
    head_lr: float = 1e-3  # 2e-3 costs the heads ~0.01 of val recall@10
    lr: float = 2e-3  # fusion and autoencoder
    weight_decay: float = 1e-4
    max_epochs: int = 30
    patience: int = 4
    temperature: float = 0.07  # initial InfoNCE temperature (learned)
    supcon_temperature: float = 0.1
    # The heads' supervised-contrastive term on the fine label, over a seeded sample of at most
    # ``head_supcon_rows`` of the batch's projections (both modalities pooled; all 4,096 of a batch
    # took the heads from ~145 to ~560 s for the same metrics). Chosen on the Myntra validation split
    # (0 / 0.1 / 0.2 / 0.3, with the neighbour banks): t2i P@10 (fine) 0.801 / 0.809 / 0.820 / 0.825,
    # recall@10 0.729 / 0.723 / 0.726 / 0.721. With ``title_groups`` it reads the title groups; off (0)
    # with ``pseudo_labels``, whose clusters come from the heads.
    head_supcon_weight: float = 0.2
    head_supcon_rows: int = 1024
    modality_dropout: float = 0.3
    dropout: float = 0.1
    ae_bottleneck: int = 256
    autoencoder: str = dataclasses.field(default="joint", metadata={"choices": ("joint", "cross_modal")})
    # Cross-modal neighbours served by the heads (0: none). Chosen on the Myntra validation split
    # (k 10 / 30 / 100, scale 20 / 40 / 80, weight 0.3 / 0.5 / 0.7 / 1.0): t2i recall@10 0.598 -> 0.729.
    neighbours: int = 30
    neighbour_scale: float = 20.0
    neighbour_weight: float = 0.5
    # At most this many train products per bank (a seeded sample beyond): each costs 2 KB in the
    # exported head and 256 multiply-adds a projection (Myntra's 35k: 73 MB a head, ~0.3 ms a product).
    neighbour_rows: int = 65536
    # Label-free fusion (0: off, the fusion learns the fine label): the fusion's supervised-contrastive
    # loss reads this many k-means clusters of the train split's projection means instead (val: the
    # nearest centroid picks the epoch), so no label is learned from. Myntra, test P@10 (fine):
    # 200 / 300 / 450 / 600 clusters 0.822 / 0.841 / 0.829 / 0.826 (300, k-means seeds 0-2:
    # 0.835 +- 0.006), against 0.814 for the projection mean itself.
    pseudo_labels: int = 0
    # Label-free fusion from the titles (0: off): each product's positives are the products whose
    # titles end in the same words (lower-cased letters: a product title ends in what the product
    # is, "... Slim Fit Jeans"), the longest ending of at most ``title_groups`` words that at least
    # ``title_group_min`` train titles share. Chosen on the Myntra validation split,
    # P@10 (fine), the label-free heads: the last word alone 0.862; 2 words with at least 5 / 10 / 20 /
    # 40 / 80 / 160 titles 0.886 / 0.897 / 0.904 / 0.906 / 0.900 / 0.885; 3 words at 20 / 80 0.906 / 0.900
    # (300 k-means clusters, ``pseudo_labels``: 0.841 on test). The heads' supervised term reads the
    # groups too (label-free): val t2i recall@10 0.729 -> 0.725, P@10 (fine) 0.801 -> 0.817, the fusion
    # on them 0.903.
    title_groups: int = 0
    title_group_min: int = 40
    threads: int = 2

    def __post_init__(self) -> None:
        if self.title_groups < 0 or self.title_group_min < 1:
            raise ValueError(f"title_groups must be 0 (off) or a number of words, and title_group_min at least 1; "
                             f"got {self.title_groups} and {self.title_group_min}")
        if self.pseudo_labels and self.title_groups:
            raise ValueError("pseudo_labels and title_groups are two label-free fusions: set one of them, not both")
        if self.pseudo_labels and self.head_supcon_weight:
            raise ValueError("pseudo_labels trains label-free, so the heads must not learn the label either: "
                             "set head_supcon_weight to 0 (--head-supcon-weight 0)")


@dataclass
class Trained:
    """The trained torch modules and how each stage went."""

    heads: AlignmentHeads
    fusion: FusionMLP
    autoencoder: FusionAutoencoder | CrossModalAutoencoder
    history: dict[str, dict[str, Any]]
    banks: dict[str, NeighbourBank] = dataclasses.field(default_factory=dict)


def seed_everything(seed: int, threads: int) -> torch.Generator:
    """Same seed and thread count -> same weights: deterministic kernels, a seeded generator."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def fit(features: Features, fine: np.ndarray, split: Mapping[str, np.ndarray], config: TrainConfig, seed: int = 0,
        titles: Sequence[str] | None = None) -> Trained:
    """All three models on the train split, each early-stopped on the val split. The heads'
    supervised term and the fusion learn the fine label, or, label-free, the groups of the
    ``titles`` (one per row of ``features``) with ``config.title_groups``; with
    ``config.pseudo_labels`` the fusion learns clusters of the heads' projections instead."""
    generator = seed_everything(seed, config.threads)
    train, val = features.rows(split["train"]), features.rows(split["val"])
    learned = fine
    if config.title_groups:
        if titles is None or len(titles) != len(fine):
            raise ValueError("title_groups needs the products' titles, one per row of the features")
        learned = title_groups(titles, split["train"], config.title_groups, config.title_group_min)
    history: dict[str, dict[str, Any]] = {}
    heads, history["heads"] = fit_heads(train, val, learned[split["train"]], config, generator)
    projected = {name: _project(heads, part) for name, part in (("train", train), ("val", val))}
    labels = {part: learned[split[part]] for part in ("train", "val")}
    if config.pseudo_labels:
        means = {name: projection_mean(projected[name], part) for name, part in (("train", train), ("val", val))}
        centroids = kmeans(means["train"], config.pseudo_labels, seed)
        labels = {part: nearest(means[part], centroids) for part in ("train", "val")}
    fusion, history["fusion"] = fit_fusion(
        projected["train"], _mask(train), labels["train"],
        projected["val"], _mask(val), labels["val"], config, generator,
    )
    autoencoder, history["autoencoder"] = fit_autoencoder(train, val, config, generator)
    banks = neighbour_banks(projected["train"], train.present, config, generator) if config.neighbours else {}
    return Trained(heads, fusion, autoencoder, history, banks)


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 30) -> np.ndarray:
    """``k`` unit centroids of the unit rows ``x`` (spherical k-means, seeded from ``k`` random
    rows; an emptied cluster restarts at a random row)."""
    if not 1 <= k <= len(x):
        raise ValueError(f"pseudo_labels must be between 1 and the {len(x)} training products, not {k}")
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iterations):
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest(x, centroids), x)
        empty = ~sums.any(axis=1)
        sums[empty] = x[rng.integers(len(x), size=int(empty.sum()))]
        centroids = l2_normalize(sums)
    return centroids


_LETTERS = re.compile(r"[^\W\d_]+")  # words of letters, in any script


def title_groups(titles: Sequence[str], train_rows: np.ndarray, words: int, min_size: int) -> np.ndarray:
    """A pseudo-label per title: its longest ending of at most ``words`` words (lower-cased letters;
    digits and punctuation dropped) that at least ``min_size`` train titles share: "running shoes"
    where enough titles end so, else "shoes". A title with no such ending gets a code of its own,
    so it has no positives. Codes follow the sorted endings."""
    endings = [list(dict.fromkeys(" ".join(title_words[-n:]) for n in range(words, 0, -1) if title_words))  # longest first
               for title_words in (_LETTERS.findall(title.lower()) for title in titles)]
    counts = Counter(ending for row in train_rows for ending in endings[row])
    chosen = [next((e for e in own if counts[e] >= min_size), None) for own in endings]
    codes = {ending: code for code, ending in enumerate(sorted({e for e in chosen if e is not None}))}
    return np.asarray([codes[e] if e is not None else len(codes) + row for row, e in enumerate(chosen)], dtype=np.int64)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's most similar centroid (its pseudo-label)."""
    return np.argmax(x @ centroids.T, axis=1)


def neighbour_banks(
    projected: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], config: TrainConfig, generator: torch.Generator
) -> dict[str, NeighbourBank]:
    """Per modality: its projections of the products that have another modality (keys), and the unit
    mean of those other projections (values); at most ``config.neighbour_rows`` of them, sampled
    with ``generator``. A modality no product shares with another gets none."""
    banks = {}
    for m in projected:
        others = [o for o in projected if o != m]
        if not others:
            continue
        rows = np.flatnonzero(present[m] & np.any([present[o] for o in others], axis=0))
        if len(rows) > config.neighbour_rows:
            rows = np.sort(rows[torch.randperm(len(rows), generator=generator)[: config.neighbour_rows].numpy()])
        if len(rows):
            borrowed = sum(projected[o][rows] * present[o][rows, None] for o in others)
            banks[m] = NeighbourBank(
                torch.from_numpy(projected[m][rows]), nn.functional.normalize(torch.from_numpy(borrowed), dim=-1),
                config.neighbours, config.neighbour_scale, config.neighbour_weight,
            )
    return banks


def fit_heads(
    train: Features, val: Features, labels: np.ndarray, config: TrainConfig, generator: torch.Generator
) -> tuple[AlignmentHeads, dict[str, Any]]:
    """Heads; loss = symmetric InfoNCE over every modality pair a product has, + the supervised term
    on ``labels`` (``head_supcon_weight``) and the optional adversarial one."""
    modalities = train.modalities
    heads = AlignmentHeads(train.dims, config.shared_dim, config.temperature, config.head_hidden)
    # A discriminator (if any) trains beside the heads, under one optimizer, and is dropped afterwards.
    trainable = nn.ModuleDict({"heads": heads})
    if config.adversarial_weight:
        trainable["discriminator"] = ModalityDiscriminator(config.shared_dim, len(modalities), config.hidden)
    x = {m: torch.from_numpy(train.vectors[m]) for m in modalities}
    has = {m: torch.from_numpy(train.present[m]) for m in modalities}
    y = torch.from_numpy(labels)
    pairs = list(itertools.combinations(modalities, 2))

    def loss(batch: Tensor) -> Tensor:
        z = heads({m: x[m][batch] for m in modalities})
        terms = []
        for a, b in pairs:
            rows = has[a][batch] & has[b][batch]
            if int(rows.sum()) > 1:
                terms.append(info_nce(z[a][rows], z[b][rows], heads.scale, config.hard_negatives))
        if config.head_supcon_weight:
            rows = [has[m][batch] for m in modalities]
            pooled = torch.cat([z[m][r] for m, r in zip(modalities, rows)])
            pooled_y = torch.cat([y[batch][r] for r in rows])
            sample = torch.randperm(len(pooled), generator=generator)[: config.head_supcon_rows]
            terms.append(config.head_supcon_weight
                         * supervised_contrastive(pooled[sample], pooled_y[sample], config.supcon_temperature))
        if config.adversarial_weight:
            projected = [z[m][has[m][batch]] for m in modalities]
            terms.append(modality_adversarial(projected, trainable["discriminator"], config.adversarial_weight))
        return torch.stack(terms).sum()

    def score() -> float:
        z = _project(heads, val)
        both = val.present["text"] & val.present["image"]
        return text_to_image(z["text"][both], z["image"][both])["recall@10"]

    return heads, train_loop("heads", trainable, loss, len(y), score, config.head_lr, config, generator,
                             batch_size=config.head_batch_size)


def fit_fusion(
    train_z: Mapping[str, np.ndarray],
    train_present: np.ndarray,
    train_labels: np.ndarray,
    val_z: Mapping[str, np.ndarray],
    val_present: np.ndarray,
    val_labels: np.ndarray,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[FusionMLP, dict[str, Any]]:
    """Supervised-contrastive fusion of the given projections (also the single-modality baseline)."""
    modalities = tuple(train_z)
    fusion = FusionMLP(modalities, config.shared_dim, config.hidden, config.fused_dim, config.dropout)
    z = [torch.from_numpy(train_z[m]) for m in modalities]
    present = torch.from_numpy(train_present.astype(np.float32))
    y = torch.from_numpy(train_labels)

    def loss(batch: Tensor) -> Tensor:
        mask = _drop_modalities(present[batch], config.modality_dropout, generator)
        return supervised_contrastive(fusion([v[batch] for v in z], mask), y[batch], config.supcon_temperature)

    val_inputs = [torch.from_numpy(val_z[m]) for m in modalities]
    val_mask = torch.from_numpy(val_present.astype(np.float32))

    def score() -> float:
        fused = fusion(val_inputs, val_mask).numpy()
        return item_to_item(fused, val_labels)["p@10"]

    return fusion, train_loop("fusion", fusion, loss, len(y), score, config.lr, config, generator)


def fit_single_modality(
    projected: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    config: TrainConfig,
    seed: int,
) -> FusionMLP:
    """The fusion training on one modality's projection only: the baseline a fusion must beat."""
    if len(projected["train"]) != 1:
        raise ValueError(f"one modality expected, got {sorted(projected['train'])}")
    generator = seed_everything(seed, config.threads)
    ones = {part: np.ones((len(labels[part]), 1), bool) for part in ("train", "val")}
    fusion, _ = fit_fusion(projected["train"], ones["train"], labels["train"],
                           projected["val"], ones["val"], labels["val"], config, generator)
    return fusion


def fuse_single(fusion: FusionMLP, z: np.ndarray) -> np.ndarray:
    """Apply a single-modality fusion to projections (for evaluation)."""
    with torch.no_grad():
        return fusion([torch.from_numpy(z)], torch.ones(len(z), 1)).numpy()


def fit_autoencoder(
    train: Features, val: Features, config: TrainConfig, generator: torch.Generator
) -> tuple[FusionAutoencoder | CrossModalAutoencoder, dict[str, Any]]:
    """Rebuild every present modality from a code made with some hidden.

    ``joint``: one encoder over all modalities, random modality dropout (a denoising autoencoder).
    ``cross_modal``: one encoder per modality; each batch is seen through every view that hides
    whole modalities (each modality alone, then all together), and each view rebuilds them all.
    """
    x = [torch.from_numpy(train.vectors[m]) for m in train.modalities]
    present = torch.from_numpy(_mask(train).astype(np.float32))
    ae: FusionAutoencoder | CrossModalAutoencoder
    if config.autoencoder == "cross_modal":
        ae = CrossModalAutoencoder(train.dims, config.hidden, config.ae_bottleneck)
        views = [*torch.eye(len(x)), torch.ones(len(x))]

        def loss(batch: Tensor) -> Tensor:
            inputs, has = [v[batch] for v in x], present[batch]
            terms = []
            for view in views:
                shown = has * view
                rows = shown.sum(dim=1) > 0
                code = ae.encode([v[rows] for v in inputs], shown[rows])
                terms.append(masked_reconstruction(ae.decode(code), [v[rows] for v in inputs], has[rows]))
            return torch.stack(terms).mean()
    elif config.autoencoder == "joint":
        ae = FusionAutoencoder(train.dims, config.hidden, config.ae_bottleneck)

        def loss(batch: Tensor) -> Tensor:
            inputs = [v[batch] for v in x]
            code = ae.encode(inputs, _drop_modalities(present[batch], config.modality_dropout, generator))
            return masked_reconstruction(ae.decode(code), inputs, present[batch])
    else:
        raise ValueError(f"unknown autoencoder {config.autoencoder!r}: joint or cross_modal")

    val_x = [torch.from_numpy(val.vectors[m]) for m in val.modalities]
    val_present = torch.from_numpy(_mask(val).astype(np.float32))

    def score() -> float:
        return -float(masked_reconstruction(ae.decode(ae.encode(val_x, val_present)), val_x, val_present))

    return ae, train_loop("autoencoder", ae, loss, len(present), score, config.lr, config, generator)


class LoopConfig(Protocol):
    """The knobs :func:`train_loop` reads (TrainConfig's, the fine-tuning config's)."""

    @property
    def batch_size(self) -> int: ...
    @property
    def max_epochs(self) -> int: ...
    @property
    def patience(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...


def train_loop(
    name: str,
    model: nn.Module,
    loss_fn: Callable[[Tensor], Tensor],
    n_train: int,
    score: Callable[[], float],
    lr: float,
    config: LoopConfig,
    generator: torch.Generator,
    param_groups: list[dict[str, Any]] | None = None,
    budget_s: float = math.inf,
    progress: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """AdamW over shuffled batches (``batch_size``, default ``config.batch_size``); keep the weights
    of the best validation score; stop after ``patience`` epochs without improvement, or at the
    first batch past ``budget_s`` seconds (that epoch is scored as it is). ``param_groups`` give
    parts of the model their own learning rates; ``progress`` prints every epoch (for runs of
    minutes)."""
    started = time.perf_counter()
    optimizer = torch.optim.AdamW(param_groups or model.parameters(), lr=lr, weight_decay=config.weight_decay)
    best, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    epoch, stopped, epoch_losses = 0, "max_epochs", []
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        losses = []
        for batch in torch.randperm(n_train, generator=generator).split(batch_size or config.batch_size):
            if len(batch) < 2:
                continue
            optimizer.zero_grad()
            loss = loss_fn(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if time.perf_counter() - started > budget_s:
                stopped = "budget"
                break
        epoch_losses.append(round(float(np.mean(losses)), 4))
        model.eval()
        with torch.no_grad():
            current = score()
        if progress:
            print(f"{name} epoch {epoch}: train loss {epoch_losses[-1]:.4f}, val {current:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        if current > best:
            best, best_epoch, best_state = current, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            stopped = "patience"
        if stopped != "max_epochs":
            break
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - started
    print(f"{name}: best val {best:.4f} at epoch {best_epoch} of {epoch} ({seconds:.1f} s, stopped by {stopped})", flush=True)
    return {"val_score": best, "best_epoch": best_epoch, "epochs": epoch, "stopped": stopped,
            "train_losses": epoch_losses, "seconds": round(seconds, 2)}


def _drop_modalities(present: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Modality dropout: hide each present modality with probability ``p``, never all of a row's."""
    keep = (torch.rand(present.shape, generator=generator) >= p).float() * present
    emptied = keep.sum(dim=1, keepdim=True) == 0
    return torch.where(emptied, present, keep)


def _mask(features: Features) -> np.ndarray:
    """(n, k) presence in the features' modality order."""
    return np.stack([features.present[m] for m in features.modalities], axis=1)


@torch.no_grad()
def _project(heads: AlignmentHeads, features: Features) -> dict[str, np.ndarray]:
    heads.eval()
    return {m: heads.heads[m](torch.from_numpy(features.vectors[m])).numpy() for m in features.modalities}


# -- export ------------------------------------------------------------------------------------


class _Head(nn.Module):
    """A projection head (and its neighbour bank, if any) whose graph input is named after its
    modality (``text``, ``image``, ...)."""

    def __init__(self, heads: AlignmentHeads, modality: str, bank: NeighbourBank | None) -> None:
        super().__init__()
        self.head = heads.heads[modality]
        self.bank = bank
        self.modality = modality

    def forward(self, text: Tensor | None = None, image: Tensor | None = None, video: Tensor | None = None) -> Tensor:
        z = self.head({"text": text, "image": image, "video": video}[self.modality])
        return self.bank(z) if self.bank is not None else z


def _export_samples(features: Features, rows: int = 5) -> dict[str, Tensor]:
    """Real vectors of each modality to check the graphs on: random ones sit at the same cosine to
    every bank key, where the nearest neighbours tie and a last-bit difference picks another."""
    generator = torch.Generator().manual_seed(0)
    samples = {}
    for m, d in features.dims.items():
        have = features.vectors[m][features.present[m]]
        samples[m] = (torch.from_numpy(np.resize(have, (rows, d)).astype(np.float32)) if len(have)
                      else nn.functional.normalize(torch.randn(rows, d, generator=generator), dim=1))
    return samples


def export_bundle(
    trained: Trained, features: Features, out_dir: Path, config: TrainConfig, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Every graph through the shared export (checked against torch), then ``bundle.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = _export_samples(features)
    batch_axis = {0: "batch"}
    manifests: dict[str, dict[str, Any]] = {}
    for m in features.modalities:
        manifests[f"{m}_head"] = export_onnx(
            _Head(trained.heads, m, trained.banks.get(m)), {m: samples[m]}, ["embedding"], {m: batch_axis, "embedding": batch_axis},
            out_dir, f"{m}_head",
            source=f"shelfstream {'MLP' if config.head_hidden else 'linear'} {m} head (InfoNCE)"
                   + (f" + {len(trained.banks[m].keys)} cross-modal neighbours" if m in trained.banks else ""),
        )
    present = torch.tensor([[1.0] * len(features.modalities)] * 4 + [[1.0] + [0.0] * (len(features.modalities) - 1)])
    fusion_inputs = {"present": present, **samples}
    fusion_axes = {name: batch_axis for name in [*fusion_inputs, "fused"]}
    for name, module in (
        ("fusion", ProjectAndFuse(trained.heads, trained.fusion)),
        ("autoencoder", ProjectAndFuse(None, trained.autoencoder)),
    ):
        manifests[name] = export_onnx(
            module, fusion_inputs, ["fused"], fusion_axes, out_dir, name, source=f"shelfstream {name} fusion",
        )
    # Video vectors are pooled image-encoder frames: without video in training, the image head serves them.
    heads = {m: {"model": f"{m}_head", "trained": True} for m in features.modalities}
    if "video" not in heads:
        heads["video"] = {"model": "image_head", "trained": False, "tied_to": "image"}
    input_dims = {**features.dims, "video": features.dims.get("video", features.dims["image"])}
    versions = {name: m["version"] for name, m in manifests.items()}
    learned_from = (f"{config.pseudo_labels} k-means clusters of the projection means (label-free)" if config.pseudo_labels
                    else f"groups of the titles' last words (up to {config.title_groups}, label-free)" if config.title_groups
                    else "the fine label")
    bundle = {
        "version": hashlib.sha256(json.dumps([versions, dataclasses.asdict(config)], sort_keys=True).encode()).hexdigest()[:12],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shared_dim": config.shared_dim,
        "input_dims": input_dims,
        "encoders": features.versions,
        "heads": heads,
        "fusions": {
            "learned": {"model": "fusion", "modalities": list(features.modalities),
                        "loss": f"supervised contrastive on {learned_from}, modality dropout"},
            "autoencoder": {"model": "autoencoder", "modalities": list(features.modalities),
                            "loss": f"masked reconstruction of the encoder vectors ({config.autoencoder}, label-free)"},
        },
        "models": versions,
        "config": dataclasses.asdict(config),
        "history": trained.history,
        **extra,
    }
    atomic_write(out_dir / BUNDLE_MANIFEST, (json.dumps(bundle, indent=2) + "\n").encode())
    return bundle


def _replace_dir(new: Path, target: Path) -> None:
    """Swap a finished bundle folder in; a reader never sees heads of one version beside another's."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{time.time_ns()}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


# -- the stage runner --------------------------------------------------------------------------


class _Stages:
    """Times named stages and prints each as it ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._started - sum(self.seconds.values()), 2)
        print(f"== stage {name}: {self.seconds[name]:.1f} s", flush=True)

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self._started, 2)


def train(
    catalog: str | Path | Catalog,
    mapping: CatalogMapping | None,
    model_dir: str | Path,
    out_bundle_dir: str | Path,
    seed: int = 0,
    config: TrainConfig = TrainConfig(),
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    providers: str = "cpu",
    decoding: MediaDecoding = MediaDecoding(),
    precision: str = FP32,
) -> dict[str, Any]:
    """Catalog -> features -> heads, fusion, autoencoder -> ONNX bundle in ``out_bundle_dir``.

    Returns the bundle manifest (also written as ``bundle.json``).
    """
    stages = _Stages()
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(catalog, mapping)
    split = cat.split(seed)
    features = extract_features(cat, model_dir, cache_dir, providers=providers, decoding=decoding, precision=precision)
    stages.done("features")
    trained = fit(features, cat.labels("fine"), split, config, seed, titles=[p.title for p in cat.products])
    stages.done("training")
    out = Path(out_bundle_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.new-") as tmp:
        staging = Path(tmp) / "bundle"
        bundle = export_bundle(trained, features, staging, config, {"seed": seed, "training_data": cat.summary(seed)})
        stages.done("export")
        metrics = {}
        for part in ("val", "test"):
            metrics[part] = bundle_metrics(FusionModel(staging, providers), features.rows(split[part]),
                                           split_labels(cat, split[part]))
        bundle["metrics"] = metrics
        stages.done("metrics")
        bundle["stage_seconds"] = {**stages.seconds, "total": stages.total}
        atomic_write(staging / BUNDLE_MANIFEST, (json.dumps(bundle, indent=2) + "\n").encode())
        _replace_dir(staging, out)
    print(f"bundle {bundle['version']} -> {out} in {stages.total:.1f} s; test: {json.dumps(metrics['test'])}", flush=True)
    return bundle


def configure_train_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``shelfstream train`` (the CLI adds this parser and calls :func:`run_train`)."""
    add_catalog_arguments(parser)
    add_feature_arguments(parser)
    parser.add_argument("--out", help="bundle folder to write (default: MODEL_DIR/fusion)")
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            choices=f.metadata.get("choices"), help=f"training knob (default {f.default})")


def run_train(args: argparse.Namespace, decoding: MediaDecoding = MediaDecoding()) -> dict[str, Any]:
    """``shelfstream train``; ``decoding`` is the worker's (the CLI reads it from the settings)."""
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    out = args.out or str(Path(args.model_dir) / "fusion")
    return train(args.dataset, mapping_from_args(args), args.model_dir, out, args.seed, config, args.cache_dir,
                 args.providers, decoding, args.precision)
