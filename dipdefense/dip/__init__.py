"""Deep-image-prior pieces (pure torch): the skip network builder and the batched fitting engine."""

from dipdefense.dip.engine import DIPSettings, build_dip_batch, fit_dip
from dipdefense.dip.skip_net import skip, stack_networks

__all__ = ["DIPSettings", "build_dip_batch", "fit_dip", "skip", "stack_networks"]
