"""pwl: Progressive Weight Loading.

A student network answers first; its blocks are then replaced, one by one, by
the blocks of a pre-trained teacher. Adapters at every block boundary convert
features between the two networks so that any mix of blocks works.
"""

from pwl.blocks import BlockNet
from pwl.hybrid import HybridNet
from pwl.masks import masks_for_order, validate_mask

__all__ = ["BlockNet", "HybridNet", "masks_for_order", "validate_mask"]
__version__ = "0.1.0"
