"""Image bytes to pixels inside the graph, safe against hostile images.

TensorFlow's own decoders trust the file: its BMP path kills the process on a top-down BMP decoded
to float and mis-decodes palette and bit-field BMPs, its GIF path decodes every frame at whatever
size the frame declares, and libjpeg decodes any number of progressive scans, each a pass over the
whole image that no request deadline interrupts. So every image is checked from its bytes before a
decoder runs: the header's size, a GIF's first frame, a JPEG's scans. BMPs are decoded here with
plain tensor ops; a GIF is cut after its first frame. Every refusal is an INVALID_ARGUMENT naming
the input.
"""

from __future__ import annotations

import tensorflow as tf

from nst_model.inputs import pixels, require, scalar
from nst_model.options import MAX_BLOCKS_WALKED, MAX_INPUT_PIXELS, MAX_JPEG_SCAN_PIXELS

IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
FORMATS = (IMAGE_MAGIC[0], IMAGE_MAGIC[1], b"GIF8", b"BM")  # the branches of `decode`, in order
BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)  # OS/2 1.x core, Windows 3 to 5, OS/2 2.x
GIF_RUN = 1024  # sub-blocks of one size a GIF walk step may skip at once (encoders write 255-byte runs)


def _bytes(contents: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_raw(contents, tf.uint8)


def _head(contents: tf.Tensor, n: int) -> tf.Tensor:
    """The first `n` bytes (zeros past the end) as int64, for fixed-offset header fields."""
    padded = tf.strings.substr(tf.strings.join([contents, b"\0" * n]), 0, n)
    return tf.cast(_bytes(padded), tf.int64)


def _little(b: tf.Tensor, i: int, n: int) -> tf.Tensor:
    return tf.add_n([b[i + k] * 2 ** (8 * k) for k in range(n)])


def _signed32(x: tf.Tensor) -> tf.Tensor:
    return tf.where(x >= 2**31, x - 2**32, x)


def _starts(contents: tf.Tensor, magic: bytes) -> tf.Tensor:
    return tf.equal(tf.strings.substr(contents, 0, len(magic)), magic)


def _to_float(image: tf.Tensor, top: int | tf.Tensor) -> tf.Tensor:
    """Integer samples to [0, 1], multiplying by float32(1 / top) as TensorFlow's decoders do."""
    scale = tf.cast(1.0 / tf.cast(top, tf.float64), tf.float32)
    return tf.cast(image, tf.float32) * scale


def declared_size(contents: tf.Tensor) -> tf.Tensor:
    """[height, width] as the image's header declares them, read without decoding (int64).

    Lets a decompression bomb (a tiny file declaring a huge image) be refused before the decoder
    allocates its pixels. A GIF gives its logical screen; unknown formats give [0, 0].
    """
    b = _head(contents, 32)

    def big_endian(i: int) -> tf.Tensor:  # 4 bytes
        return b[i] * 2**24 + b[i + 1] * 2**16 + b[i + 2] * 2**8 + b[i + 3]

    def jpeg() -> tf.Tensor:
        return tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64)

    def other() -> tf.Tensor:
        png = tf.stack([big_endian(20), big_endian(16)])
        gif = tf.stack([_little(b, 8, 2), _little(b, 6, 2)])
        core = tf.stack([_little(b, 20, 2), _little(b, 18, 2)])  # OS/2 1.x: 16-bit sides
        info = tf.abs(_signed32(tf.stack([_little(b, 22, 4), _little(b, 18, 4)])))  # negative height: top-down
        bmp = tf.where(tf.equal(_little(b, 14, 4), 12), core, info)
        return tf.where(
            _starts(contents, FORMATS[1]),
            png,
            tf.where(_starts(contents, b"GIF8"), gif, tf.where(_starts(contents, b"BM"), bmp, 0)),
        )

    return tf.cond(_starts(contents, FORMATS[0]), jpeg, other)


