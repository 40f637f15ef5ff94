"""Methods that train CLIP on images through its backbone, by name: ``method:`` in an
``adaptation_methods`` entry picks one, and its own settings sit under its name
(``lora:``, ``bitfit:``). Adding one is its module (a ``core.backbone.BackboneMethod``)
and a line here; the settings check, training, evaluation, export and ``predict`` take
it from this table."""

from __future__ import annotations

from clip_lora_pipeline.core.backbone import BackboneMethod
from clip_lora_pipeline.core.bitfit import BitFit
from clip_lora_pipeline.core.coop import CoOp
from clip_lora_pipeline.core.lora import Lora
from clip_lora_pipeline.core.two_stage import TwoStage
from clip_lora_pipeline.core.vpt import Vpt

BACKBONE_METHODS: dict[str, BackboneMethod] = {
    method.name: method for method in (Lora(), BitFit(), Vpt(), CoOp(), TwoStage())
}
