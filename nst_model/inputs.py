"""Decoding, resizing and validation of request inputs inside the graph.

The server checks neither dtypes nor shapes, so every input is checked here before any kernel
sees it; a failed check is an INVALID_ARGUMENT whose message names the input and the limit.
Checks use runtime shape ops: a static shape in a signature is only what a caller should send.
"""

from __future__ import annotations

import tensorflow as tf

from nst_model.options import MAX_INPUT_PIXELS, MAX_SIDE, MAX_STYLES, MIN_SIDE


def require(x: tf.Tensor, ok: tf.Tensor, *message: str | tf.Tensor) -> tf.Tensor:
    """`x`, usable only once `ok` holds; otherwise the run fails with `message`."""
    with tf.control_dependencies([tf.debugging.Assert(ok, list(message), summarize=8)]):
        return tf.identity(x)


def runtime_shape(x: tf.Tensor) -> tf.Tensor:
    """The fed tensor's shape; never folded into a constant from the declared shape."""
    return tf.raw_ops.Shape(input=x)


def runtime_size(x: tf.Tensor) -> tf.Tensor:
    """The fed tensor's element count (tf.size folds the declared shape, like tf.shape)."""
    return tf.reduce_prod(runtime_shape(x))


def _rank4_shape(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(is rank 4, shape padded or cut to 4 entries) without indexing past the real rank."""
    shape = runtime_shape(x)
    return tf.equal(tf.size(shape), 4), tf.concat([shape, tf.zeros([4], tf.int32)], 0)[:4]


def scalar(x: tf.Tensor, name: str) -> tf.Tensor:
    """`x` if it is a scalar. The static shape comes from taking its one element, not from
    tf.ensure_shape: Grappler infers an input's rank from an EnsureShape downstream, folds the rank
    check into a constant, and the EnsureShape then fails first, naming an internal tensor."""
    shape = runtime_shape(x)
    return tf.reshape(require(x, tf.equal(tf.size(shape), 0), f"{name} must be a scalar; got shape", shape), [-1])[0]


def int_in_range(x: tf.Tensor, name: str, low: int, high: int, note: str = "") -> tf.Tensor:
    """A scalar int within [low, high]; `note` follows the bounds in the message (who set them)."""
    x = scalar(x, name)
    return require(x, (x >= low) & (x <= high), f"{name} must be between {low} and {high}{note}; got", x)


def non_negative(x: tf.Tensor, name: str, positive: bool = False) -> tf.Tensor:
    x = scalar(x, name)
    ok = tf.math.is_finite(x) & ((x > 0) if positive else (x >= 0))
    return require(x, ok, f"{name} must be a finite number {'> 0' if positive else '>= 0'}; got", x)


def pixels(x: tf.Tensor, name: str) -> tf.Tensor:
    """A float32 image [1, H, W, 3] with values in [0, 1] and at most MAX_INPUT_PIXELS pixels."""
    rank4, shape = _rank4_shape(x)
    x = require(
        x,
        rank4 & tf.equal(shape[0], 1) & tf.equal(shape[3], 3),
        f"{name} must be float32 pixels shaped [1, height, width, 3]; got shape",
        runtime_shape(x),
    )
    x = require(
        x,
        tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64) <= MAX_INPUT_PIXELS,
        f"{name} has more than {MAX_INPUT_PIXELS} pixels; got height, width",
        shape[1:3],
    )
    x = require(
        x,
        tf.reduce_all(tf.math.is_finite(x)) & (tf.reduce_min(x) >= 0.0) & (tf.reduce_max(x) <= 1.0),
        f"{name} values must be finite and within [0, 1]",
    )
    return tf.reshape(x, [1, shape[1], shape[2], 3])  # static rank without an EnsureShape (see `scalar`)


def working_size(image: tf.Tensor, name: str, max_side: int) -> tf.Tensor:
    """`image` [1, H, W, 3] if its sides fit the optimisation: MIN_SIDE to `max_side` px."""
    return sides_fit(image, tf.shape(image)[1:3], name, max_side)


def sides_fit(x: tf.Tensor, sides: tf.Tensor, name: str, max_side: int) -> tf.Tensor:
    """`x`, usable only once `sides` [height, width], the image `name`'s after resizing, are within
    MIN_SIDE..max_side: from its shape, or predicted from its header before it is decoded."""
    return require(
        x,
        tf.reduce_all(sides >= MIN_SIDE) & tf.reduce_all(sides <= max_side),
        f"{name} sides must be between {MIN_SIDE} and {max_side}{limit_note(max_side)} px after resizing; "
        "got height, width",
        sides,
    )


def limit_note(max_side: int) -> str:
    """Said after a side limit that an operator lowered, so that the caller knows whom to ask."""
    return " (lowered at export: nst-export --max-side)" if max_side < MAX_SIDE else ""


def within(x: tf.Tensor, name: str, low: float | None = None, high: float | None = None) -> tf.Tensor:
    """`x` if every value is finite and within [low, high] (None: unbounded on that side)."""
    ok = tf.reduce_all(tf.math.is_finite(x))
    if low is not None:
        ok &= tf.reduce_all(x >= low)
    if high is not None:
        ok &= tf.reduce_all(x <= high)
    if low is not None and high is not None:
        bounds = f" and within [{low:g}, {high:g}]"
    else:
        bounds = f" and >= {low:g}" if low is not None else f" and <= {high:g}" if high is not None else ""
    return require(x, ok, f"{name} values must be finite{bounds}")


def optional_state(
    x: tf.Tensor, like: tf.Tensor, default: tf.Tensor, name: str, low: float | None = None, high: float | None = None
) -> tf.Tensor:
    """A resumable-state input: `default` when empty, else checked to have the shape of `like`
    and values within [low, high]."""
    given = runtime_size(x) > 0
    rank4, shape = _rank4_shape(x)
    x = require(
        x,
        tf.logical_not(given) | (rank4 & tf.reduce_all(tf.equal(shape, tf.shape(like)))),
        f"{name} must be empty or shaped like the content pixels; got shape",
        runtime_shape(x),
    )
    x = within(x, name, low, high)
    return tf.cond(given, lambda: tf.reshape(x, tf.shape(like)), lambda: default)


def optional_history(
    x: tf.Tensor, like: tf.Tensor, max_pairs: int, name: str, low: float | None = None, high: float | None = None
) -> tf.Tensor:
    """An L-BFGS history input: [k, H, W, 3] pairs for content [1, H, W, 3], k <= max_pairs,
    values within [low, high].

    Empty (the default) means no history: [0, H, W, 3].
    """
    given = runtime_size(x) > 0
    rank4, shape = _rank4_shape(x)
    x = require(
        x,
        tf.logical_not(given)
        | (rank4 & (shape[0] <= max_pairs) & tf.reduce_all(tf.equal(shape[1:], tf.shape(like)[1:]))),
        f"{name} must be empty or hold at most {max_pairs} images shaped like the content; got shape",
        runtime_shape(x),
    )
    x = within(x, name, low, high)
    empty = tf.zeros(tf.concat([[0], tf.shape(like)[1:]], 0))
    return tf.cond(given, lambda: tf.reshape(x, [-1, *tf.unstack(tf.shape(like)[1:])]), lambda: empty)


def scaled_sides(sides: tf.Tensor, longest: tf.Tensor) -> tf.Tensor:
    """Sides [..., 2] (height, width) scaled so that the longest is `longest`, as images are resized:
    from an image's shape, or from the sizes its header declares before it is decoded."""
    size = tf.cast(sides, tf.float32)
    scale = tf.cast(longest, tf.float32) / tf.reduce_max(size, axis=-1, keepdims=True)
    return tf.maximum(tf.cast(size * scale, tf.int32), 1)


def longest_side_size(image: tf.Tensor, longest: tf.Tensor) -> tf.Tensor:
    """[height, width] of `image` [1, H, W, 3] scaled so that its longest side is `longest`."""
    return scaled_sides(tf.shape(image)[1:3], longest)


def resize_longest_side(image: tf.Tensor, longest: tf.Tensor) -> tf.Tensor:
    """Scale [1, H, W, 3] so its longest side is `longest`, as the reference does (bilinear).

    Antialiasing is on, so shrinking a large photo does not alias; for same-size and enlarging
    resizes it makes no difference.
    """
    resized = tf.image.resize(image, longest_side_size(image, longest), antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


ECHO_CHARS = 40  # how much of a refused string an error message repeats


def echo(text: tf.Tensor) -> tf.Tensor:
    """`text` as an error message may show it: valid UTF-8 (bad bytes replaced), cut to ECHO_CHARS.

    A message carrying invalid UTF-8 fails in the caller's own error handling, and a 1 MB option
    would be repeated whole.
    """
    clean = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
    cut = tf.strings.substr(clean, 0, ECHO_CHARS, unit="UTF8_CHAR")
    long = tf.strings.length(clean, unit="UTF8_CHAR") > ECHO_CHARS
    return tf.strings.join([cut, tf.where(long, "...", "")])


def choice(x: tf.Tensor, name: str, choices: tuple[str, ...]) -> tf.Tensor:
    """The index of the string `x` in `choices`, for tf.switch_case; unknown strings are refused."""
    x = scalar(x, name)
    matches = tf.equal(x, tf.constant(choices))
    x = require(x, tf.reduce_any(matches), f"{name} must be one of {', '.join(choices)}; got", echo(x))
    with tf.control_dependencies([x]):
        return tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int32)


def float_in_range(x: tf.Tensor, name: str, low: float, high: float) -> tf.Tensor:
    x = scalar(x, name)
    return require(
        x, tf.math.is_finite(x) & (x >= low) & (x <= high), f"{name} must be between {low:g} and {high:g}; got", x
    )


def blend_weights(x: tf.Tensor, name: str, length: tf.Tensor | int, per: str) -> tf.Tensor:
    """Weights [length] (one `per` item), finite, non-negative and not all zero, normalised to sum 1."""
    shape = runtime_shape(x)
    x = require(
        x,
        tf.equal(tf.size(shape), 1) & tf.equal(runtime_size(x), length),
        f"{name} must be a vector with one weight per {per}; got shape, expected length",
        shape,
        length,
    )
    x = tf.reshape(x, [-1])
    ok = tf.reduce_all(tf.math.is_finite(x) & (x >= 0.0)) & (tf.reduce_sum(x) > 0.0)
    x = require(x, ok, f"{name} must be finite, >= 0 and not all zero; got", x)
    return x / tf.reduce_sum(x)


def encoded_styles(x: tf.Tensor, name: str) -> tf.Tensor:
    """One encoded image or a vector of 1 to MAX_STYLES of them, as a vector."""
    shape = runtime_shape(x)
    count = runtime_size(x)
    x = require(
        x,
        (tf.size(shape) <= 1) & (count >= 1) & (count <= MAX_STYLES),
        f"{name} must be one encoded image or a vector of 1 to {MAX_STYLES}; got shape",
        shape,
    )
    return tf.reshape(x, [-1])


def style_batch(x: tf.Tensor, sizes: tf.Tensor, name: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Style pixels [K, H, W, 3], each image in the top-left [height, width] of `sizes` [K, 2]
    (empty: each fills the batch's H, W), as (pixels, sizes) for `crop`."""
    rank4, shape = _rank4_shape(x)
    x = require(
        x,
        rank4 & (shape[0] >= 1) & (shape[0] <= MAX_STYLES) & tf.equal(shape[3], 3),
        f"{name} must be float32 pixels shaped [styles (1 to {MAX_STYLES}), height, width, 3]; got shape",
        runtime_shape(x),
    )
    x = require(
        x,
        tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64) <= MAX_INPUT_PIXELS,
        f"{name} has more than {MAX_INPUT_PIXELS} pixels in all; got shape",
        shape,
    )
    x = require(
        x,
        tf.reduce_all(tf.math.is_finite(x)) & (tf.reduce_min(x) >= 0.0) & (tf.reduce_max(x) <= 1.0),
        f"{name} values must be finite and within [0, 1]",
    )
    sizes_shape = runtime_shape(sizes)
    given = runtime_size(sizes) > 0
    sizes_ok = tf.equal(tf.size(sizes_shape), 2) & tf.reduce_all(
        tf.equal(tf.concat([sizes_shape, [0, 0]], 0)[:2], tf.stack([shape[0], 2]))
    )
    sizes = require(
        sizes,
        tf.logical_not(given) | sizes_ok,
        f"{name}_sizes must be empty or shaped [styles, 2] like {name}; got shape",
        sizes_shape,
    )
    full = tf.tile(shape[tf.newaxis, 1:3], [shape[0], 1])
    sizes = tf.cond(given, lambda: tf.reshape(sizes, [-1, 2]), lambda: full)
    sizes = require(
        sizes,
        tf.reduce_all((sizes >= 1) & (sizes <= full)),
        f"{name}_sizes must be between 1 and the batch height and width; got",
        sizes,
    )
    return tf.reshape(x, [shape[0], shape[1], shape[2], 3]), sizes


def style_longest(content_sides: tf.Tensor, style_scale: tf.Tensor) -> tf.Tensor:
    """The longest side the styles are resized to: style_scale times the content's longest side."""
    return tf.cast(tf.round(style_scale * tf.cast(tf.reduce_max(content_sides), tf.float32)), tf.int32)


def styles_fit(x: tf.Tensor, style_sides: tf.Tensor, longest: tf.Tensor, max_side: int) -> tf.Tensor:
    """`x`, usable only once every style of sides [..., 2] keeps its sides within MIN_SIDE..max_side
    when resized to a longest side of `longest`."""
    sides = scaled_sides(style_sides, longest)
    return require(
        x,
        tf.reduce_all(sides >= MIN_SIDE) & tf.reduce_all(sides <= max_side),
        f"style sides must be between {MIN_SIDE} and {max_side}{limit_note(max_side)} px after scaling by "
        "style_scale; got height, width",
        sides,
    )


def scaled_style(style: tf.Tensor, longest: tf.Tensor, max_side: int) -> tf.Tensor:
    """`style` resized to a longest side of `longest`, refused before resizing (which would
    allocate it) if a side would leave MIN_SIDE..max_side."""
    return resize_longest_side(styles_fit(style, tf.shape(style)[1:3], longest, max_side), longest)


def after(x: tf.Tensor, *checked: object) -> tf.Tensor:
    """`x`, usable only once every tensor of `checked` (nests of checked inputs) has been computed:
    their checks then run before whatever uses `x` (a decode, a resize, a VGG pass) starts."""
    with tf.control_dependencies(tf.nest.flatten(checked)):
        return tf.identity(x)


def optional_vector(x: tf.Tensor, length: int | tf.Tensor, name: str, low: float | None = None) -> tf.Tensor:
    """An optional vector input: empty, or `length` values >= `low`, finite. A tensor `length`
    depends on the request (the style targets' on its style_loss)."""
    shape = runtime_shape(x)
    given = runtime_size(x) > 0
    if tf.is_tensor(length):
        message = [f"{name} must be empty or a vector of", length, "values (for this style_loss); got shape"]
    else:
        message = [f"{name} must be empty or a vector of {length} values; got shape"]
    x = require(
        x,
        tf.logical_not(given) | (tf.equal(tf.size(shape), 1) & tf.equal(runtime_size(x), length)),
        *message,
        shape,
    )
    return tf.reshape(within(x, name, low), [-1])


def optional_features(x: tf.Tensor, expected: tf.Tensor, name: str) -> tf.Tensor:
    """Optional features [1, h, w, C]: empty, or of the `expected` shape, finite and >= 0 (post-ReLU)."""
    given = runtime_size(x) > 0
    rank4, shape = _rank4_shape(x)
    x = require(
        x,
        tf.logical_not(given) | (rank4 & tf.reduce_all(tf.equal(shape, expected))),
        f"{name} must be empty or the content features at the content layer; expected, got shape",
        expected,
        runtime_shape(x),
    )
    return tf.reshape(within(x, name, 0.0), tf.where(given, expected, expected * [1, 0, 0, 1]))