def header(contents: tf.Tensor, name: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(`contents`, its declared [height, width]) once it is one image of a known format declaring
    at most MAX_INPUT_PIXELS: every check that needs no decoding, so a request can be refused on
    them before any image of it is decoded."""
    contents = scalar(contents, name)
    known = tf.reduce_any([_starts(contents, m) for m in IMAGE_MAGIC])
    contents = require(contents, known, f"{name} is not a JPEG, PNG, GIF or BMP image")
    size = declared_size(contents)
    contents = require(
        contents,
        size[0] * size[1] <= MAX_INPUT_PIXELS,
        f"{name} declares more than {MAX_INPUT_PIXELS} pixels; got height, width",
        size,
    )
    return contents, size


def decode(contents: tf.Tensor, name: str) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes to float32 RGB [1, H, W, 3] in [0, 1].

    Grey and alpha images become RGB (alpha is dropped, as TensorFlow's decoders drop it); an
    animated GIF gives its first frame; 16-bit PNGs keep their precision. Images whose header
    declares more than MAX_INPUT_PIXELS are refused before decoding.
    """
    contents, size = header(contents, name)
    matches = tf.stack([_starts(contents, magic) for magic in FORMATS])
    image = tf.switch_case(
        tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int32),
        [
            lambda: _decode_jpeg(contents, size, name),
            lambda: _to_float(tf.io.decode_png(contents, channels=3, dtype=tf.uint16), 65535),
            lambda: _decode_gif(contents, name),
            lambda: _decode_bmp(contents, name),
        ],
    )
    return pixels(tf.ensure_shape(image, [None, None, 3])[tf.newaxis], name)


def _decode_jpeg(contents: tf.Tensor, size: tf.Tensor, name: str) -> tf.Tensor:
    """A JPEG whose scans, counted from its markers, cost at most MAX_JPEG_SCAN_PIXELS to decode.

    libjpeg makes one pass over the image per scan (a progressive refinement scan costs about as
    much as a baseline decode whatever its size in bytes), so a few hundred KB of repeated scans
    would hold a 7000 px decode for tens of seconds.
    """
    scans, finished = _jpeg_scans(contents, size[0] * size[1])
    contents = require(
        contents,
        scans * size[0] * size[1] <= MAX_JPEG_SCAN_PIXELS,
        f"{name} is a JPEG with too many scans for its size (scans x pixels must be at most {MAX_JPEG_SCAN_PIXELS}); "
        "save it as a baseline JPEG or PNG; got at least scans, height, width",
        scans,
        size,
    )
    contents = require(
        contents,
        finished,
        f"{name} is a JPEG with more than {MAX_BLOCKS_WALKED} marker segments; save it again as JPEG or PNG",
    )
    return _to_float(tf.io.decode_jpeg(contents, channels=3), 255)


