"""Model families, each built as a BlockNet (stem, N blocks, head), and their registry.

Every image builder takes ``num_classes`` and ``in_chans``; the image-size aware ones
take ``img_size``. ``gpt`` (a causal character LM) takes ``vocab_size`` and ``context_length``. Configs in ``conf/model/`` name a builder with ``_target_``.
Each family registers its builder where it is defined (``@register(Args)``, with the
schema of its arguments), so a saved model config is checked against them without
importing anything it names (see ``pwl.models.registry``).
"""

from pwl.models.gpt import gpt
from pwl.models.registry import MODELS, build_saved_net, check_saved_net, register, registered
from pwl.models.resnet import resnet
from pwl.models.timm_split import timm_split
from pwl.models.vgg import vgg
from pwl.models.vit import vit

__all__ = ["MODELS", "build_saved_net", "check_saved_net", "gpt", "register", "registered",
           "resnet", "timm_split", "vgg", "vit"]
