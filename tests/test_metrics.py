"""Answer normalisation and VQA accuracy on hand-computed cases."""
import pytest

from lmm.eval.metrics import exact_match, normalize_answer, vqa_accuracy


@pytest.mark.parametrize("raw,normalized", [
    ("The Rectangle.", "rectangle"),
    ("Yes!", "yes"),
    ("two", "2"),
    ("a red-circle", "red circle"),
    ("dont", "don't"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("  Triangle\n", "triangle"),
    ("An apple, a pear", "apple pear"),
])
def test_normalize(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match():
    assert exact_match("The circle.", "circle") == 1.0
    assert exact_match("circles", "circle") == 0.0
    assert exact_match("two", ["2", "3"]) == 1.0


def test_vqa_accuracy_leave_one_out():
    # 3 of 10 humans said "2": subsets leaving out a "2" score 2/3, the 7 others score 1 -> 0.9.
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    # 1 of 10: leaving it out scores 0, the other 9 subsets score 1/3 -> 0.3.
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("4", ["2"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
