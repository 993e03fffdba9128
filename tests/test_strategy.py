"""Sampling-strategy resolution: imbalanced-learn's forms against imbalanced-learn itself, and
the extra forms (balanced, power, max_ratio, combined) against their definitions."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imblearn.utils import check_sampling_strategy

from engine.strategy import describe, resolve_targets

IMBLEARN_STRINGS = ["auto", "minority", "majority", "not minority", "not majority", "all"]
SAMPLING_TYPE = {"over": "over-sampling", "under": "under-sampling"}
ERROR = "ValueError"


def imblearn_targets(strategy, labels, rows, kind):
    """Final rows per class as imbalanced-learn implies them, or ERROR when it refuses."""
    y = np.repeat(np.array(labels), rows)
    counts = {str(label): n for label, n in zip(labels, rows)}
    try:
        out = check_sampling_strategy(strategy, y, SAMPLING_TYPE[kind])
    except ValueError:
        return ERROR
    out = {str(label): int(n) for label, n in out.items()}
    if kind == "over":
        return {key: n + out.get(key, 0) for key, n in counts.items()}
    return {key: out.get(key, n) for key, n in counts.items()}


def our_targets(strategy, labels, rows, kind):
    counts = {str(label): n for label, n in zip(labels, rows)}
    try:
        return resolve_targets(strategy, counts, kind)
    except ValueError:
        return ERROR


def assert_same(strategy, labels, rows, kind, ours=None):
    expected = imblearn_targets(strategy, labels, rows, kind)
    got = our_targets(strategy if ours is None else ours, labels, rows, kind)
    assert got == expected, (strategy, labels, rows, kind)


def counts_of(rows, labels=None):
    labels = labels if labels is not None else range(len(rows))
    return {str(label): n for label, n in zip(labels, rows)}


# --------------------------------------------------------------------------------------------
# imbalanced-learn's forms, explicit cases

CASES = [
    ([0, 1], [90, 10]),
    ([0, 1], [10, 90]),
    ([0, 1], [50, 50]),
    ([0, 1], [1, 1000]),
    ([-3, -1, 5], [7, 70, 700]),
    ([1, 2, 10], [5, 100, 5]),  # numeric order (2 < 10) is the tie-break order
    ([0, 1, 2], [100, 3, 100]),
    ([0, 1, 2], [4, 4, 4]),
    (["cat", "dog", "emu", "fox"], [30, 30, 7, 200]),
    (["a", "b"], [3, 8]),
]


@pytest.mark.parametrize("kind", ["over", "under"])
@pytest.mark.parametrize("strategy", IMBLEARN_STRINGS)
@pytest.mark.parametrize(("labels", "rows"), CASES)
def test_strings_match_imblearn(labels, rows, strategy, kind):
    assert_same(strategy, labels, rows, kind)


@pytest.mark.parametrize("kind", ["over", "under"])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.33, 0.5, 0.75, 0.999, 1.0, 1, 0.0, -0.5, 1.5])
@pytest.mark.parametrize(("labels", "rows"), CASES)
def test_floats_match_imblearn(labels, rows, ratio, kind):
    assert_same(ratio, labels, rows, kind)


def dict_cases(labels, rows):
    first, last = labels[0], labels[-1]
    n0, n1 = rows[0], rows[-1]
    return [
        {first: n0},
        {first: n0 + 5},
        {first: max(n0 - 1, 0)},
        {first: 0},
        {first: n0 + 5, last: n1 + 1},
        {first: max(n0 - 1, 0), last: max(n1 - 1, 0)},
        {label: max(rows) for label in labels},
        {label: min(rows) for label in labels},
        {first: -1},
        {"nope": 3},
    ]


@pytest.mark.parametrize("kind", ["over", "under"])
@pytest.mark.parametrize(("labels", "rows"), CASES)
def test_dicts_match_imblearn(labels, rows, kind):
    for spec in dict_cases(labels, rows):
        assert_same(spec, labels, rows, kind)
        as_strings = {str(key): n for key, n in spec.items()}
        assert_same(spec, labels, rows, kind, ours=as_strings)


@pytest.mark.parametrize("kind", ["over", "under"])
@pytest.mark.parametrize(("labels", "rows"), CASES)
def test_callables_match_imblearn(labels, rows, kind):
    # Written against Counter(y): works with imbalanced-learn's y and with our Counter.
    def to_max(y):
        seen = Counter(y)
        return {key: max(seen.values()) for key in seen}

    def minority_to_min_plus_one(y):
        seen = Counter(y)
        return {min(seen, key=seen.get): min(seen.values()) + 1}

    for fn in (to_max, minority_to_min_plus_one):
        assert_same(fn, labels, rows, kind)


# --------------------------------------------------------------------------------------------
# imbalanced-learn's forms, properties

ROWS = st.lists(st.integers(1, 500), min_size=2, max_size=8)
KIND = st.sampled_from(["over", "under"])


@st.composite
def labelled(draw, rows=ROWS):
    counts = draw(rows)
    if draw(st.booleans()):
        labels = sorted(draw(st.sets(st.integers(-50, 50), min_size=len(counts))))[: len(counts)]
    else:
        labels = [f"c{i:02d}" for i in range(len(counts))]
    return labels, counts


@settings(max_examples=200, deadline=None)
@given(labelled(), st.sampled_from(IMBLEARN_STRINGS), KIND)
def test_strings_match_imblearn_property(data, strategy, kind):
    labels, rows = data
    assert_same(strategy, labels, rows, kind)


@settings(max_examples=150, deadline=None)
@given(labelled(st.lists(st.integers(1, 500), min_size=2, max_size=2)), st.floats(0.001, 1), KIND)
def test_floats_match_imblearn_property(data, ratio, kind):
    labels, rows = data
    assert_same(ratio, labels, rows, kind)


@settings(max_examples=150, deadline=None)
@given(labelled(), st.data(), KIND)
def test_dicts_match_imblearn_property(data, draw, kind):
    labels, rows = data
    chosen = draw.draw(st.lists(st.sampled_from(labels), min_size=1, unique=True))
    spec = {label: draw.draw(st.integers(0, 600)) for label in chosen}
    assert_same(spec, labels, rows, kind)
    assert_same(spec, labels, rows, kind, ours={str(k): n for k, n in spec.items()})


def test_tie_break_follows_counts_order():
    counts = {"a": 5, "b": 9, "c": 9, "d": 5}
    assert resolve_targets("majority", counts, "under") == {"a": 5, "b": 5, "c": 9, "d": 5}
    assert resolve_targets("minority", counts, "over") == {"a": 9, "b": 9, "c": 9, "d": 5}


def test_output_keeps_keys_and_order():
    counts = {"z": 3, "a": 30, "m": 10}
    assert list(resolve_targets("auto", counts, "over")) == ["z", "a", "m"]
    assert list(resolve_targets({"power": 0.5}, counts, "combined")) == ["z", "a", "m"]


# --------------------------------------------------------------------------------------------
# zero-row classes


@pytest.mark.parametrize("kind", ["over", "under"])
@pytest.mark.parametrize("strategy", [*IMBLEARN_STRINGS, 0.5, {1: 8}, {2: 20}])
def test_zero_row_classes_are_never_resampled(strategy, kind):
    counts = {"0": 0, "1": 8, "2": 40, "3": 0}
    expected = imblearn_targets(strategy, [1, 2], [8, 40], kind)
    got = our_targets(strategy, [0, 1, 2, 3], [0, 8, 40, 0], kind)
    if expected == ERROR:
        assert got == ERROR
    else:
        assert got == {"0": 0, **expected, "3": 0}
    for form in ("balanced", {"power": 0.3}, {"max_ratio": 2}):
        targets = resolve_targets(form, counts, kind)
        assert targets["0"] == targets["3"] == 0


def test_zero_row_class_in_a_dict():
    counts = {"a": 0, "b": 5, "c": 50}
    assert resolve_targets({"a": 0, "b": 50}, counts, "over") == {"a": 0, "b": 50, "c": 50}
    with pytest.raises(ValueError, match="'a'.*0 rows"):
        resolve_targets({"a": 3}, counts, "combined")


def test_needs_two_classes_with_rows():
    with pytest.raises(ValueError, match="more than 1 class"):
        resolve_targets("auto", {"a": 0, "b": 5}, "over")
    with pytest.raises(ValueError, match="more than 1 class"):
        resolve_targets("auto", {"a": 5}, "under")


def test_callable_receives_a_counter_of_the_classes_with_rows():
    seen = []

    def spy(counter):
        seen.append(counter)
        return {}

    counts = {"a": 0, "b": 5, "c": 50}
    assert resolve_targets(spy, counts, "over") == counts
    assert isinstance(seen[0], Counter) and seen[0] == Counter({"b": 5, "c": 50})
    assert Counter(seen[0]) == seen[0]


# --------------------------------------------------------------------------------------------
# balanced

COUNTS = {"a": 900, "b": 60, "c": 30, "d": 7}
TOTAL = sum(COUNTS.values())


def test_balanced_defaults_per_kind():
    assert set(resolve_targets("balanced", COUNTS, "over").values()) == {900}
    assert set(resolve_targets("balanced", COUNTS, "under").values()) == {7}
    combined = resolve_targets("balanced", COUNTS, "combined")
    assert set(combined.values()) == {round(TOTAL / 4)}
    assert resolve_targets("auto", COUNTS, "combined") == combined
    assert abs(sum(combined.values()) - TOTAL) <= 2


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("over", [900, 1000], [899, 7]),
        ("under", [1, 7], [0, 8, 900]),
        ("combined", [7, 500, 900], [6, 901]),
    ],
)
def test_balanced_explicit_bounds(kind, good, bad):
    for n in good:
        assert set(resolve_targets({"balanced": n}, COUNTS, kind).values()) == {n}
    for n in bad:
        with pytest.raises(ValueError, match=rf"'balanced': {n}.*{kind}"):
            resolve_targets({"balanced": n}, COUNTS, kind)


def test_balanced_accepts_integral_float_and_refuses_others():
    assert set(resolve_targets({"balanced": 100.0}, COUNTS, "combined").values()) == {100}
    with pytest.raises(ValueError, match="whole number"):
        resolve_targets({"balanced": 100.5}, COUNTS, "combined")
    with pytest.raises(TypeError, match="bool"):
        resolve_targets({"balanced": True}, COUNTS, "combined")


# --------------------------------------------------------------------------------------------
# power

ALL_KINDS = st.sampled_from(["over", "under", "combined"])


@settings(max_examples=150, deadline=None)
@given(ROWS, ALL_KINDS)
def test_power_one_keeps_and_zero_balances(rows, kind):
    counts = counts_of(rows)
    assert resolve_targets({"power": 1}, counts, kind) == counts
    balanced = resolve_targets({"power": 0.0}, counts, kind)
    expected = {"over": {max(rows)}, "under": {min(rows)}}.get(kind)
    if expected is not None:
        assert set(balanced.values()) == expected
    else:
        assert max(balanced.values()) - min(balanced.values()) <= 1
        assert sum(balanced.values()) == sum(rows)


@settings(max_examples=150, deadline=None)
@given(ROWS, st.floats(0, 1), st.floats(0, 1), ALL_KINDS)
def test_power_properties(rows, q1, q2, kind):
    low_q, high_q = sorted((q1, q2))
    counts = counts_of(rows)
    flat = resolve_targets({"power": low_q}, counts, kind)
    steep = resolve_targets({"power": high_q}, counts, kind)
    for targets in (flat, steep):
        assert all(t >= 1 for t in targets.values())
        for a in counts:  # the order of the classes never crosses
            for b in counts:
                if counts[a] < counts[b]:
                    assert targets[a] <= targets[b]
    if kind == "over":
        assert all(flat[k] >= steep[k] >= counts[k] for k in counts)
        assert flat[max(counts, key=counts.get)] == max(rows)
    elif kind == "under":
        assert all(flat[k] <= steep[k] <= counts[k] for k in counts)
        assert flat[min(counts, key=counts.get)] == min(rows)
    else:
        assert sum(flat.values()) == sum(steep.values()) == sum(rows)


def test_power_half_example():
    counts = {"a": 900, "b": 100, "c": 4}
    # over: 900·(n/900)^0.5 = 30·√n
    assert resolve_targets({"power": 0.5}, counts, "over") == {"a": 900, "b": 300, "c": 60}
    # under: 4·(n/4)^0.5 = 2·√n
    assert resolve_targets({"power": 0.5}, counts, "under") == {"a": 60, "b": 20, "c": 4}
    # combined: ∝ (30, 10, 2) scaled to 1004 rows
    assert resolve_targets({"power": 0.5}, counts, "combined") == {"a": 717, "b": 239, "c": 48}


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan"), float("inf")])
def test_power_refuses_q_outside_unit_interval(q):
    with pytest.raises(ValueError, match="q"):
        resolve_targets({"power": q}, COUNTS, "combined")


# --------------------------------------------------------------------------------------------
# max_ratio


def ratio_of(targets):
    live = [n for n in targets.values() if n > 0]
    return Fraction(max(live), min(live))


def brute_force_cap(rows, r):
    """Every cap U in [floor(min·r), max]: the one whose total is closest (then smallest)."""
    r = Fraction(r)
    total = sum(rows)
    best = None
    for cap in range(math.floor(min(rows) * r), max(rows) + 1):
        low = math.ceil(cap / r)
        got = sum(min(max(n, low), cap) for n in rows)
        key = (abs(got - total), cap)
        best = key if best is None or key < best else best
    return best


@settings(max_examples=150, deadline=None)
@given(ROWS, st.sampled_from([1, 1.5, 2, 3, 4.25, 10, 100]), ALL_KINDS)
def test_max_ratio_properties(rows, r, kind):
    counts = counts_of(rows)
    targets = resolve_targets({"max_ratio": r}, counts, kind)
    assert ratio_of(targets) <= Fraction(r)
    if max(rows) <= r * min(rows):
        assert targets == counts
    if kind == "over":
        assert all(targets[k] >= counts[k] for k in counts)
    elif kind == "under":
        assert all(targets[k] <= counts[k] for k in counts)
    elif targets != counts:
        distance, cap = brute_force_cap(rows, r)
        assert max(targets.values()) == cap
        assert abs(sum(targets.values()) - sum(rows)) == distance


def test_max_ratio_examples():
    counts = {"a": 900, "b": 60, "c": 7}
    assert resolve_targets({"max_ratio": 10}, counts, "over") == {"a": 900, "b": 90, "c": 90}
    assert resolve_targets({"max_ratio": 10}, counts, "under") == {"a": 70, "b": 60, "c": 7}
    combined = resolve_targets({"max_ratio": 10}, counts, "combined")
    assert combined == {"a": 805, "b": 81, "c": 81} and sum(combined.values()) == 967
    assert resolve_targets({"max_ratio": 200}, counts, "combined") == counts


@pytest.mark.parametrize("r", [0.5, 0, -2, float("inf"), "10", True])
def test_max_ratio_refuses_bad_r(r):
    with pytest.raises((ValueError, TypeError), match="r"):
        resolve_targets({"max_ratio": r}, COUNTS, "over")


# --------------------------------------------------------------------------------------------
# combined dicts and callables, refusals


def test_combined_dict_moves_both_ways():
    counts = {"a": 900, "b": 60, "c": 7}
    assert resolve_targets({"a": 300, "c": 100}, counts, "combined") == {
        "a": 300,
        "b": 60,
        "c": 100,
    }
    with pytest.raises(ValueError, match=r"over-sampling.*900 samples and 300.*'a'"):
        resolve_targets({"a": 300, "c": 100}, counts, "over")
    with pytest.raises(ValueError, match=r"under-sampling.*7 samples and 100.*'c'"):
        resolve_targets({"a": 300, "c": 100}, counts, "under")
    both = resolve_targets(lambda c: {k: 100 for k in c}, counts, "combined")
    assert both == {"a": 100, "b": 100, "c": 100}


@pytest.mark.parametrize("strategy", ["not majority", "all", "minority", 0.5, 1])
def test_combined_refuses_one_direction_forms(strategy):
    with pytest.raises(ValueError, match="kind 'combined' accepts"):
        resolve_targets(strategy, {"a": 10, "b": 90}, "combined")


def test_reserved_key_that_is_a_class_is_ambiguous():
    counts = {"power": 10, "weak": 90}
    with pytest.raises(ValueError, match="ambiguous.*'power'.*callable"):
        resolve_targets({"power": 50}, counts, "over")
    assert resolve_targets(lambda c: {"power": 50}, counts, "over") == {"power": 50, "weak": 90}
    # several keys: a plain class dict
    assert resolve_targets({"power": 50, "weak": 90}, counts, "over")["power"] == 50
    with pytest.raises(ValueError, match="mixes the form 'max_ratio'"):
        resolve_targets({"max_ratio": 2, "weak": 90}, counts, "over")


# --------------------------------------------------------------------------------------------
# errors name what is wrong


def test_errors_name_the_class_and_the_fix():
    counts = {"1": 10, "2": 90}
    with pytest.raises(ValueError, match=r"\{7\} target class is/are not present.*\['1', '2'\]"):
        resolve_targets({7: 3}, counts, "over")
    with pytest.raises(ValueError, match="negative.*'1': -1"):
        resolve_targets({1: -1}, counts, "under")
    with pytest.raises(ValueError, match="class '1' twice"):
        resolve_targets({1: 20, "1": 30}, counts, "over")
    with pytest.raises(ValueError, match=r"one of \['auto'.*'balanced'\].*'nope'"):
        resolve_targets("nope", counts, "over")
    with pytest.raises(ValueError, match="majority.*over-sampler.*Use kind 'under'"):
        resolve_targets("majority", counts, "over")
    with pytest.raises(ValueError, match="float only when the type of target is binary"):
        resolve_targets(0.5, {"a": 1, "b": 2, "c": 3}, "over")
    with pytest.raises(ValueError, match="kind must be one of"):
        resolve_targets("auto", counts, "sideways")


def test_dict_values_must_be_whole_numbers():
    counts = {"1": 10, "2": 90}
    assert resolve_targets({1: 90.0}, counts, "over") == {"1": 90, "2": 90}
    assert resolve_targets({np.int64(1): np.int64(5)}, counts, "under") == {"1": 5, "2": 90}
    with pytest.raises(TypeError, match="bool"):
        resolve_targets({1: True}, counts, "under")
    with pytest.raises(ValueError, match="whole number.*12.5"):
        resolve_targets({1: 12.5}, counts, "over")
    with pytest.raises(TypeError, match="str"):
        resolve_targets({1: "12"}, counts, "over")


def test_wrong_types():
    counts = {"a": 10, "b": 90}
    with pytest.raises(ValueError, match="cannot be a list"):
        resolve_targets(["a"], counts, "over")
    with pytest.raises(TypeError, match="NoneType"):
        resolve_targets(None, counts, "over")
    with pytest.raises(TypeError, match="bool"):
        resolve_targets(True, counts, "over")
    with pytest.raises(TypeError, match="must return a dict.*list"):
        resolve_targets(lambda c: ["a"], counts, "over")
    with pytest.raises(TypeError, match="str"):
        resolve_targets("auto", {1: 10, 2: 90}, "over")
    with pytest.raises(ValueError, match="counts"):
        resolve_targets("auto", {"a": -1, "b": 90}, "over")


def test_describe():
    assert describe("auto") == "'auto'"
    assert describe(0.5) == "ratio 0.5"
    assert describe({"power": 0.5}) == "power q=0.5"
    assert describe({"max_ratio": 10}) == "max_ratio r=10"
    assert describe({"balanced": 100}) == "balanced to 100 rows per class"
    assert describe({1: 50, "b": 20}) == "{1: 50, 'b': 20}"
    assert describe({i: i for i in range(10)}).endswith("… (+4)}")
    assert describe(describe).startswith("callable describe")
