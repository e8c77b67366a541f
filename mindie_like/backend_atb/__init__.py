"""mindie_like.backend_atb: device selection, op table (npu / cuda / cpu), model code, weight loading, runner."""
from ..engine.types import ForwardBatch
from .device import select_device
from .runner import HFModelRunner, ModelRunner, PagedModelRunner

__all__ = ["ForwardBatch", "ModelRunner", "PagedModelRunner", "HFModelRunner", "select_device"]
