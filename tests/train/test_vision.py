"""The vision tower's own pre-training: per-patch targets read from the scene, and a tower that learns them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from aki.data.synthetic import COLOURS, KINDS, SIZES, Scene, Shape, generate_split, render, render_labels
from aki.train.vision import TARGETS, patch_accuracy, patch_targets, pretrain_vision_tower


def test_render_labels_marks_the_pixels_that_render_paints():
    scene = generate_split("train", 1, image_size=48)[0].scene
    labels, image = np.asarray(render_labels(scene, 48)), np.asarray(render(scene, 48))
    assert set(np.unique(labels)) == set(range(len(scene.shapes) + 1))
    for index, shape in enumerate(scene.shapes, start=1):
        assert (image[labels == index] == COLOURS[shape.colour]).all()
    assert (image[labels == 0] == (48, 48, 48)).all()


def test_patch_targets_name_the_shape_covering_each_patch():
    # A large square centred at (24, 24) px of a 48 px image: side 0.23 * 48 = 11 px, so it covers
    # x, y in about [18.5, 29.5]. With 6 px patches (an 8 x 8 grid), patches 3 and 4 of each axis span
    # [18, 30): more than an eighth of each is inside the square; every other patch is background.
    scene = Scene((Shape("square", "blue", "large", 0.5, 0.5),))
    targets = patch_targets(scene, image_size=48, patch_size=6)
    assert targets.shape == (len(TARGETS), 64)
    grid = targets.view(len(TARGETS), 8, 8)
    covered = torch.zeros(8, 8, dtype=torch.bool)
    covered[3:5, 3:5] = True
    expected = {"colour": list(COLOURS).index("blue") + 1, "kind": KINDS.index("square") + 1}
    expected["size"] = list(SIZES).index("large") + 1
    expected["column"] = expected["row"] = 3 + 1  # the centre 0.5 is in the fourth sixth of each axis
    for row, name in enumerate(TARGETS):
        assert (grid[row][covered] == expected[name]).all()
        assert (grid[row][~covered] == 0).all()


def test_patch_targets_place_every_patch_of_a_shape_at_the_shape_centre():
    # A large circle whose centre (0.2, 0.9) lies in column 1 and row 5 of the 6 x 6 position grid; its
    # patches spread over several columns and rows of the 8 x 8 patch grid, and all of them carry the centre.
    scene = Scene((Shape("circle", "red", "large", 0.2, 0.9), Shape("star", "blue", "small", 0.9, 0.1)))
    targets = dict(zip(TARGETS, patch_targets(scene, image_size=48, patch_size=6), strict=True))
    circle = targets["kind"] == KINDS.index("circle") + 1
    star = targets["kind"] == KINDS.index("star") + 1
    assert circle.sum() > 1 and star.sum() >= 1
    assert (targets["column"][circle] == 1 + 1).all() and (targets["row"][circle] == 5 + 1).all()
    assert (targets["column"][star] == 5 + 1).all() and (targets["row"][star] == 0 + 1).all()
    assert (targets["column"][~(circle | star)] == 0).all()


def test_patch_targets_refuse_a_patch_size_that_does_not_divide_the_image():
    scene = Scene((Shape("circle", "red", "small", 0.5, 0.5),))
    with pytest.raises(ValueError, match="not a multiple of patch_size 7"):
        patch_targets(scene, image_size=48, patch_size=7)


def test_a_tiny_tower_learns_the_colours_of_its_patches():
    samples = generate_split("train", 64, image_size=32)
    pixels = torch.stack(
        [
            torch.from_numpy(np.asarray(s.image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
            for s in samples
        ]
    )
    targets = torch.stack([patch_targets(s.scene, image_size=32, patch_size=4) for s in samples])
    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=4,
    )
    tower = SiglipVisionModel(config)
    losses, heads = pretrain_vision_tower(tower, pixels, targets, steps=150, batch_size=16, lr=3e-3, seed=0)
    assert len(losses) == 150
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    accuracy = patch_accuracy(tower, heads, pixels, targets)
    assert accuracy["colour"] > 0.6  # 8 colours: chance is 1/8 on the patches that show a shape


def test_images_and_targets_must_pair_up():
    tower = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=8,
            patch_size=4,
        )
    )
    with pytest.raises(ValueError, match="3 images but 2 target rows"):
        pretrain_vision_tower(
            tower,
            torch.zeros(3, 3, 8, 8),
            torch.zeros(2, 3, 4, dtype=torch.long),
            steps=1,
            batch_size=1,
            lr=1e-3,
            seed=0,
        )
