"""nst-serving: Gatys et al. neural style transfer as a servable TensorFlow SavedModel."""

from nst_model.options import DEFAULTS, OPTIONS

__all__ = ["DEFAULTS", "OPTIONS", "Result", "Stylizer", "load"]


def __getattr__(name: str) -> object:
    """The runner imports TensorFlow: load it on first use, so `nst-stylize --help` is instant
    and the command lines can quieten TensorFlow's logging before it starts."""
    if name in ("Result", "Stylizer", "load"):
        from nst_model import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'nst_model' has no attribute {name!r}")
