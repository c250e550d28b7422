"""A two-region mask of a photo for `--mask`: its sky white, the rest black.

The sky is taken as the blue pixels (blue above red by a margin) connected to the top edge, which
keeps a river's reflection out; good enough for clear-sky photos such as the shared Tübingen one.
Artists paint masks by hand; this makes one for trying the feature (docs/controls.md):

    python scripts/sky_mask.py ../shared/images/content/tubingen.jpg -o sky.png
    nst-stylize tubingen.jpg the_scream.jpg starry_night.jpg --mask sky.png --mask-styles 0,1 -o out.png
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import PIL.ImageDraw

BLUE_MARGIN = 30  # blue above red, of 255: the clear sky's, not the roofs' or the walls'


def sky_mask(photo: PIL.Image.Image) -> PIL.Image.Image:
    """White where the sky is (blue, reached from the top edge through blue pixels), black elsewhere."""
    rgb = np.asarray(photo.convert("RGB"), np.int32)
    blue = (rgb[..., 2] - rgb[..., 0] > BLUE_MARGIN).astype(np.uint8) * 128
    marks = PIL.Image.fromarray(blue).copy()  # its own pixels: one made from an array may be read-only
    for x in range(marks.width):  # flood each blue run of the top row: the sky is what they reach
        if marks.getpixel((x, 0)) == 128:
            PIL.ImageDraw.floodfill(marks, (x, 0), 255)
    return PIL.Image.fromarray(np.where(np.asarray(marks) == 255, 255, 0).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo")
    parser.add_argument("-o", "--output", default="mask.png", help="the mask PNG (default mask.png)")
    args = parser.parse_args()
    mask = sky_mask(PIL.Image.open(args.photo))
    mask.save(args.output)
    print(f"wrote {args.output}: sky {np.mean(np.asarray(mask) > 0):.0%} of the photo")


if __name__ == "__main__":
    main()
