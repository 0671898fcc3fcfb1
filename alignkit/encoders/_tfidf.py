"""``tfidf:svd-<D>``: a lexical baseline, TF-IDF of word uni+bigrams reduced to D dimensions by a
truncated SVD (latent semantic analysis; Deerwester et al. 1990), rows L2-normalised.

It is *fitted on the texts it is given*: the vocabulary, IDF weights and SVD basis come from
:meth:`TfidfSVDEncoder.fit`. For features of a probe that are reproducible and independent of
batching, fit it on all of the probe's captions once (``extract_features`` does) before encoding;
:meth:`weights_identity` then names the fitted corpus (a hash of its texts), so features fitted on
different texts never share a cache entry. An unfitted encoder fits itself on the first batch it
encodes (with a warning): then features depend on which texts came first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alignkit._device import resolve_device
from alignkit.encoders._util import log, no_layers
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError


class TfidfSVDEncoder(Encoder):
    """TF-IDF + truncated SVD, ``(n, dim)``; fitted on the texts it is given.

    When the fitting corpus supports fewer than ``dim`` components (few texts or words), the
    missing columns are zeros (no Gram matrix or cosine changes), so the width stays ``dim``.
    """

    modality = "text"
    needs_fit = True

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: Any = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        seed: int = 0,
        ngram_max: int = 2,
        min_df: int = 1,
        precision: str = "auto",
    ) -> None:
        self.name = spec
        self.device = resolve_device(device)
        self.precision = precision
        self.pooling = check_pooling(pooling, ("default",), spec)
        no_layers(layer, spec)
        head, _, width = model_id.partition("-")
        if head != "svd" or not width.isdigit() or int(width) < 1:
            raise AlignkitError(
                f"tfidf model must be 'svd-<dim>', e.g. 'svd-256': got {model_id!r}"
            )
        self.dim = int(width)
        self.seed = int(seed)
        self.ngram_max = int(ngram_max)
        self.min_df = int(min_df)
        self._vectorizer: Any = None
        self._svd: Any = None
        self._corpus_hash: str | None = None
        self._n_fitted = 0

    @property
    def fitted(self) -> bool:
        return self._vectorizer is not None

    def fit(self, items: Sequence[str]) -> TfidfSVDEncoder:
        """Fit the vocabulary, IDF and SVD basis on ``items`` (strings; order does not matter)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [str(t) for t in items]
        self._check_items(texts)
        if not texts:
            raise AlignkitError(f"{self.name} must be fitted on at least one text: got none")
        corpus = sorted(texts)  # the fit must not depend on the order the texts come in
        vectorizer = TfidfVectorizer(
            lowercase=True, sublinear_tf=True, ngram_range=(1, self.ngram_max), min_df=self.min_df
        )
        x = vectorizer.fit_transform(corpus)  # (n_texts, n_terms) sparse
        k = max(1, min(self.dim, x.shape[1] - 1, x.shape[0] - 1))
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=self.seed)
        svd.fit(x)
        self._vectorizer, self._svd = vectorizer, svd
        digest = hashlib.sha256("\0".join(corpus).encode("utf-8")).hexdigest()
        self._corpus_hash, self._n_fitted = digest, len(corpus)
        return self

    def _forward(self, texts: list[str]) -> torch.Tensor:
        if not self.fitted:
            log.warning(
                "%s was not fitted: fitting it on the first %d texts it encodes; call "
                "encoder.fit(all_texts) first for features that do not depend on batching",
                self.name,
                len(texts),
            )
            self.fit(texts)
        z = self._svd.transform(self._vectorizer.transform(texts))  # (B, k)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, : z.shape[1]] = z
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms > 0, norms, 1.0)  # texts with no known word stay zero
        return torch.from_numpy(out)

    def weights_identity(self) -> str:
        if not self.fitted:
            raise AlignkitError(
                f"{self.name} is fitted on the texts it is given: call encoder.fit(texts) before "
                "asking for its weights identity"
            )
        import sklearn

        corpus = f"corpus={self._corpus_hash}:n={self._n_fitted}"
        return f"tfidf-svd:sklearn=={sklearn.__version__}:{corpus}"

    def config(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "layer": "last",
            "dim": self.dim,
            "seed": self.seed,
            "ngram_max": self.ngram_max,
            "min_df": self.min_df,
        }


def create(model_id: str, **options: Any) -> TfidfSVDEncoder:
    return TfidfSVDEncoder(model_id, **options)
