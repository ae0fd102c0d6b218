"""Unsupervised views of the configurations across the ladder: PCA and t-SNE (scikit-learn).

PCA (:func:`pca_configurations`): principal components of the raw ±1 configurations pooled over
the ladder (the same count from each T). Wang (PRB 94, 195105 (2016), arXiv 1606.00318) finds
that the first component of 2D Ising data is the magnetization: its weights are uniform, so
the projection of a configuration on it, p1 = w1 · s, equals √N m, and its explained variance
dominates. Reported: the explained-variance ratios, corr(p1, m) (sign oriented positive), the
uniformity of w1 (|Σ_i w1_i| / √N: 1 for exactly uniform weights), and per T the mean
|p1| / √N (Wang's order-parameter curve, beside <|m|>).

t-SNE (:func:`tsne`): van der Maaten & Hinton, JMLR 9, 2579 (2008); the configurations (first
reduced to 50 principal components, as that paper recommends) and, for models with an encoder,
their codes, embedded in 2-D. Numbers: the final KL divergence, and how well the embedding
orders the ladder: the correlation between each point's T and the mean T of its k = 10 nearest
neighbours in the plane ("temperature_knn_corr", 1: neighbours share T), and the fraction of
points whose neighbours are mostly on the same side of Tc ("phase_knn_agreement").

scikit-learn rather than code of our own: PCA and Barnes-Hut t-SNE are standard, tested
implementations (sklearn.decomposition.PCA, sklearn.manifold.TSNE).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

from ..exact import TC

PCA_PER_T = 1000        # configurations per temperature in the PCA
PCA_COMPONENTS = 10     # explained-variance ratios reported
TSNE_PCA = 50           # configurations are reduced to this many components before t-SNE
KNN = 10                # neighbours in the t-SNE plane for the ordering scores


def _even(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when k ≥ n)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def pca_configurations(temps, spins: list[np.ndarray], mags: list[np.ndarray],
                       per_T: int = PCA_PER_T) -> tuple[dict, dict]:
    """PCA of ±1 configurations pooled over the ladder (see the module doc).

    temps [R] (J/k_B); spins: R arrays int8 ±1 [n_r, L, L]; mags: R arrays of their signed
    magnetization per spin [n_r]. Up to ``per_T`` configurations per T, evenly spaced.
    Returns (summary for metrics.json: {"explained_variance_ratio" [≤ 10], "corr_pc1_m",
    "pc1_weight_uniformity", "temperatures", "mean_abs_pc1_per_spin" [R], "n_configurations"},
    arrays for the picture: {"pc1_per_spin", "m", "T", "weights1" [L, L]})."""
    picks = [_even(len(s), per_T) for s in spins]
    X = np.concatenate([s[i].reshape(len(i), -1) for s, i in zip(spins, picks)]).astype(
        np.float32)
    m = np.concatenate([np.asarray(g)[i] for g, i in zip(mags, picks)])
    T = np.concatenate([np.full(len(i), t) for t, i in zip(temps, picks)])
    N = X.shape[1]
    pca = PCA(n_components=min(PCA_COMPONENTS, N, len(X)), svd_solver="full").fit(X)
    w1 = pca.components_[0]
    p1 = X @ w1                                 # the projection, uncentred: √N m for uniform w1
    r = float(np.corrcoef(p1, m)[0, 1])
    if r < 0:                                   # a component's sign is arbitrary
        w1, p1, r = -w1, -p1, -r
    per_spin = p1 / np.sqrt(N)
    summary = {
        "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
        "corr_pc1_m": r,
        "pc1_weight_uniformity": float(abs(w1.sum()) / np.sqrt(N)),
        "temperatures": [float(t) for t in temps],
        "mean_abs_pc1_per_spin": [float(np.abs(per_spin[T == t]).mean()) for t in temps],
        "n_configurations": int(len(X)),
        "method": "sklearn.decomposition.PCA of the ±1 configurations pooled over the ladder "
                  f"(up to {per_T} per T); p1 = projection of a configuration on the first "
                  f"component"}
    arts = {"pc1_per_spin": per_spin, "m": m, "T": T,
            "weights1": w1.reshape(spins[0].shape[1:])}
    return summary, arts


def _knn_scores(xy: np.ndarray, T: np.ndarray) -> tuple[float, float]:
    """(corr(T, mean T of the KNN nearest neighbours in xy), fraction of points whose
    neighbours are mostly on their side of Tc)."""
    k = min(KNN, len(xy) - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)
    nbr = T[idx[:, 1:]]                          # the first neighbour is the point itself
    corr = float(np.corrcoef(T, nbr.mean(1))[0, 1]) if np.std(T) > 0 else float("nan")
    low = T < TC
    agree = float(np.mean((np.mean(nbr < TC, axis=1) > 0.5) == low))
    return corr, agree


def tsne(points: np.ndarray, T: np.ndarray, seed: int = 0, reduce: bool = True
         ) -> tuple[dict, np.ndarray]:
    """t-SNE (sklearn.manifold.TSNE, 2-D, perplexity min(30, (n − 1)/3), PCA initialisation)
    of points [n, D] at temperatures T [n]; reduce=True first projects them on their first
    TSNE_PCA principal components. Returns ({"kl_divergence", "temperature_knn_corr",
    "phase_knn_agreement", "n_points", "perplexity"}, xy [n, 2])."""
    X = np.asarray(points, np.float32).reshape(len(points), -1)
    if reduce and X.shape[1] > TSNE_PCA and len(X) > TSNE_PCA:
        X = PCA(n_components=TSNE_PCA, random_state=seed).fit_transform(X)
    perplexity = float(min(30.0, (len(X) - 1) / 3))
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                 random_state=seed)
    xy = model.fit_transform(X)
    corr, agree = _knn_scores(xy, np.asarray(T, float))
    return {"kl_divergence": float(model.kl_divergence_), "temperature_knn_corr": corr,
            "phase_knn_agreement": agree, "n_points": int(len(X)),
            "perplexity": perplexity}, xy


def embedding_analysis(temps, spins: list[np.ndarray], mags: list[np.ndarray],
                       codes: Optional[list[np.ndarray]] = None, tsne_points: int = 1000,
                       seed: int = 0) -> tuple[dict, dict]:
    """The "embedding" section: PCA of the configurations, and t-SNE of ``tsne_points`` of them
    (spread evenly over the ladder) and of their codes (codes: R arrays [n_r, d] aligned with
    spins, from the encoder; None for models without one). tsne_points = 0: PCA only.
    Returns (summary for metrics.json, arrays for the pictures)."""
    pca, pca_arts = pca_configurations(temps, spins, mags)
    summary: dict = {"pca": pca}
    arts: dict = {"pca": pca_arts}
    if tsne_points <= 0:
        summary["tsne"] = {"method": "none: tsne_points = 0"}
        return summary, arts
    picks = [_even(len(s), max(1, tsne_points // len(spins))) for s in spins]
    T = np.concatenate([np.full(len(i), t) for t, i in zip(temps, picks)])
    m = np.concatenate([np.asarray(g)[i] for g, i in zip(mags, picks)])
    summary["tsne"] = {"method": "sklearn.manifold.TSNE, 2-D, PCA initialisation; "
                                 f"configurations reduced to {TSNE_PCA} principal components"}
    arts["tsne"] = {"T": T, "m": m}
    sets = {"configurations": np.concatenate([s[i] for s, i in zip(spins, picks)])}
    if codes is not None:
        sets["codes"] = np.concatenate([c[i] for c, i in zip(codes, picks)])
    for name, pts in sets.items():
        stats, xy = tsne(pts, T, seed, reduce=name == "configurations")
        summary["tsne"][name] = {**stats, "xy": np.round(xy, 3).tolist()}
        arts["tsne"][name] = xy
    summary["tsne"]["T"] = T.tolist()
    return summary, arts
