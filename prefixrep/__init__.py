__version__ = "0.1.0"
# Written by hand (nbdev only keeps the version line above): the objects a `pip install` user starts from.
# See nbs/10_library.ipynb (PrefixLibrary), nbs/02_prefix.ipynb (PrefixEncoder) and nbs/00_core.ipynb (profiles).
from .core import PROFILES, get_profile
from .library import FittedHead, PrefixLibrary, Representations, pretrained_names
from .prefix import PrefixEncoder, load_backbone
