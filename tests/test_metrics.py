"""Answer normalisation and soft accuracy on hand-computed cases, including the reference scorers' corner
cases (official VQA vqaEval.py; MMF's EvalAI processor and TextVQA evaluator as LLaVA uses them)."""
import pytest

from lmm.eval.metrics import (
    CONTRACTIONS,
    evalai_answer,
    exact_match,
    leave_one_out,
    normalize_answer,
    process_punctuation,
    textvqa_accuracy,
    vqa_accuracy,
)


@pytest.mark.parametrize("raw,normalized", [
    ("The Rectangle.", "rectangle"),
    ("Yes!", "yes"),                     # "!" touches no space -> a space, then split away
    ("two", "2"),
    ("none", "0"),
    ("eleven", "eleven"),                # only zero..ten are mapped
    ("The two dogs", "2 dogs"),
    ("a red-circle", "red circle"),
    ("dont", "don't"),
    ("1,000", "1000"),                   # digit,digit comma: every mark deleted, none spaced
    ("3.5", "3.5"),                      # a period before a digit stays
    ("e.g. this", "eg this"),            # other periods are deleted (not spaced)
    ("  Triangle\n", "triangle"),
    ("red\tcar", "red car"),
    ("An apple, a pear", "apple pear"),  # ", " touches a space -> every comma deleted
    ("red- blue-green", "red bluegreen"),  # "- " somewhere -> every hyphen deleted, even inside a word
    ("x-ray, 1,2", "xray 12"),           # a digit,digit comma anywhere deletes all marks
    ("girl's", "girl's"),                # apostrophes are not punctuation here
    ("2:50 pm", "2:50 pm"),              # nor colons (times)
])
def test_normalize(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_punctuation_is_decided_on_the_original_text():
    # "/" touches no space -> " ", giving "x -y-z"; the reference still decides "-" on "x/-y-z", where no
    # hyphen touches a space, so both hyphens become spaces: "x  y z". Deciding on the rewritten text
    # would delete them ("x yz").
    assert process_punctuation("x/-y-z") == "x  y z"
    assert normalize_answer("x/-y-z") == "x y z"
    # Case is untouched by the punctuation step (lower-casing comes with the digit/article step).
    assert process_punctuation("T-Shirt.") == "T Shirt"


def test_period_limit_of_the_reference():
    # The reference hands re.UNICODE (32) to sub() as its count: only the first 32 periods go.
    assert normalize_answer("a." * 40) == "a" * 32 + "a." * 8


@pytest.mark.parametrize("raw,normalized", [
    ("couldnt've", "couldn't've"),
    ("couldn'tve", "couldn't've"),
    ("couldntve", "couldntve"),      # both apostrophes missing: not in the reference table
    ("yall'd've", "y'all'd've"),
    ("twas", "'twas"),
    ("somebody'd", "somebodyd"),     # the reference's one backwards entry
    ("somebodyd", "somebodyd"),
    ("im", "im"),                    # the reference keys "Im", "Ive" are capitalised: never reached
    ("its", "its"),                  # real words are not contractions
    ("were", "were"),
    ("well", "well"),
    ("Dont worry", "don't worry"),
])
def test_contractions(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_contraction_table_size():
    # 114 lowercase, non-identity entries in the reference table (its 4 capitalised keys cannot match after
    # lower-casing; "let's" and "she's" map to themselves).
    assert len(CONTRACTIONS) == 114
    assert all(k == k.lower() and k != v for k, v in CONTRACTIONS.items())


def test_exact_match():
    assert exact_match("The circle.", "circle") == 1.0
    assert exact_match("circles", "circle") == 0.0
    assert exact_match("two", ["2", "3"]) == 1.0


def test_leave_one_out_worked_examples():
    # k of 10 humans agree with the prediction. Leaving out one of the k leaves k-1 agreeing, leaving out
    # one of the others leaves k:  acc = (k*min(1,(k-1)/3) + (10-k)*min(1,k/3)) / 10.
    cases = {0: 0.0, 1: (1 * 0 + 9 * 1 / 3) / 10,           # 0.3
             2: (2 * 1 / 3 + 8 * 2 / 3) / 10,                  # 0.6
             3: (3 * 2 / 3 + 7 * 1) / 10,                      # 0.9
             4: 1.0, 10: 1.0}
    for k, expected in cases.items():
        assert leave_one_out("x", ["x"] * k + ["y"] * (10 - k)) == pytest.approx(expected)
    assert leave_one_out("x", ["x"]) == 0.0  # a lone human has nobody left to agree (as in the reference)
    with pytest.raises(ValueError):
        leave_one_out("x", [])


def test_vqa_accuracy_leave_one_out():
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("4", ["2"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0


def test_vqa_accuracy_human_answers_as_the_reference_treats_them():
    # The prediction is always normalised: "Yes." -> "yes" matches ten identical "yes".
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    # Ten identical human answers are compared as given: "t-shirt" vs the prediction's "t shirt" -> 0 ...
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    # ... while disagreeing answers get the punctuation step: 9 x "t shirt" now match -> 1.0.
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == 1.0
    # Human answers are never lower-cased or number-mapped (the released ones already are).
    assert vqa_accuracy("Yes", ["Yes"] * 9 + ["no"]) == 0.0
    assert vqa_accuracy("two", ["two"] * 9 + ["three"]) == 0.0


@pytest.mark.parametrize("raw,processed", [
    ("It's Coca-Cola, isn't it?", "it 's coca cola isn't it"),  # "'s" split off; ",", "?" dropped first
    ("Dog's", "dog 's"),
    ("Two Dogs?", "2 dogs"),
    ("1,000", "1000"),
    ("what?!", "what"),
    ("The END.", "end"),
])
def test_evalai_answer(raw, processed):
    assert evalai_answer(raw) == processed


def test_evalai_differs_from_the_vqa_processor_on_possessives():
    assert normalize_answer("Dog's") == "dog's" and evalai_answer("Dog's") == "dog 's"


def test_textvqa_accuracy_normalises_the_human_answers():
    # Humans: 2 x "coca-cola" -> "coca cola", 8 x "coke"; prediction "Coca Cola" -> "coca cola": k=2 -> 0.6.
    assert textvqa_accuracy("Coca Cola", ["coca-cola"] * 2 + ["coke"] * 8) == pytest.approx(0.6)
    # "Two" (x3) becomes "2" on the human side too: k=3 -> 0.9; the VQA scorer leaves "Two" alone -> 0.
    assert textvqa_accuracy("2", ["Two"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["Two"] * 3 + ["3"] * 7) == 0.0
