"""Detection drawings: small images are enlarged by a whole factor, boxes with them; large ones keep their size."""
import numpy as np
from PIL import Image

from pipeline.drawing import PALETTE, draw_boxes


def test_small_images_are_drawn_enlarged_with_their_boxes():
    image = Image.new("RGB", (128, 96), (255, 255, 255))
    out = draw_boxes(image, [[40, 50, 80, 90]], [1], ["a", "b"], min_side=256)
    assert out.size == (384, 288)                                     # x3: the short side 96 -> 288 >= 256
    px = np.asarray(out)
    assert tuple(px[200, 120]) == PALETTE[1] and tuple(px[200, 180]) == (255, 255, 255)   # left edge at 40 * 3
    assert draw_boxes(image, [[40, 50, 80, 90]], [1], ["a", "b"]).size == (128, 96)      # predict's default
