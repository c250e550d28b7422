"""Gatys et al. style transfer, tensors in and tensors out: targets, objective, optimisation.

Read top to bottom: a request's options become `Controls`; the styles give the style loss's targets
(Gram matrices by default) and the content gives feature targets; the objective weighs style,
content and total variation; an optimiser (projected L-BFGS by default, the reference's Adam on
request) takes steps from a `State` that holds everything one request carries. Nothing lives in
variables but VGG's weights, so concurrent requests on one server Session share nothing.
`signatures.py` exposes this to the server: input lists, defaults and checks. The graph holds the
style losses the model is built with (gram only by default: nst-export --style-losses).
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from nst_model import colors, inputs, lbfgs, losses, masks, precondition
from nst_model.adam import adam_step
from nst_model.options import (
    COLORS,
    CONTENT_LAYERS,
    EXPORTED_STYLE_LOSSES,
    INITS,
    KEEP_PHOTO,
    MIN_INIT_STYLE_STD,
    NOISE_SCALE,
    NORMALIZED_FLOORS,
    NORMALIZED_SCALES,
    OPTIMIZERS,
    POOLINGS,
    STYLE_BALANCES,
    STYLE_LAYERS,
    STYLE_LOSS_SCALES,
    STYLE_LOSSES,
    STYLE_SCALE_RANGE,
)
from nst_model.vgg import BGR_MEANS, CHANNELS, VGG19, pools_before

StyleAt = Callable[[tf.Tensor], tf.Tensor]  # style index -> that style's pixels [1, H, W, 3]
TARGET_LENGTHS = {name: loss.length for name, loss in losses.STYLE_LOSS.items()}  # of `style_targets`


class Losses(typing.NamedTuple):
    loss: tf.Tensor
    style_loss: tf.Tensor
    content_loss: tf.Tensor
    tv_loss: tf.Tensor


class Regions(typing.NamedTuple):
    """A request's region mask as the objective uses it (nst_model/masks.py); `given` is false
    without a mask, and then the rest is empty."""

    given: tf.Tensor  # bool
    styles: tf.Tensor  # [R] the style index of each region, KEEP_PHOTO for none
    guides: list[tf.Tensor]  # per style layer, [S, h, w, 1] for the S styled regions, in order


class Targets(typing.NamedTuple):
    # Without a mask, the blend of the styles' statistics, packed as the style loss's `shapes`; with
    # one, each styled region's own style's statistics so packed, one after the other.
    style: tf.Tensor
    content_features: tf.Tensor  # the content's features at the chosen content layer [1, h, w, C]
    regions: Regions


class Controls(typing.NamedTuple):
    """One request's validated options, as the algorithm uses them."""

    # style_weight (scaled for the style loss and balance), content_weight, tv_weight, learning_rate
    weights: dict[str, tf.Tensor]
    style_scale: tf.Tensor
    style_weights: tf.Tensor  # as given: checked against the styles only where targets are computed
    layer_weights: tf.Tensor  # [len(STYLE_LAYERS)], sums to 1
    content_layer: tf.Tensor  # index into CONTENT_LAYERS
    avg_pool: tf.Tensor
    style_loss: tf.Tensor  # index into the model's style_losses (those its graph holds)
    normalized: tf.Tensor  # style_balance is "normalized"
    colors: tf.Tensor  # index into COLORS; preserve_colors is "swap"
    init: tf.Tensor  # index into INITS
    seed: tf.Tensor
    optimizer: tf.Tensor  # index into OPTIMIZERS
    mask_styles: tf.Tensor  # as given: checked against the mask's regions where they are made


