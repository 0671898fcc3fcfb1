"""``tfidf:svd-<D>``: a lexical baseline, TF-IDF of word uni+bigrams reduced to D dimensions by a
truncated SVD (latent semantic analysis; Deerwester et al. 1990), rows L2-normalised.

It is *fitted on the texts it is given*: the vocabulary, IDF weights and SVD basis come from
:meth:`TfidfSVDEncoder.fit`. For features of a probe that are reproducible and independent of
batching, fit it on all of the probe's captions once (``extract_features`` does) before encoding;
:meth:`weights_identity` then names the fitted corpus (a hash of its texts), so features fitted on
different texts never share a cache entry. An unfitted encoder fits itself on the first batch it
encodes (with a warning): then features depend on which texts came first.

To train projectors on it, fit it once on the training captions and keep that fit:
:meth:`TfidfSVDEncoder.save_fit` writes it to a folder (the vocabulary as JSON, the IDF weights
and SVD basis as safetensors, no pickle) and :meth:`TfidfSVDEncoder.load_fit` rebuilds the same
scikit-learn transform from it without refitting, so test captions and zero-shot prompts are
encoded by the training fit (bitwise the same features as before saving).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit._device import resolve_device
from alignkit.encoders._util import log, no_layers
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError

FIT_FORMAT = "alignkit.tfidf-fit/1"
FIT_JSON = "tfidf.json"  # format, settings, corpus identity, vocabulary (terms in column order)
FIT_ARRAYS = "tfidf.safetensors"  # idf (n_terms,) and components (k, n_terms), float64
_SETTINGS = ("dim", "seed", "ngram_max", "min_df")


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
        self._sklearn: str | None = None  # the scikit-learn version that fitted it

    @property
    def fitted(self) -> bool:
        return self._vectorizer is not None

    def fit(self, items: Sequence[str]) -> TfidfSVDEncoder:
        """Fit the vocabulary, IDF and SVD basis on ``items`` (strings; order does not matter)."""
        from sklearn.decomposition import TruncatedSVD

        texts = [str(t) for t in items]
        self._check_items(texts)
        if not texts:
            raise AlignkitError(f"{self.name} must be fitted on at least one text: got none")
        corpus = sorted(texts)  # the fit must not depend on the order the texts come in
        vectorizer = self._vectorizer_for()
        x = vectorizer.fit_transform(corpus)  # (n_texts, n_terms) sparse
        k = max(1, min(self.dim, x.shape[1] - 1, x.shape[0] - 1))
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=self.seed)
        svd.fit(x)
        self._vectorizer, self._svd = vectorizer, svd
        digest = hashlib.sha256("\0".join(corpus).encode("utf-8")).hexdigest()
        self._corpus_hash, self._n_fitted = digest, len(corpus)
        self._sklearn = _sklearn_version()
        return self

    def _vectorizer_for(self, vocabulary: Any = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            lowercase=True,
            sublinear_tf=True,
            ngram_range=(1, self.ngram_max),
            min_df=self.min_df,
            vocabulary=vocabulary,
        )

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
        corpus = f"corpus={self._corpus_hash}:n={self._n_fitted}"
        return f"tfidf-svd:sklearn=={self._sklearn}:{corpus}"

    def config(self) -> dict[str, Any]:
        return {
            "pooling": self.pooling,
            "layer": "last",
            "dim": self.dim,
            "seed": self.seed,
            "ngram_max": self.ngram_max,
            "min_df": self.min_df,
        }

    # -- keeping a fit (training: the projectors need the fit they were trained on) ---------------
    def save_fit(self, folder: str | Path) -> Path:
        """Write the fit into ``folder`` (created): :data:`FIT_JSON` (settings, the corpus
        identity, the vocabulary in column order, the digests of both files' contents) and
        :data:`FIT_ARRAYS` (``idf`` ``(n_terms,)`` and ``components`` ``(k, n_terms)``, float64),
        each written atomically. Returns ``folder``.

        Raises:
            AlignkitError: the encoder is not fitted.
        """
        from safetensors.numpy import save_file

        from alignkit._files import atomic_path, atomic_write_text, file_hash

        identity = self.weights_identity()  # refuses an unfitted encoder
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocabulary = self._vectorizer.vocabulary_
        terms = sorted(vocabulary, key=vocabulary.__getitem__)  # column order
        arrays = {
            "idf": np.ascontiguousarray(self._vectorizer.idf_, dtype=np.float64),
            "components": np.ascontiguousarray(self._svd.components_, dtype=np.float64),
        }
        with atomic_path(folder / FIT_ARRAYS) as tmp:
            save_file(arrays, str(tmp), metadata={"format": FIT_FORMAT})
        body = {
            "format": FIT_FORMAT,
            "spec": self.name,
            "settings": {name: self.config()[name] for name in _SETTINGS},
            "weights_identity": identity,
            "sklearn": self._sklearn,
            "corpus": self._corpus_hash,
            "n_texts": self._n_fitted,
            "arrays_sha256": file_hash(folder / FIT_ARRAYS),
            "terms_sha256": _terms_digest(terms),
            "terms": terms,
        }
        atomic_write_text(folder / FIT_JSON, json.dumps(body, ensure_ascii=False))
        return folder

    def load_fit(self, folder: str | Path) -> TfidfSVDEncoder:
        """Become the fit :meth:`save_fit` wrote into ``folder``: the same vocabulary, IDF and
        SVD basis in scikit-learn's own objects (nothing is refitted), and the same
        :meth:`weights_identity` as the encoder that saved it. Returns ``self``.

        Raises:
            AlignkitError (one line naming the file): a file is missing or unreadable, of another
                format, fitted with other settings (dim, seed, n-grams, min_df), or its content
                does not match the digests the JSON records (changed after saving).
        """
        folder = Path(folder)
        body = _read_fit_json(folder / FIT_JSON)
        mine = {name: self.config()[name] for name in _SETTINGS}
        if body.get("settings") != mine:
            raise AlignkitError(
                f"{folder / FIT_JSON} holds a fit of {body.get('spec')} with settings "
                f"{body.get('settings')}, not {self.name}'s {mine}: load the fit this encoder saved"
            )
        terms = body.get("terms")
        if not isinstance(terms, list) or _terms_digest(terms) != body.get("terms_sha256"):
            raise AlignkitError(
                f"{folder / FIT_JSON}: its vocabulary does not match the digest it records (the "
                "file was changed after saving): save the fit again (retrain the run that saved it)"
            )
        idf, components = _read_fit_arrays(folder / FIT_ARRAYS, body, len(terms), self.dim)
        from sklearn.decomposition import TruncatedSVD

        vectorizer = self._vectorizer_for({term: j for j, term in enumerate(terms)})
        vectorizer.idf_ = idf  # sklearn's setter: the transform as fitted, no refit
        svd = TruncatedSVD(
            n_components=components.shape[0], algorithm="randomized", n_iter=7,
            random_state=self.seed,
        )  # fmt: skip
        svd.components_ = components
        svd.n_features_in_ = len(terms)
        self._vectorizer, self._svd = vectorizer, svd
        self._corpus_hash, self._n_fitted = str(body["corpus"]), int(body["n_texts"])
        self._sklearn = str(body["sklearn"])
        return self


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def _terms_digest(terms: list[Any]) -> str:
    return hashlib.sha256(json.dumps(terms, ensure_ascii=False).encode("utf-8")).hexdigest()


def _read_fit_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AlignkitError(
            f"{path} is missing: no TF-IDF fit was saved there (encoder.save_fit; a run folder "
            "without it cannot encode texts as it was trained: retrain the run)"
        )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignkitError(
            f"{path} is not readable JSON ({exc}): save the fit again (retrain the run that "
            "saved it)"
        ) from None
    keys = ("settings", "sklearn", "corpus", "n_texts", "arrays_sha256", "terms")
    if (
        not isinstance(body, dict)
        or body.get("format") != FIT_FORMAT
        or any(k not in body for k in keys)
    ):
        fmt = body.get("format") if isinstance(body, dict) else None
        raise AlignkitError(
            f"{path} is not a TF-IDF fit of format {FIT_FORMAT} (format {fmt!r}, or fields "
            "missing): save the fit again with this alignkit (retrain the run that saved it)"
        )
    return body


def _read_fit_arrays(
    path: Path, body: dict[str, Any], n_terms: int, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """``idf`` ``(n_terms,)`` and ``components`` ``(k, n_terms)`` with ``1 <= k <= dim``, from a
    file whose sha256 is the one the JSON records."""
    from safetensors.numpy import load_file

    from alignkit._files import file_hash

    if not path.is_file():
        raise AlignkitError(
            f"{path} is missing: the TF-IDF fit beside it is incomplete; save the fit again "
            "(retrain the run that saved it)"
        )
    if file_hash(path) != body["arrays_sha256"]:
        raise AlignkitError(
            f"{path} does not match the sha256 that {FIT_JSON} records (the file was changed "
            "or belongs to another fit): save the fit again (retrain the run that saved it)"
        )
    arrays = load_file(str(path))
    idf, components = arrays.get("idf"), arrays.get("components")
    if (
        idf is None
        or components is None
        or idf.shape != (n_terms,)
        or components.ndim != 2
        or components.shape[1] != n_terms
        or not 1 <= components.shape[0] <= dim
    ):
        raise AlignkitError(
            f"{path} must hold idf ({n_terms},) and components (k <= {dim}, {n_terms}): got "
            f"{ {k: tuple(v.shape) for k, v in arrays.items()} }"
        )
    return idf, components


def create(model_id: str, **options: Any) -> TfidfSVDEncoder:
    return TfidfSVDEncoder(model_id, **options)