def _jpeg_scans(contents: tf.Tensor, area: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(start-of-scan markers up to the end of image, whether the walk got there), as libjpeg reads them.

    Segments are skipped by their lengths, so bytes inside APPn/COM data are never taken for
    markers; inside entropy-coded data a 0xFF is always followed by 0x00 (stuffing) or a restart
    marker, so the next candidate marker after a scan header is where libjpeg stops reading the
    scan. The walk stops early once the scans are over the limit, or after MAX_BLOCKS_WALKED segments.
    """
    b = _bytes(contents)
    n = tf.size(b, out_type=tf.int64)
    nxt = b[1:]
    marker = tf.equal(b[:-1], 0xFF) & (nxt != 0) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))
    at = tf.where(marker)[:, 0]  # where each candidate marker's 0xFF is, ascending
    count = tf.size(at, out_type=tf.int64)

    def byte(i: tf.Tensor) -> tf.Tensor:
        return tf.where(i < n, tf.cast(tf.gather(b, tf.minimum(i, n - 1)), tf.int64), 0)

    def step(i, scans, steps, done):
        p = tf.gather(at, tf.minimum(i, count - 1))
        code = byte(p + 1)
        stands_alone = tf.equal(code, 0xD8) | tf.equal(code, 0x01)  # SOI, TEM: no length
        length = tf.cast(~stands_alone, tf.int64) * (byte(p + 2) * 256 + byte(p + 3))
        following = tf.searchsorted(at, [p + 2 + length], out_type=tf.int64)[0]
        scans += tf.cast(code == 0xDA, tf.int64)
        return following, scans, steps + 1, (code == 0xD9) | (following >= count)

    def more(i, scans, steps, done):
        return ~done & (steps < MAX_BLOCKS_WALKED) & (scans * area <= MAX_JPEG_SCAN_PIXELS)

    zero = tf.constant(0, tf.int64)
    _, scans, _, finished = tf.while_loop(more, step, (zero, zero, zero, count < 1), parallel_iterations=1)
    return scans, finished


def _decode_gif(contents: tf.Tensor, name: str) -> tf.Tensor:
    """The first frame of a GIF on its logical screen, checked and cut out before decoding.

    TensorFlow's GIF decoder decompresses every frame at the size its own descriptor declares
    (not the screen's), so the walk finds the first frame's descriptor and the end of its image
    data, checks the frame, and hands the decoder only that frame (moved to 0, 0, then placed on
    the screen here; the rest of the screen is black, as TensorFlow fills it).
    """
    b = _bytes(contents)
    n = tf.size(b, out_type=tf.int64)
    head = _head(contents, 13)
    screen = tf.stack([_little(head, 8, 2), _little(head, 6, 2)])
    global_table = tf.where(head[10] >= 128, 3 * 2 ** (head[10] % 8 + 1), 0)

    def byte(i: tf.Tensor) -> tf.Tensor:
        return tf.where(i < n, tf.cast(tf.gather(b, tf.clip_by_value(i, 0, n - 1)), tf.int64), -1)

    # Modes: 0 at a block, 1 in an extension's sub-blocks, 2 in the image data's, 3 past the
    # first frame, 4 at a byte that starts no block (a trailer before any image included), 5 past the end.
    def step(pos, mode, descriptor, steps):
        t = byte(pos)
        packed = byte(pos + 9)
        local_table = tf.where(packed >= 128, 3 * 2 ** (packed % 8 + 1), 0)
        same_size = tf.equal(byte(pos + (t + 1) * tf.range(GIF_RUN, dtype=tf.int64)), t)
        run = tf.reduce_sum(tf.math.cumprod(tf.cast(same_size, tf.int64)))  # sub-blocks of size t in a row
        in_blocks = tf.equal(mode, 1) | tf.equal(mode, 2)
        new_pos = tf.where(
            in_blocks,
            tf.where(t == 0, pos + 1, pos + (t + 1) * run),
            tf.where(t == 0x21, pos + 2, pos + 10 + local_table + 1),
        )
        new_mode = tf.where(
            in_blocks,
            tf.where(t == 0, tf.where(tf.equal(mode, 1), 0, 3), mode),
            tf.where(t == 0x21, 1, tf.where(t == 0x2C, 2, 4)),
        )
        new_mode = tf.where((new_mode < 3) & (new_pos >= n), 5, new_mode)
        descriptor = tf.where(tf.equal(mode, 0) & (t == 0x2C), pos, descriptor)
        return new_pos, new_mode, descriptor, steps + 1

    def more(pos, mode, descriptor, steps):
        return (mode < 3) & (steps < MAX_BLOCKS_WALKED)

    start = (13 + global_table, tf.where(13 + global_table < n, 0, 5), tf.constant(0, tf.int64), tf.constant(0))
    end, mode, at, _ = tf.while_loop(more, step, start, parallel_iterations=1)
    contents = require(
        contents,
        mode != 4,
        f"{name} is a malformed GIF (a block of unknown type, or no image); send it as PNG",
    )
    contents = require(contents, mode != 5, f"{name} is a truncated GIF; send a complete image")
    contents = require(
        contents,
        tf.equal(mode, 3),
        f"{name} is a GIF with more than {MAX_BLOCKS_WALKED} blocks before the end of its first frame; send it as PNG",
    )
    frame = tf.stack([byte(at + 3) + 256 * byte(at + 4), byte(at + 1) + 256 * byte(at + 2)])  # top, left
    frame_size = tf.stack([byte(at + 7) + 256 * byte(at + 8), byte(at + 5) + 256 * byte(at + 6)])
    canvas = tf.maximum(screen, frame + frame_size)  # a first frame past the screen grows it, as browsers do
    contents = require(
        contents,
        tf.reduce_all(frame_size >= 1) & (canvas[0] * canvas[1] <= MAX_INPUT_PIXELS),
        f"{name} is a GIF whose first frame is empty or reaches past {MAX_INPUT_PIXELS} pixels; "
        "send it as PNG; got top, left, height, width",
        frame,
        frame_size,
    )
    first = tf.strings.join(
        [
            tf.strings.substr(contents, tf.zeros_like(at), at + 1),
            b"\0\0\0\0",  # the frame at 0, 0: the decoder would shift and crop it
            tf.strings.substr(contents, at + 5, end - at - 5),
            b";",
        ]
    )
    image = tf.io.decode_gif(first)[0]
    padding = tf.stack([frame, canvas - frame - tf.shape(image, out_type=tf.int64)[:2]], 1)
    return _to_float(tf.pad(image, tf.concat([padding, [[0, 0]]], 0)), 255)


def _decode_bmp(contents: tf.Tensor, name: str) -> tf.Tensor:
    """A BMP decoded with tensor ops; the layouts it does not decode right are refused from the header.

    TensorFlow's BMP decoder aborts the process on a top-down BMP decoded to float, returns an
    8-bit palette image's indices as grey, reads 32-bit bit fields as BGRA whatever the masks say,
    and misreads OS/2 headers. Decoded here: OS/2 1.x and Windows 3 to 5 headers, either row
    order, 1/4/8-bit palettes, 16/24/32-bit pixels with default or bit-field masks (alpha
    dropped). Refused: RLE and other compressions, other depths, malformed or truncated files.
    """
    h = _head(contents, 70)
    header = _little(h, 14, 4)
    core = tf.equal(header, 12)
    width = tf.where(core, _little(h, 18, 2), _signed32(_little(h, 18, 4)))
    rows_given = tf.where(core, _little(h, 20, 2), _signed32(_little(h, 22, 4)))
    height = tf.abs(rows_given)
    bits = tf.where(core, _little(h, 24, 2), _little(h, 28, 2))
    info = tf.cast(~core, tf.int64)  # OS/2 1.x headers have neither compression nor a colour count
    compression = info * _little(h, 30, 4)
    colours = info * _little(h, 46, 4)
    offset = _little(h, 10, 4)
    bitfields = tf.equal(compression, 3)
    masks = tf.where(
        bitfields,
        tf.stack([_little(h, 54, 4), _little(h, 58, 4), _little(h, 62, 4)]),
        tf.where(tf.equal(bits, 16), tf.constant([0x7C00, 0x3E0, 0x1F], tf.int64), [0xFF0000, 0xFF00, 0xFF]),
    )
    palette_at = 14 + header + 12 * tf.cast(bitfields & tf.equal(header, 40), tf.int64)  # masks after the header
    entry = 3 + info  # palette entries: BGR in OS/2 1.x, BGRX otherwise
    table = 2 ** tf.minimum(bits, 8)
    palette_size = tf.where(bits <= 8, tf.where((colours > 0) & (colours < table), colours, table), 0)
    row = (bits * width + 31) // 32 * 4
    n = tf.cast(tf.strings.length(contents), tf.int64)

    low_bit = tf.bitwise.bitwise_and(masks, -masks)
    shifts = tf.cast(tf.raw_ops.PopulationCount(x=tf.maximum(low_bit - 1, 0)), tf.int64)
    tops = tf.bitwise.right_shift(masks, shifts)
    masks_ok = tf.reduce_all(
        (masks > 0) & tf.equal(tf.bitwise.bitwise_and(tops, tops + 1), 0) & (masks < 2 ** tf.minimum(bits, 32))
    )

    checks = [
        (
            tf.reduce_any(tf.equal(header, BMP_HEADERS)),
            f"{name} is a BMP with a header the model does not know; send it as PNG; got header size",
            header,
        ),
        (
            (compression != 1) & (compression != 2),
            f"{name} is a run-length-compressed BMP (RLE), which the model does not decode; send it as PNG",
        ),
        (
            tf.equal(compression, 0) | (bitfields & (bits >= 16) & (header != 64)),
            f"{name} is a BMP compressed in a way the model does not decode; send it as PNG; got compression, bits",
            tf.stack([compression, bits]),
        ),
        (
            tf.reduce_any(tf.equal(bits, [1, 4, 8, 16, 24, 32])),
            f"{name} is a BMP with a pixel depth the model does not decode; send it as PNG; got bits per pixel",
            bits,
        ),
        ((width >= 1) & (height >= 1), f"{name} is a BMP with no pixels; got width, height", tf.stack([width, height])),
        (
            (bits <= 8) | masks_ok,
            f"{name} is a BMP whose colour masks the model does not decode; send it as PNG; got masks",
            masks,
        ),
        (
            offset >= palette_at + palette_size * entry,
            f"{name} is a malformed BMP: its pixels start inside its header or palette; send it as PNG; got offset",
            offset,
        ),
        (
            offset + row * height <= n,
            f"{name} is a truncated BMP: it holds fewer bytes than its header declares; send a complete image; "
            "got bytes, expected",
            tf.stack([n, offset + row * height]),
        ),
    ]
    for ok, *message in checks:
        contents = require(contents, ok, *message)

    rows = tf.reshape(_bytes(tf.strings.substr(contents, offset, row * height)), tf.stack([height, row]))
    rows = tf.cond(rows_given < 0, lambda: rows, lambda: tf.reverse(rows, [0]))  # bottom-up unless told otherwise

    def palette() -> tf.Tensor:
        start = tf.range(width) * bits  # each pixel's first bit in its row, most significant first
        indices = tf.bitwise.right_shift(tf.gather(rows, start // 8, axis=1), tf.cast(8 - bits - start % 8, tf.uint8))
        indices = tf.bitwise.bitwise_and(indices, tf.cast(2**bits - 1, tf.uint8))
        colours = tf.reshape(
            _bytes(tf.strings.substr(contents, palette_at, palette_size * entry)), tf.stack([-1, entry])
        )
        indices = require(
            indices,
            tf.cast(tf.reduce_max(indices), tf.int64) < palette_size,
            f"{name} is a malformed BMP: a pixel uses a colour its palette lacks; send it as PNG",
        )
        return _to_float(tf.gather(tf.gather(colours, [2, 1, 0], axis=1), tf.cast(indices, tf.int32)), 255)

    def direct() -> tf.Tensor:
        samples = tf.reshape(rows[:, : width * bits // 8], tf.stack([height, width, bits // 8]))

        def whole_bytes() -> tf.Tensor:  # each channel one byte of the pixel: 24-bit, most 32-bit (3x faster)
            return _to_float(tf.gather(samples, shifts // 8, axis=2), 255)

        def bit_fields() -> tf.Tensor:
            places = tf.cast(tf.range(bits // 8) * 8, tf.uint32)
            value = tf.reduce_sum(tf.bitwise.left_shift(tf.cast(samples, tf.uint32), places), -1, keepdims=True)
            channels = tf.bitwise.right_shift(
                tf.bitwise.bitwise_and(value, tf.cast(masks, tf.uint32)), tf.cast(shifts, tf.uint32)
            )
            return _to_float(channels, tops)

        return tf.cond(tf.reduce_all(tf.equal(tops, 255) & tf.equal(shifts % 8, 0)), whole_bytes, bit_fields)

    return tf.cond(bits <= 8, palette, direct)