class State(typing.NamedTuple):
    """Everything a run carries from step to step, and hands back for resuming.

    Each optimiser uses its own part and passes the other's on unchanged. Empty L-BFGS gradient
    and losses mean "not known yet": the first step evaluates them.
    """

    image: tf.Tensor  # [1, H, W, 3], the raw optimised image
    adam_m: tf.Tensor  # [1, H, W, 3] Adam's moments and step count
    adam_v: tf.Tensor
    adam_step: tf.Tensor
    lbfgs_s: tf.Tensor  # [k, H, W, 3], L-BFGS's last k steps and gradient changes, oldest first
    lbfgs_y: tf.Tensor
    lbfgs_grad: tf.Tensor  # [1, H, W, 3] the gradient at `image`, or empty
    lbfgs_losses: tf.Tensor  # [4] the Losses at `image`, or empty


def validate(options: dict[str, tf.Tensor], style_losses: tuple[str, ...] = EXPORTED_STYLE_LOSSES) -> Controls:
    """The checked form of every option but steps and max_dim; bad values fail the run. A style
    loss not among `style_losses` (those the graph holds) is refused with how to export it."""
    style_loss = inputs.choice(options["style_loss"], "style_loss", STYLE_LOSSES)
    style_loss = inputs.require(
        style_loss,
        tf.gather([n in style_losses for n in STYLE_LOSSES], style_loss),
        f"this export holds the style losses {', '.join(style_losses)} only; got",
        tf.gather(STYLE_LOSSES, style_loss),
        f"(export with nst-export --style-losses {','.join(STYLE_LOSSES)} to offer every one)",
    )
    balance = inputs.choice(options["style_balance"], "style_balance", STYLE_BALANCES)
    normalized = tf.equal(balance, STYLE_BALANCES.index("normalized"))
    table = [[STYLE_LOSS_SCALES[n] for n in STYLE_LOSSES], [NORMALIZED_SCALES[n] for n in STYLE_LOSSES]]
    colors = inputs.choice(options["colors"], "colors", COLORS)
    preserve = inputs.scalar(options["preserve_colors"], "preserve_colors")
    colors = inputs.require(
        colors,
        tf.logical_not(preserve) | (colors <= COLORS.index("swap")),
        "preserve_colors is colors=swap: give one colour method, not both",
    )
    return Controls(
        weights={
            # For gram in the reference balance the factor is 1, and x * 1.0 is x: the reference's rounding.
            "style_weight": inputs.non_negative(options["style_weight"], "style_weight")
            * tf.gather_nd(table, tf.stack([balance, style_loss])),
            "content_weight": inputs.non_negative(options["content_weight"], "content_weight"),
            "tv_weight": inputs.non_negative(options["tv_weight"], "tv_weight"),
            "learning_rate": inputs.non_negative(options["learning_rate"], "learning_rate", positive=True),
        },
        style_scale=inputs.float_in_range(options["style_scale"], "style_scale", *STYLE_SCALE_RANGE),
        style_weights=options["style_weights"],
        layer_weights=inputs.blend_weights(
            options["style_layer_weights"], "style_layer_weights", len(STYLE_LAYERS), "style layer"
        ),
        content_layer=inputs.choice(options["content_layer"], "content_layer", CONTENT_LAYERS),
        avg_pool=tf.equal(inputs.choice(options["pooling"], "pooling", POOLINGS), POOLINGS.index("avg")),
        style_loss=tf.gather([style_losses.index(n) if n in style_losses else 0 for n in STYLE_LOSSES], style_loss),
        normalized=normalized,
        colors=tf.where(preserve, COLORS.index("swap"), colors),
        init=inputs.choice(options["init"], "init", INITS),
        seed=inputs.scalar(options["seed"], "seed"),
        optimizer=inputs.choice(options["optimizer"], "optimizer", OPTIMIZERS),
        mask_styles=options["mask_styles"],
    )


def balance(size: tf.Tensor, normalized: tf.Tensor, floor: float) -> tf.Tensor:
    """A style term's factor: with style_balance=normalized the inverse of its target's `size`, at
    least `floor`, else 1 (and x * 1.0 is x: the reference's rounding)."""
    return tf.where(normalized, 1.0 / tf.maximum(size, floor), 1.0)


