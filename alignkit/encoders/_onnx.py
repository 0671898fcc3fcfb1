"""``onnx:<registry name or path.onnx>``: an ONNX graph run by onnxruntime, with its input
convention and output name declared.

Input conventions (:data:`INPUTS`):

* ``image-uint8-nhwc``: RGB uint8 ``(B, H, W, 3)``, normalised inside the graph (the SSCD towers).
* ``image-float-nchw``: float ``(B, 3, H, W)`` normalised with the declared mean/std.
* ``text``: a tokenizer (a folder with ``tokenizer.json``) feeds the graph the inputs it declares
  among ``input_ids``, ``attention_mask``, ``token_type_ids``.

The output named ``output`` is either already pooled ``(B, D)``, or token states ``(B, T, D)``
that are pooled here with the attention mask (``text_pooling``, default masked mean).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit._device import resolve_device
from alignkit.encoders import _offline
from alignkit.encoders._util import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    files_identity,
    image_transform,
    no_layers,
    pool_tokens,
    require,
    tokenizer_counts,
)
from alignkit.encoders.base import Encoder, check_pooling
from alignkit.errors import AlignkitError

INPUTS = ("image-uint8-nhwc", "image-float-nchw", "text")
_ORT_PIP = "pip install onnxruntime"


@dataclass(frozen=True)
class OnnxConvention:
    """How to feed an ONNX graph and read its embedding."""

    inputs: str
    output: str
    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    tokenizer: str | None = None  # folder with tokenizer files; None: the MiniLM package's
    max_length: int = 256
    text_pooling: str = "mean"  # for token-state outputs: mean, cls, last
    normalize: bool = False  # L2-normalise the output (e.g. to match a sentence-transformers model)


# Registry-shipped graphs: name -> convention (the weights come from _offline.OFFLINE_MODELS).
KNOWN: dict[str, OnnxConvention] = {
    # SSCD: uint8 NHWC, resized to 288 x 288 (the whole image; normalisation is inside the graph)
    "sscd": OnnxConvention(inputs="image-uint8-nhwc", output="embedding", image_size=288),
    "sscd_distilled": OnnxConvention(inputs="image-uint8-nhwc", output="embedding", image_size=288),
    # the graph mean-pools itself; output "461" is the sentence embedding (sentence-transformers'
    # paraphrase-MiniLM-L3-v2 has no Normalize module); its max_seq_length is 128
    "paraphrase-MiniLM-L3-v2": OnnxConvention(inputs="text", output="461", max_length=128),
    # token states; all-MiniLM-L6-v2 = masked mean + L2 normalisation, max_seq_length 256
    "all-MiniLM-L6-v2-int8": OnnxConvention(
        inputs="text",
        output="last_hidden_state",
        max_length=256,
        text_pooling="mean",
        normalize=True,
    ),
}


class OnnxEncoder(Encoder):
    """An ONNX graph as a frozen encoder (CPU, or CUDA when onnxruntime-gpu is installed).

    Args:
        model_id: a name in :data:`KNOWN` or the path of an ``.onnx`` file.
        inputs, output, image_size, mean, std, tokenizer, max_length, text_pooling, normalize:
            the convention (:class:`OnnxConvention`); required for a path, overrides for a name.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    def __init__(
        self,
        model_id: str,
        *,
        spec: str,
        device: Any = "auto",
        pooling: str = "default",
        layer: str | int = "last",
        threads: int | None = None,
        precision: str = "auto",
        **convention: Any,
    ) -> None:
        ort = require("onnxruntime", _ORT_PIP)
        self.name = spec
        self.device = resolve_device(device)
        self.precision = precision
        self._model_id = model_id
        no_layers(layer, spec)
        self.layer = "last"
        fields = set(OnnxConvention.__dataclass_fields__)
        unknown = sorted(set(convention) - fields)
        if unknown:
            raise AlignkitError(
                f"unknown option(s) {', '.join(unknown)} for {spec}; expected: "
                f"{', '.join(sorted(fields | {'threads', 'device', 'pooling', 'layer'}))}"
            )
        registry_spec = f"onnx:{model_id}"
        if model_id in KNOWN:
            path = _offline.resolve(registry_spec)
            self._identity = _offline.OFFLINE_MODELS[registry_spec].identity()
            conv = replace(KNOWN[model_id], **convention)
        else:
            path = Path(model_id).expanduser()
            if path.suffix != ".onnx" or not path.is_file():
                raise AlignkitError(
                    f"unknown ONNX model {model_id!r}; expected a path to an .onnx file or one of: "
                    f"{', '.join(KNOWN)}"
                )
            if "inputs" not in convention or "output" not in convention:
                raise AlignkitError(
                    f"{spec}: declare the graph's convention: inputs= one of {', '.join(INPUTS)} "
                    "and output=<output name>"
                )
            self._identity = files_identity([path])
            conv = OnnxConvention(**convention)
        if conv.inputs not in INPUTS:
            raise AlignkitError(f"inputs must be one of {', '.join(INPUTS)}: got {conv.inputs!r}")
        self.convention = conv
        self.modality = "text" if conv.inputs == "text" else "image"

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self._input_names = [i.name for i in self.session.get_inputs()]
        outputs = {o.name: o for o in self.session.get_outputs()}
        if conv.output not in outputs:
            raise AlignkitError(
                f"{spec} has no output named {conv.output!r}; its outputs are: {', '.join(outputs)}"
            )
        out_shape = outputs[conv.output].shape
        self._token_output = len(out_shape) == 3
        width = out_shape[-1]
        if not isinstance(width, int):
            raise AlignkitError(
                f"{spec}: the width of output {conv.output!r} is not static ({width!r})"
            )

        if self.modality == "text":
            allowed = (
                ("default", "cls", "mean", "last", "cls+mean")
                if self._token_output
                else ("default",)
            )
        else:
            allowed = ("default",)
        self.pooling = check_pooling(pooling, allowed, spec)
        self.dim = int(width) * (2 if self.pooling == "cls+mean" else 1)

        if self.modality == "text":
            from transformers import AutoTokenizer

            folder = conv.tokenizer or str(_offline.resolve(_offline.MINILM_TOKENIZER.spec))
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self._tokenizer_source = "minilm-package" if conv.tokenizer is None else folder
            self.token_limit = conv.max_length  # longer captions are cut (Encoder.truncation)
        elif conv.inputs == "image-uint8-nhwc":
            size = conv.image_size
            self._preprocessor = ImageTransform(resize=(size, size), uint8_hwc=True)
        else:
            self._preprocessor = image_transform(
                resize=(conv.image_size, conv.image_size), crop=None, mean=conv.mean, std=conv.std
            )

    def _token_counts(self, texts: list[str]) -> list[int]:
        return tokenizer_counts(self.tokenizer, texts)

    def _forward(self, batch: Any) -> torch.Tensor:
        conv = self.convention
        if self.modality == "image":
            array = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
            if conv.inputs == "image-float-nchw":
                array = array.astype(np.float32)
            out = self.session.run([conv.output], {self._input_names[0]: array})[0]
            return torch.from_numpy(out)
        enc = self.tokenizer(
            batch, padding=True, truncation=True, max_length=conv.max_length, return_tensors="np"
        )
        feed = {}
        for name in self._input_names:
            if name in enc:
                feed[name] = enc[name].astype(np.int64)
            elif name == "token_type_ids":
                feed[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)
            else:
                raise AlignkitError(
                    f"{self.name}: the graph wants input {name!r}, which the tokenizer does not "
                    "give"
                )
        out = torch.from_numpy(self.session.run([conv.output], feed)[0])
        if self._token_output:  # (B, T, D) token states
            pooling = conv.text_pooling if self.pooling == "default" else self.pooling
            out = pool_tokens(out, pooling, mask=torch.from_numpy(enc["attention_mask"]))
        if conv.normalize and self.pooling == "default":
            out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def weights_identity(self) -> str:
        return self._identity

    def config(self) -> dict[str, Any]:
        conv = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in self.convention.__dict__.items()
        }
        return {
            "pooling": self.pooling,
            "layer": self.layer,
            "model": self._model_id,
            "convention": conv,
        }


def create(model_id: str, **options: Any) -> OnnxEncoder:
    return OnnxEncoder(model_id, **options)
