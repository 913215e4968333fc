"""Model families, each built as a BlockNet (stem, N blocks, head), and their registry.

Every builder takes ``num_classes`` and ``in_chans``; the image-size aware ones
take ``img_size``. Configs in ``conf/model/`` name a builder with ``_target_``.
The builders below are registered (with the schema of their arguments) in this
one place, so a saved model config can be checked against them without
importing anything it names (see ``pwl.models.registry``).
"""

from pwl.models.registry import (
    Builder,
    build_saved_net,
    builder_of,
    check_saved_net,
    register,
    registered,
)
from pwl.models.resnet import ResNetArgs, resnet
from pwl.models.timm_split import TimmSplitArgs, timm_split, timm_split_from_file
from pwl.models.vgg import VGGArgs, vgg
from pwl.models.vit import ViTArgs, vit

register(resnet, ResNetArgs, targets=["pwl.models.resnet"])
register(vgg, VGGArgs, targets=["pwl.models.vgg"])
register(vit, ViTArgs, targets=["pwl.models.vit"])
register(timm_split, TimmSplitArgs, targets=["pwl.models.timm_split"],
         from_file=timm_split_from_file)

__all__ = ["Builder", "build_saved_net", "builder_of", "check_saved_net", "register",
           "registered", "resnet", "timm_split", "vgg", "vit"]