def style_blend(controls: Controls, num_styles: tf.Tensor) -> tf.Tensor:
    """The styles' blend weights [num_styles]: style_weights checked and normalised, else equal."""
    return tf.cond(
        inputs.runtime_size(controls.style_weights) > 0,
        lambda: inputs.blend_weights(controls.style_weights, "style_weights", num_styles, "style"),
        lambda: tf.fill([num_styles], 1.0 / tf.cast(num_styles, tf.float32)),
    )


def content_features_shape(content: tf.Tensor, layer: tf.Tensor) -> tf.Tensor:
    """The shape [1, h, w, C] of the content's features at CONTENT_LAYERS[layer]."""
    pools = tf.gather([pools_before(n) for n in CONTENT_LAYERS], layer)
    channels = tf.gather([CHANNELS[n.split("_")[0]] for n in CONTENT_LAYERS], layer)
    sides = tf.shape(content)[1:3] // 2**pools
    return tf.concat([[1], sides, [channels]], 0)


def pack(parts: list[tf.Tensor]) -> tf.Tensor:
    """Style targets as one vector, for the resumable state."""
    return tf.concat([tf.reshape(p, [-1]) for p in parts], 0)


def unpack(vector: tf.Tensor, loss: losses.StyleLoss) -> list[tf.Tensor]:
    """The style targets of `loss` from `pack`'s vector. It is padded, not reshaped, to its length:
    it is called in branches that do not run for other losses (or for an empty vector), and
    Grappler infers the shape of a tensor from a reshape in any branch. The padding depends on the
    fed size, so that Grappler does not fold it into a constant of the targets' size per use."""
    length, shapes = loss.length, loss.shapes
    missing = tf.maximum(length - inputs.runtime_size(vector), 0)
    vector = tf.pad(vector, [[0, missing]])[:length]
    parts = tf.split(vector, [int(np.prod(s)) for s in shapes])
    return [tf.reshape(p, s) for p, s in zip(parts, shapes, strict=True)]


