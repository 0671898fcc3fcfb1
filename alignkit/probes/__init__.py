"""Probe sets: paired images and captions (and class labels) that every encoder sees.

load_probe("flickr8k:test", n=500)     # -> ProbeSet (validated, fingerprinted)
list_probes()                          # named probes: synthetic, flickr8k[:split], ...
"""

from alignkit.probes.base import CAPTION_POLICIES, ProbeRow, ProbeSet, hash_order
from alignkit.probes.download import RemoteFile
from alignkit.probes.formats import FORMATS, imagenet_class_names, imagenet_wnids
from alignkit.probes.named import (
    COCO_ANNOTATIONS_2017,
    COCO_VAL2017_IMAGES,
    NAMED_PROBES,
    NamedProbe,
    list_probes,
)
from alignkit.probes.registry import load_probe

__all__ = [
    "CAPTION_POLICIES",
    "COCO_ANNOTATIONS_2017",
    "COCO_VAL2017_IMAGES",
    "FORMATS",
    "NAMED_PROBES",
    "NamedProbe",
    "ProbeRow",
    "ProbeSet",
    "RemoteFile",
    "hash_order",
    "imagenet_class_names",
    "imagenet_wnids",
    "list_probes",
    "load_probe",
]
