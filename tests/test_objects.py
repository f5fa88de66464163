"""Object instances from the mask (segmentation/objects): connected components of the thing classes."""

from __future__ import annotations

import numpy as np
import pytest

from mafs_core.classes import default_class_names
from mafs_core.objects import mask_objects, thing_class_ids

NAMES = default_class_names(9)
CAR, PERSON, BIKE = (NAMES.index(n) for n in ("car", "person", "bike"))


def test_components_boxes_areas_and_scores() -> None:
    mask = np.zeros((60, 80), np.uint8)
    mask[5:25, 10:20] = PERSON  # 200 px
    mask[30:50, 40:44] = PERSON  # 80 px, a second person
    mask[40:58, 60:79] = CAR  # 342 px
    mask[0:3, 70:73] = PERSON  # 9 px: below min_area
    mask[10:20, 50:60] = NAMES.index("guardrail")  # a stuff class: never an object
    conf = np.full(mask.shape, 255, np.uint8)
    conf[5:15, 10:20] = 127  # half of the first person at ~0.5
    objs = mask_objects(mask, NAMES, confidence=conf, min_area=20)
    assert [(o.class_name, o.x, o.y, o.width, o.height, o.area) for o in objs] == [
        ("car", 60, 40, 19, 18, 342), ("person", 10, 5, 10, 20, 200), ("person", 40, 30, 4, 20, 80)]
    assert objs[1].score == pytest.approx((127 + 255) / 2 / 255, abs=1e-3)
    assert objs[0].score == objs[2].score == 1.0
    assert thing_class_ids(NAMES) == sorted([CAR, PERSON, BIKE])


def test_diagonal_neighbours_are_one_object_and_no_confidence_scores_one() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[np.arange(10), np.arange(10)] = BIKE  # 8-connected: one object
    (o,) = mask_objects(mask, NAMES, min_area=1)
    assert (o.class_name, o.width, o.height, o.area, o.score) == ("bike", 10, 10, 10, 1.0)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="HxW"):
        mask_objects(np.zeros((2, 2, 3), np.uint8), NAMES)
    with pytest.raises(ValueError, match="differ"):
        mask_objects(np.zeros((2, 2), np.uint8), NAMES, confidence=np.zeros((3, 3), np.uint8))
