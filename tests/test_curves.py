import pytest
import torch
from torch import nn

from pwl.errors import ConfigError
from pwl.stages import StageEvaluator
from pwl.stages.curves import consecutive_pairs, load_curve, mean_accuracy

# N=2: the student answers at 0.5 s, TS is active at 1.5 s, TT at 3.5 s.
EVENTS = [(0.2, "SS"), (1.5, "TS"), (3.5, "TT")]
ACCURACY = {"SS": 0.5, "TS": 0.9, "TT": 0.8}


def test_load_curve_areas_and_time_to_teacher_by_hand():
    curve = load_curve(EVENTS, ACCURACY, first_answer_s=0.5, window_s=5.0)
    # No answer before 0.5 s; SS is active from its first answer, not from its event.
    assert curve.stages == [(0.5, "SS", 0.5), (1.5, "TS", 0.9), (3.5, "TT", 0.8)]
    assert curve.first_answer_s == 0.5 and curve.loaded_s == 3.5
    # area over [0, 3.5] = 0.5 * (1.5 - 0.5) + 0.9 * (3.5 - 1.5) = 2.3
    assert curve.mean_accuracy_load == pytest.approx(2.3 / 3.5)
    # over [0, 5] the teacher holds 0.8 for the last 1.5 s: 2.3 + 1.2 = 3.5
    assert curve.mean_accuracy_window == pytest.approx(3.5 / 5.0)
    # TS (0.9) already reaches the teacher's 0.8
    assert curve.time_to_teacher_s == 1.5
    # a window shorter than the load cuts it: 0.5 * 1 + 0.9 * 0.5 = 0.95 over 2 s
    assert mean_accuracy(curve.stages, 2.0) == pytest.approx(0.475)


def test_load_curve_without_window_or_first_answer():
    curve = load_curve(EVENTS, {**ACCURACY, "TS": 0.7})
    assert curve.first_answer_s == 0.2
    # 0.5 * 1.3 + 0.7 * 2.0 = 2.05 over 3.5 s; only TT reaches the teacher
    assert curve.mean_accuracy_load == pytest.approx(2.05 / 3.5)
    assert curve.time_to_teacher_s == 3.5
    assert curve.window_s is None and curve.mean_accuracy_window is None


def test_load_curve_names_a_mask_without_accuracy():
    with pytest.raises(ConfigError, match="'TS'"):
        load_curve(EVENTS, {"SS": 0.5, "TT": 0.8})


class _Teacher:
    num_blocks = 2

    def unit_num_params(self, i):
        return 0

    def unit_modules(self, i):
        return []


class ScriptedHybrid(nn.Module):
    """N=2; each image's prediction per mask is written in its input.

    Input (B, 5): columns 0-3 the class predicted under SS, ST, TS, TT; column 4
    carries the path taken so far (mask code = 2 * block 0 is T + block 1 is T).
    """

    num_blocks = 2

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.teacher = _Teacher()

    def step(self, block, x, prev, who):
        t = float(who == "T")
        if block == 0:
            out = x.clone()
            out[:, 4] = t
            return out
        code = (x[:, 4] * 2 + t).long()
        pred = x[torch.arange(len(x)), code].long()
        return nn.functional.one_hot(pred, 5).float()


def test_flips_of_consecutive_masks_by_hand():
    labels = torch.tensor([0, 1, 2, 3, 4])
    #                      SS               ST         TS               TT
    preds = torch.tensor([[0, 1, 2, 0, 0], [0] * 5, [0, 0, 2, 3, 0], [1, 0, 2, 0, 4]]).T
    x = torch.cat([preds.float(), torch.zeros(5, 1)], dim=1)
    masks = ["SS", "TS", "TT"]
    evaluator = StageEvaluator(ScriptedHybrid(), masks, consecutive_pairs(masks))
    evaluator.update(x[:3], labels[:3])
    evaluator.update(x[3:], labels[3:])
    result = evaluator.result()
    # right: SS 1 1 1 0 0, TS 1 0 1 1 0, TT 0 0 1 0 1
    assert [result.accuracy(m) for m in masks] == [0.6, 0.6, 0.4]
    # SS -> TS breaks image 1; TS -> TT breaks images 0 and 3 (and fixes image 4)
    assert result.flips == {("SS", "TS"): 1, ("TS", "TT"): 2}
    assert result.flip_rate("SS", "TS") == pytest.approx(0.2)
    assert result.flip_rate("TS", "TT") == pytest.approx(0.4)


def test_flip_pairs_must_be_evaluated():
    with pytest.raises(ConfigError, match="ST"):
        StageEvaluator(ScriptedHybrid(), ["SS", "TT"], [("SS", "ST")])
