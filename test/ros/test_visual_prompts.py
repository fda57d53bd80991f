"""The node's point/box prompt state, without ROS: checks, replacement, following."""

from __future__ import annotations

import numpy as np

from mobius_ros.visual import FrameInfo, VisualPromptState


def _state(**kw) -> VisualPromptState:
    s = VisualPromptState(**kw)
    s.saw_frame(FrameInfo("camera", 480, 640, 100.0))
    return s


def test_clicks_are_checked_against_the_latest_image():
    s = VisualPromptState()
    r = s.click(10, 10)
    assert not r.success and "no image received yet" in r.message
    s.saw_frame(FrameInfo("camera", 480, 640, 100.0))
    assert s.click(10, 20, "camera", 99.0).success
    assert s.prompts[0].label == "point (10, 20)" and s.prompts[0].box == (10, 20, 10, 20)
    for args, why in [
        ((700, 10, "camera"), "outside the 640x480 image"),
        ((-1, 10, ""), "outside"),
        ((10, 10, "map"), "in frame 'map' but the images are in 'camera'"),
        ((10, 10, "camera", 90.0), "10.0 s older than the latest image"),
        ((float("nan"), 10), "finite"),
    ]:
        r = s.click(*args)
        assert not r.success and why in r.message, r.message
    assert len(s.prompts) == 1  # refused clicks change nothing


def test_the_oldest_click_goes_when_the_limit_is_reached():
    s = _state(max_prompts=2)
    for x in (1, 2, 3):
        assert s.click(x, 5).success
    assert [p.label for p in s.prompts] == ["point (2, 5)", "point (3, 5)"]


def test_service_prompts_replace_all_or_nothing():
    s = _state(max_prompts=3)
    s.click(1, 1)
    r = s.replace([5, 6], [10, 20, 30, 40])
    assert r.success and [p.box for p in s.prompts] == [(5, 6, 5, 6), (10, 20, 30, 40)]
    assert s.segmenter_prompts(s.prompts) == [[5, 6], [10, 20, 30, 40]]
    before = s.prompts
    for points, boxes, why in [
        ([1, 2, 3], [], "pairs"),
        ([], [1, 2, 3, 4, 5], "quadruples"),
        ([1, 1, 2, 2, 3, 3, 4, 4], [], "at most 3"),
        ([], [30, 20, 10, 40], "swapped"),
        ([], [10, 20, 700, 40], "outside"),
    ]:
        r = s.replace(points, boxes)
        assert not r.success and why in r.message, r.message
        assert s.prompts == before
    s.clear()
    assert s.prompts == []


def test_a_prompt_follows_its_answer_unless_told_not_to():
    s = _state()
    s.click(100, 100)
    used = s.prompts
    s.click(300, 300)  # arrives while the frame runs: not answered by it
    s.answered(used, np.array([[80.0, 90.0, 130.0, 140.0]]))
    assert [p.box for p in s.prompts] == [(80, 90, 130, 140), (300, 300, 300, 300)]
    assert s.prompts[0].label == "point (100, 100)"  # the prompt as given stays its label
    s.answered(s.prompts[:1], np.array([[5.0, 5.0, 5.0, 9.0]]))  # an empty answer: no move
    assert s.prompts[0].box == (80, 90, 130, 140)
    still = _state(follow=False)
    still.click(100, 100)
    still.answered(still.prompts, np.array([[80.0, 90.0, 130.0, 140.0]]))
    assert still.prompts[0].box == (100, 100, 100, 100)