def noise_image(content: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """VGG's mean colour plus Gaussian noise of a tenth of the content's standard deviation.

    Stateless: the same seed gives the same noise, whatever else the server runs meanwhile.
    """
    mean_rgb = tf.constant(BGR_MEANS[::-1]) / 255.0
    noise = tf.random.stateless_normal(tf.shape(content), seed=tf.stack([seed, 0]))
    return tf.clip_by_value(mean_rgb + NOISE_SCALE * tf.math.reduce_std(content) * noise, 0.0, 1.0)


def style_start(style: tf.Tensor, content: tf.Tensor, controls: Controls) -> tf.Tensor:
    """The style at the content's size (as the colour mode prepares it), refused if it is flat."""
    start = tf.clip_by_value(
        tf.image.resize(colors.prepare_style(style, content, controls.colors), tf.shape(content)[1:3], antialias=True),
        0.0,
        1.0,
    )
    std = tf.reduce_max(tf.math.reduce_std(start, axis=[1, 2]))  # across the image, in its most varied channel
    return inputs.require(
        start,
        std >= MIN_INIT_STYLE_STD,
        f"init=style needs a style with some texture (a standard deviation of at least {MIN_INIT_STYLE_STD * 255:g} "
        "of 255): this one is of one colour, a start the optimisation cannot leave; use init=content or "
        "init=noise; got a standard deviation of",
        std * 255,
    )


def initial_state(content: tf.Tensor, first_style: Callable[[], tf.Tensor], controls: Controls) -> State:
    """Where a run starts: the content, noise, or the first style at the content's size (each as the
    colour mode prepares it); no history."""
    image = tf.switch_case(
        controls.init,
        {
            INITS.index("content"): lambda: colors.for_vgg(content, controls.colors),
            INITS.index("noise"): lambda: noise_image(content, controls.seed),
            INITS.index("style"): lambda: style_start(first_style(), content, controls),
        },
    )
    zeros = tf.zeros_like(content)
    no_pairs = tf.zeros(tf.concat([[0], tf.shape(content)[1:]], 0))
    return State(image, zeros, zeros, tf.constant(0), no_pairs, no_pairs, tf.zeros([1, 0, 0, 3]), tf.zeros([0]))


def regions(
    mask: tf.Tensor, content: tf.Tensor, num_styles: tf.Tensor, controls: Controls, style_losses: tuple[str, ...]
) -> Regions:
    """The request's region mask, checked against the content, its styles (`num_styles`: 0 where a
    resumed call sends none) and its options; empty Regions without one. Masks guide the Gram
    loss: other style losses, and a blend of styles over the whole image, are refused with one."""
    given = masks.given(mask)
    gram = style_losses.index("gram") if "gram" in style_losses else -1
    sent = inputs.runtime_size(controls.mask_styles) > 0
    given = inputs.require(given, given | tf.logical_not(sent), "mask_styles needs a mask")
    given = inputs.require(
        given,
        tf.logical_not(given) | tf.equal(controls.style_loss, gram),
        "a mask works with style_loss gram only; got",
        tf.gather(style_losses, controls.style_loss),
    )
    given = inputs.require(
        given,
        tf.logical_not(given) | tf.equal(inputs.runtime_size(controls.style_weights), 0),
        "with a mask each region takes one style (mask_styles): leave style_weights out",
    )

    def masked() -> tuple[tf.Tensor, list[tf.Tensor]]:
        one_hot = masks.regions(mask, content)
        chosen = masks.region_styles(controls.mask_styles, tf.shape(one_hot)[3], num_styles)
        return chosen, masks.layer_guides(one_hot, chosen)

    def unmasked() -> tuple[tf.Tensor, list[tf.Tensor]]:
        return tf.zeros([0], tf.int32), [tf.zeros([0, 1, 1, 1]) for _ in STYLE_LAYERS]

    styles, guides = tf.cond(given, masked, unmasked)
    return Regions(given, styles, guides)


class StyleTransfer(tf.Module):
    """Gatys et al. style transfer with the TF2 tutorial's objective, on VGG19 held in variables."""

    def __init__(
        self,
        weights: dict[str, tuple[np.ndarray, np.ndarray]],
        precision: str = "float32",
        style_losses: tuple[str, ...] = EXPORTED_STYLE_LOSSES,
    ):
        super().__init__(name="style_transfer")
        self.vgg = VGG19(weights, precision)
        unknown = set(style_losses) - set(STYLE_LOSSES)
        if unknown or not style_losses:
            raise ValueError(f"style losses must be among {', '.join(STYLE_LOSSES)}; got {', '.join(style_losses)}")
        self.style_losses = tuple(n for n in STYLE_LOSSES if n in style_losses)  # the graph holds these only
        self.metric: lbfgs.Metric = precondition.spectral  # L-BFGS's first guess (benchmarks swap it)

    def by_style_loss(self, index: tf.Tensor, branch: Callable[[losses.StyleLoss], tf.Tensor]) -> tf.Tensor:
        """`branch` of the request's style loss, among those the graph holds (no switch for one)."""
        held = [lambda loss=losses.STYLE_LOSS[n]: branch(loss) for n in self.style_losses]
        return held[0]() if len(held) == 1 else tf.switch_case(index, held)

    def target_length(self, index: tf.Tensor, regions: Regions) -> int | tf.Tensor:
        """The length of the packed style targets of the request's style loss (and regions)."""
        lengths = [TARGET_LENGTHS[n] for n in self.style_losses]
        length = lengths[0] if len(lengths) == 1 else tf.gather(lengths, index)
        styled = tf.reduce_sum(tf.cast(regions.styles != KEEP_PHOTO, tf.int32))
        return tf.where(regions.given, styled * length, length)

    def targets(
        self,
        content: tf.Tensor,
        style_at: StyleAt,
        num_styles: tf.Tensor,
        controls: Controls,
        regions: Regions,
        max_side: int,
    ) -> Targets:
        """The blend of the styles' statistics for the style loss (with a mask, each styled region's
        own style's), and the content's features at the chosen layer.

        Each style is first resized to style_scale times the content's longest side, so the scale
        of its brush strokes relative to the content is the user's choice, not the files'; a scaled
        side beyond `max_side` is refused. The colour mode may recolour the styles first.
        """
        blend = style_blend(controls, num_styles)
        longest = inputs.style_longest(tf.shape(content)[1:3], controls.style_scale)

        def statistics(loss: losses.StyleLoss, i: tf.Tensor) -> list[tf.Tensor]:
            """Style i's statistics for the loss, every style layer's in one list."""
            style = colors.prepare_style(style_at(i), content, controls.colors)
            features = self.vgg(inputs.scaled_style(style, longest, max_side), STYLE_LAYERS, controls.avg_pool)
            return [p for k, n in enumerate(STYLE_LAYERS) for p in loss.statistics(features[n], k, controls.seed)]

        def style_target(loss: losses.StyleLoss) -> tf.Tensor:
            """The blend over styles of the loss's statistics, per style layer, made its target."""

            def add_style(i, sums):
                parts = statistics(loss, i)
                return i + 1, [total + blend[i] * part for total, part in zip(sums, parts, strict=True)]

            zeros = [tf.zeros(shape) for shape in loss.shapes]
            sums = tf.while_loop(lambda i, _: i < num_styles, add_style, (tf.constant(0), zeros))[1]
            return pack([p for layer in loss.by_layer(sums) for p in loss.target(layer)])

        def region_targets(loss: losses.StyleLoss) -> tf.Tensor:
            """Each style's own target, taken by the regions it paints."""

            def add_style(i, done):
                layers = loss.by_layer(statistics(loss, i))
                return i + 1, done.write(i, pack([p for layer in layers for p in loss.target(layer)]))

            done = tf.TensorArray(tf.float32, size=num_styles, element_shape=[loss.length])
            each = tf.while_loop(lambda i, _: i < num_styles, add_style, (tf.constant(0), done))[1].stack()
            return tf.reshape(tf.gather(each, tf.boolean_mask(regions.styles, regions.styles != KEEP_PHOTO)), [-1])

        def whole_target() -> tf.Tensor:
            return self.by_style_loss(controls.style_loss, style_target)

        if "gram" in self.style_losses:  # `regions` admits a mask with gram only
            style = tf.cond(regions.given, lambda: region_targets(losses.STYLE_LOSS["gram"]), whole_target)
        else:
            style = whole_target()
        features = self.vgg(colors.for_vgg(content, controls.colors), CONTENT_LAYERS, controls.avg_pool)
        chosen = tf.switch_case(controls.content_layer, [lambda f=features[n]: losses.wide(f) for n in CONTENT_LAYERS])
        return Targets(style, chosen, regions)

    def objective(self, image: tf.Tensor, targets: Targets, controls: Controls) -> Losses:
        weights = controls.weights
        seen = colors.for_vgg(image, controls.colors)
        features = self.vgg(seen, (*STYLE_LAYERS, *CONTENT_LAYERS), controls.avg_pool)

        styled = [features[n] for n in STYLE_LAYERS]

        def weighed(terms: list[tf.Tensor], sizes: list[tf.Tensor], floors: tuple[float, ...]) -> tf.Tensor:
            """The layers' terms summed; with style_balance=normalized each relative to its target's
            size, at least its floor (in the reference balance the factor is 1, and x * 1.0 is x: the
            reference's rounding)."""
            terms = [t * balance(s, controls.normalized, f) for t, s, f in zip(terms, sizes, floors, strict=True)]
            return losses.layer_sum(terms, weights["style_weight"], controls.layer_weights)

        def style_loss(loss: losses.StyleLoss) -> tf.Tensor:
            layers = loss.by_layer(unpack(targets.style, loss))
            terms = [
                loss.term(f, target, k, controls.seed) for k, (f, target) in enumerate(zip(styled, layers, strict=True))
            ]
            return weighed(terms, [loss.size(target) for target in layers], NORMALIZED_FLOORS[loss.name])

        def guided_style_loss() -> tf.Tensor:
            """Per style layer, each styled region's guided Gram term against its own target, summed."""
            loss = losses.STYLE_LOSS["gram"]
            per_region = tf.reshape(targets.style, [-1, loss.length])
            columns = tf.split(per_region, [int(np.prod(shape)) for shape in loss.shapes], axis=1)
            terms = []
            floors = NORMALIZED_FLOORS[loss.name]
            for k, (f, column, guides) in enumerate(zip(styled, columns, targets.regions.guides, strict=True)):
                target = tf.reshape(column, [-1, *loss.shapes[k][1:]])
                sizes = tf.reduce_mean(tf.square(target), [1, 2])
                factors = balance(sizes, controls.normalized, floors[k])
                terms.append(tf.reduce_sum(losses.guided_gram_terms(f, guides, target) * factors))
            return losses.layer_sum(terms, weights["style_weight"], controls.layer_weights)

        def whole_style_loss() -> tf.Tensor:
            return self.by_style_loss(controls.style_loss, style_loss)

        guided = "gram" in self.style_losses  # `regions` admits a mask with gram only
        style = tf.cond(targets.regions.given, guided_style_loss, whole_style_loss) if guided else whole_style_loss()
        content = tf.switch_case(
            controls.content_layer,
            [
                lambda f=features[n]: losses.content_loss(
                    losses.wide(f), targets.content_features, weights["content_weight"]
                )
                for n in CONTENT_LAYERS
            ],
        )
        tv = losses.tv_loss(image, weights["tv_weight"])
        # Summed in float64, exact for terms of these magnitudes, so the total cannot depend on the order
        # in which the graph's optimiser arranges the additions (it differed between a call that computes
        # the targets and one that is given them); the gradient passes through the casts unchanged.
        total = tf.add_n([tf.cast(term, tf.float64) for term in (style, content, tv)])
        return Losses(tf.cast(total, tf.float32), style, content, tv)

    def optimise(
        self, targets: Targets, steps: tf.Tensor, controls: Controls, state: State
    ) -> tuple[State, Losses, tf.Tensor]:
        """`steps` steps of the chosen optimiser from `state`: the new state, its losses, and how
        many evaluations of the objective and its gradient each step made ([steps] int32: always
        1 for Adam; for L-BFGS 1 plus the line search's backtracks)."""

        # One function, called by each optimiser's steps: the graph holds the objective and its
        # gradient once per signature, not once per place that evaluates it.
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
        def value_and_grad(image):
            def pooled(avg_pool: bool) -> Callable[[], tuple[tf.Tensor, tf.Tensor, Losses]]:
                def evaluate():
                    with tf.GradientTape() as tape:
                        tape.watch(image)
                        terms = self.objective(image, targets, controls._replace(avg_pool=avg_pool))
                    return terms.loss, tape.gradient(terms.loss, image), terms

                return evaluate

            # The pooling is chosen once around the whole evaluation, not at each pooling: a max
            # pooling's gradient in another cond branch than the pooling runs in Eigen on one thread
            # (5x slower at 512 px), while beside it oneDNN runs it from the pooling's workspace.
            return tf.cond(controls.avg_pool, pooled(True), pooled(False))

        def adam() -> tuple[State, Losses, tf.Tensor]:
            def body(i, image, m, v, step):
                _, grad, _ = value_and_grad(image)
                image, m, v, step = adam_step(image, grad, m, v, step, controls.weights["learning_rate"])
                return i + 1, tf.clip_by_value(image, 0.0, 1.0), m, v, step

            initial = (tf.constant(0), state.image, state.adam_m, state.adam_v, state.adam_step)
            _, image, m, v, step = tf.while_loop(lambda i, *_: i < steps, body, initial)
            # Adam's last gradient was taken before its last update: the result needs its own pass.
            terms = self.objective(image, targets, controls)
            return state._replace(image=image, adam_m=m, adam_v=v, adam_step=step), terms, tf.ones([steps], tf.int32)

        def projected_lbfgs() -> tuple[State, Losses, tf.Tensor]:
            # lbfgs works on tensors shaped like the image: pairs [k, 1, H, W, 3].
            s, y = state.lbfgs_s[:, None], state.lbfgs_y[:, None]
            known = Losses(*tf.unstack(tf.concat([state.lbfgs_losses, tf.zeros([4])], 0)[:4], num=4))  # if given
            start = tf.cond(
                tf.size(state.lbfgs_losses) > 0,  # resumed: the last call left the objective at `image`
                lambda: lbfgs.resume(
                    state.image, known.loss, tf.reshape(state.lbfgs_grad, tf.shape(state.image)), known, s, y
                ),
                lambda: lbfgs.start(state.image, value_and_grad, s, y),
            )

            def body(i, current, counts):
                current = lbfgs.step(current, value_and_grad, self.metric)
                return i + 1, current, counts.write(i, current.evaluations)

            def going(i, current, _):  # a stuck run (lbfgs.Iterate.stuck) ends: the rest would repeat it
                return (i < steps) & tf.logical_not(current.stuck)

            counts = tf.TensorArray(tf.int32, size=steps, element_shape=[])  # skipped steps count 0
            _, end, counts = tf.while_loop(going, body, (tf.constant(0), start, counts))
            s, y = lbfgs.history(end)
            # Its line search evaluated the objective at the point it accepted: no extra pass.
            new = state._replace(image=end.x, lbfgs_s=s[:, 0], lbfgs_y=y[:, 0], lbfgs_grad=end.g)
            return new._replace(lbfgs_losses=tf.stack(list(end.extra))), end.extra, counts.stack()

        use_lbfgs = tf.equal(controls.optimizer, OPTIMIZERS.index("lbfgs"))
        new_state, terms, evaluations = tf.cond(use_lbfgs, projected_lbfgs, adam)
        return State(*new_state), Losses(*terms), evaluations

    def stylize(
        self, content: tf.Tensor, targets: Targets, steps: tf.Tensor, controls: Controls, state: State
    ) -> tuple[tf.Tensor, Losses, State, tf.Tensor]:
        """`steps` steps from `state`: the PNG to show, its losses, the state to resume from, and
        the evaluations each step made (see `optimise`).

        The state image stays the raw optimised one so that a chunked run resumes exactly; only
        the PNG gets the content's colours back (colors swap or luminance, or preserve_colors). A run whose objective
        overflowed (weights too large for float32) is refused rather than returned as a black image.
        """
        start = state
        state, terms, evaluations = self.optimise(targets, steps, controls, start)
        carried = (tf.stack(list(terms)), state.image, state.adam_m, state.adam_v, state.lbfgs_grad)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(x)) for x in carried])
        image = inputs.require(
            state.image,
            finite,
            "the objective overflowed float32 (a loss or gradient is not finite): lower style_weight, "
            "content_weight or tv_weight (or learning_rate with adam)",
        )
        # A run that starts from the style and cannot leave it (a style of one colour: every step's line
        # search refused) would hand back the style as if it were a result.
        fresh = tf.equal(tf.size(start.lbfgs_losses), 0) & tf.equal(start.adam_step, 0)
        stuck = tf.equal(controls.init, INITS.index("style")) & fresh & (steps > 0)
        image = inputs.require(
            image,
            tf.logical_not(stuck) | tf.reduce_any(tf.not_equal(state.image, start.image)),
            "init=style: the optimisation could not move from the style image (a style of one colour, or weights "
            "that leave nothing to lower, hold it there); use init=content or init=noise, or a style with some texture",
        )
        shown = colors.shown(image, content, controls.colors)
        png = tf.io.encode_png(tf.image.convert_image_dtype(shown[0], tf.uint8, saturate=True))
        return png, terms, state._replace(image=image), evaluations
