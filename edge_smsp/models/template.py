"""The unpruned architecture of each backbone, built once per process, that saved pruned models are pruned
from again when they are loaded (their files then fill every tensor)."""

from __future__ import annotations

from torch import nn

_TEMPLATES: dict[tuple[str, int], nn.Module] = {}
_TEMPLATE_LIMIT = 8


def template(backbone: str, image_size: int) -> nn.Module:
    """The unpruned architecture of a backbone at an input size (random weights), built once per process;
    copy it, never change it."""
    from edge_smsp.models import zoo

    key = (backbone, image_size)
    if key not in _TEMPLATES:
        if len(_TEMPLATES) >= _TEMPLATE_LIMIT:
            _TEMPLATES.clear()
        _TEMPLATES[key] = zoo.load_backbone(backbone, pretrained=False, image_size=image_size)
    return _TEMPLATES[key]
