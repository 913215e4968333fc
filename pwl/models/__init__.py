"""Model families, each built as a BlockNet (stem, N blocks, head).

Every builder takes ``num_classes`` and ``in_chans``; the image-size aware ones
take ``img_size``. Configs in ``conf/model/`` name a builder with ``_target_``.
"""

from pwl.models.resnet import resnet
from pwl.models.timm_split import timm_split
from pwl.models.vgg import vgg
from pwl.models.vit import vit

__all__ = ["resnet", "timm_split", "vgg", "vit"]
