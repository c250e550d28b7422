"""What the client relies on in the served model, how option values become its inputs, and how a
signature is printed (`nst-client signatures`, nst-export).

The client names the signatures and the inputs it drives (images, steps) and nothing else (the
names live with the chunk loop, nst_client.chunked, and are re-exported here); every option is an input
of the served `serving_default` signature,
typed from that signature's dtype and rank (the server converts nothing: an int64 `steps`
fails). New model options therefore need no client change, and an option left out (None) is
not sent, so the model's own default applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .chunked import DECODE as DECODE  # the names of the contract, re-exported from the chunk loop
from .chunked import DECODE_OPTIONS as DECODE_OPTIONS
from .chunked import LOSSES as LOSSES
from .chunked import PIXELS as PIXELS
from .chunked import SERVING_DEFAULT as SERVING_DEFAULT
from .chunked import Result as Result
from .errors import InputError

if TYPE_CHECKING:
    from tensorflow.core.framework import tensor_pb2
    from tensorflow.core.protobuf import meta_graph_pb2


IMAGES = ("content", "style", "mask")
LIMITS = "limits"  # the signature, without inputs, that reports the limits an export enforces


def limits_line(limits: Mapping[str, int] | None) -> str:
    """The limits in force, in one line, as nst-client signatures and nst-export print them."""
    if limits is None:
        return "limits: not reported (an export from before the `limits` signature; its limits are the defaults)"
    return (
        f"limits: longest side {limits['min_side']} to {limits['max_side']} px, at most {limits['max_steps']} steps "
        f"per call, {limits['max_styles']} styles, {limits['max_input_pixels']} input pixels"
    )


def signature_lines(
    name: str, signature: meta_graph_pb2.SignatureDef, dtype_name: Callable[[int], str], shapes: bool
) -> list[str]:
    """A signature as `nst-client signatures` (dtypes as DT_FLOAT, with shapes) and nst-export (dtypes as
    float32) print it: a line per input, with its default or "required", and a line per output."""
    lines = [f"signature {name!r}"]
    for direction, infos in (("in ", signature.inputs), ("out", signature.outputs)):
        for alias in sorted(infos):
            info = infos[alias]
            columns = f"{dtype_name(info.dtype):<8}"
            if shapes:
                shape = "?" if info.tensor_shape.unknown_rank else str([d.size for d in info.tensor_shape.dim])
                columns = f"{dtype_name(info.dtype):<10} {shape:<16}"
            note = ""
            if direction == "in ":
                note = _default(signature.defaults[alias]) if alias in signature.defaults else "required"
            lines.append(f"  {direction} {alias:<15} {columns} {note}".rstrip())
    return lines


def _default(proto: tensor_pb2.TensorProto) -> str:
    from . import tensors

    try:
        values = tensors.to_array(proto).ravel().tolist()
    except TypeError:
        return f"default: a {tensors.dtype_name(proto.dtype)} tensor"
    if not values:
        return "default: empty"
    return "default: " + " ".join(_shown(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")


def _shown(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_KINDS = {"O": "a string", "b": "true or false", "i": "an integer", "u": "an integer", "f": "a number"}  # by numpy kind


def option_names(signature: meta_graph_pb2.SignatureDef) -> list[str]:
    """The options a signature takes: its inputs other than the images."""
    return sorted(set(signature.inputs) - set(IMAGES))


def typed_options(options: Mapping[str, object], signature: meta_graph_pb2.SignatureDef) -> dict[str, np.ndarray]:
    """The options that were given (not None), as arrays of the signature's dtype and rank.

    Raises InputError for names the signature lacks and values its dtype cannot hold exactly.
    """
    known = option_names(signature)
    values = {}
    for name, value in options.items():
        if value is None:
            continue
        if name not in known:
            raise InputError(f"the model has no option {name!r}; it has: {', '.join(known)}")
        values[name] = typed(name, value, signature.inputs[name], signature.defaults.get(name))
    return values


def typed(
    name: str, value: object, info: meta_graph_pb2.TensorInfo, default: tensor_pb2.TensorProto | None = None
) -> np.ndarray:
    """`value` as the array the signature input `info` takes: a scalar, or a vector for rank 1
    (declared, or, where the model declares any shape and checks it itself, its default's rank).

    Text for a non-string input is read as the command line writes it: "2", "true", and for
    vectors comma-separated values ("1,0.5,0"; "" for none).
    """
    from . import tensors  # TensorFlow's protos, which load all of TensorFlow: only once values are sent

    dtype = tensors.numpy_dtype(info.dtype)
    if dtype is None or dtype.kind not in _KINDS:
        raise InputError(f"{name}: the client cannot send {tensors.dtype_name(info.dtype)} inputs")
    shape = default.tensor_shape if info.tensor_shape.unknown_rank and default is not None else info.tensor_shape
    vector = not shape.unknown_rank and len(shape.dim) == 1
    if isinstance(value, str) and dtype.kind != "O":
        value = _parse(name, value, dtype, vector)
    if vector:
        items = [value] if isinstance(value, str | bytes) or np.ndim(value) == 0 else list(np.ravel(value))
        return np.array([_item(name, v, dtype) for v in items], dtype).reshape(-1)
    if np.ndim(value) != 0:
        raise InputError(f"{name} takes a single value; got {value!r}")
    return np.array(_item(name, value, dtype), dtype)


def _parse(name: str, text: str, dtype: np.dtype, vector: bool) -> object:
    parts = [p.strip() for p in text.split(",") if p.strip()] if vector else [text.strip()]
    try:
        if dtype.kind == "b":
            parsed: list[object] = [_boolean(p) for p in parts]
        elif dtype.kind in "iu":
            parsed = [int(p) for p in parts]
        else:
            parsed = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"{name} must be {_KINDS[dtype.kind]}; got {text!r}") from None
    return parsed if vector else parsed[0]


def _boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(text)


def _item(name: str, value: object, dtype: np.dtype) -> object:
    """One element, checked against the dtype: no silent truncation or wrap-around."""
    if isinstance(value, np.generic):
        value = value.item()
    if dtype.kind == "O":
        if isinstance(value, str):
            try:
                return value.encode()  # the model reads text as UTF-8
            except UnicodeEncodeError:  # lone surrogates: bytes on the command line that are not UTF-8
                raise InputError(f"{name} must be UTF-8 text; got {value!r}") from None
        if isinstance(value, bytes):
            return value
    elif dtype.kind == "b":
        if isinstance(value, bool):
            return value
    elif dtype.kind in "iu":
        if isinstance(value, int) and not isinstance(value, bool):
            limits = np.iinfo(dtype)
            if not limits.min <= value <= limits.max:
                raise InputError(f"{name} is out of the {dtype.name} range; got {value}")
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise InputError(f"{name} must be {_KINDS[dtype.kind]}; got {value!r}")


def as_list(styles: object) -> list:
    """One style image, or a list/tuple of them, as a list."""
    return list(styles) if isinstance(styles, Sequence) and not isinstance(styles, str | bytes) else [styles]
