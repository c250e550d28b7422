"""nst-serving: Gatys et al. neural style transfer as a servable TensorFlow SavedModel."""

from nst_model.options import DEFAULTS, OPTIONS
from nst_model.runner import Result, Stylizer, load

__all__ = ["DEFAULTS", "OPTIONS", "Result", "Stylizer", "load"]
