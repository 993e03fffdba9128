"""Sampling-strategy resolution: any ``sampling_strategy`` → one table of target rows per class.

    resolve_targets("not majority", {"a": 900, "b": 60, "c": 7}, "over")
    # {'a': 900, 'b': 900, 'c': 900}

``resolve_targets(strategy, counts, kind)`` returns the FINAL number of rows of every class (same
keys, same order as ``counts``). imbalanced-learn's ``check_sampling_strategy`` returns the rows
to generate (over-sampling) or to keep (under-sampling) for the classes it touches only; here
over → ``n_c + generated``, under → kept, untouched classes keep ``n_c``.

``kind``: ``"over"`` (rows are only added), ``"under"`` (rows are only removed) or
``"combined"`` (the head is under-sampled and the tail over-sampled in one pass).

imbalanced-learn's forms, with its meanings and errors (kinds ``over`` and ``under``):

- ``'auto'`` (over: ``'not majority'``; under: ``'not minority'``), ``'minority'`` (over only),
  ``'majority'`` (under only), ``'not minority'``, ``'not majority'``, ``'all'``: the targeted
  classes go to the size of the largest class (over) or of the smallest class (under).
- a float in (0, 1], binary data only: over → the minority becomes ``int(n_max·ratio)``;
  under → the majority becomes ``int(n_min / ratio)`` (imbalanced-learn's ``int`` truncation).
- a dict ``{class: n}``: the desired final rows of each named class. Keys may be the label or
  its string (``{1: 50}`` and ``{"1": 50}`` both name the class ``"1"``); values are whole
  numbers (``bool`` is refused; an integral float such as YAML's ``100.0`` is accepted).
- a callable: called with a ``collections.Counter`` of the class counts (keys are the class
  keys of ``counts``, classes with rows only) — imbalanced-learn passes ``y`` instead; code
  written as ``Counter(y)`` keeps working, as ``Counter(Counter(...))`` is the same counts. It
  must return a dict, resolved as the dict form (never as one of the forms below).

Forms imbalanced-learn lacks (a string, or a dict with that single key):

- ``'balanced'`` / ``{'balanced': N}``: every class to N rows. Default N: over → the largest
  class, under → the smallest class, combined → ``round(total / K)`` (half up; keeps the total).
  An explicit N must be ``>= max`` (over), in ``[1, min]`` (under) or in ``[min, max]``
  (combined).
- ``{'power': q}``, q in [0, 1]: targets ∝ ``n_c**q`` (q=1 keeps the counts, q=0 balances).
  over: scaled so the largest class keeps its rows, ``t_c = round(n_max·(n_c/n_max)**q)``,
  never below ``n_c``; under: scaled so the smallest class keeps its rows, never above
  ``n_c``; combined: scaled to keep the total, largest-remainder rounding so the targets sum
  to the total exactly (equal remainders: the larger class first, then the earlier one),
  every class with rows keeps at least 1. In every kind the order of the classes never crosses.
- ``{'max_ratio': r}``, r >= 1: caps the imbalance ratio max/min of the result at r (exactly:
  computed with fractions). Data already within r is returned unchanged. over: the tail is
  raised to ``L = ceil(n_max / r)``; under: the head is cut to ``U = floor(n_min·r)``;
  combined: the head is cut to a cap U and the tail raised to ``L = ceil(U / r)`` (the lowest
  floor U allows). The total after resampling grows with U, so U is the value in
  ``[floor(n_min·r), n_max]`` whose total is closest to the original total (a binary search);
  on a tie the smaller U (fewer synthetic rows) wins.

A reserved dict key (``balanced``, ``power``, ``max_ratio``) is a form only when it is not also
a class key; a one-key dict naming a class literally called e.g. ``"power"`` is ambiguous and
raises (a callable returning ``{"power": n}`` targets that class).

kind ``combined`` accepts ``'auto'`` (= ``'balanced'``), ``'balanced'``, the three forms above,
a dict (each class up or down) and a callable; imbalanced-learn's other strings and floats only
make sense in one direction and are refused.

Classes with 0 rows may appear in ``counts``: they are never resampled (target 0), never count
as the minority or the majority, and a dict may name them only with 0. At least 2 classes must
have rows (as imbalanced-learn requires of ``y``).

Ties: when several classes share the largest (or smallest) count, the first in the order of
``counts`` (the sorted label order) is the majority (minority). imbalanced-learn breaks ties
by the first class of ``np.unique(y)``, i.e. the sorted label order too.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from fractions import Fraction
from numbers import Integral, Real
from typing import Any, Literal

Kind = Literal["over", "under", "combined"]
KINDS: tuple[str, ...] = ("over", "under", "combined")

Counts = dict[str, int]

_EXTRA_FORMS: tuple[str, ...] = ("balanced", "power", "max_ratio")
_IMBLEARN_STRINGS: tuple[str, ...] = (
    "auto",
    "minority",
    "majority",
    "not minority",
    "not majority",
    "all",
)
_STRINGS: dict[str, tuple[str, ...]] = {
    "over": (*_IMBLEARN_STRINGS, "balanced"),
    "under": (*_IMBLEARN_STRINGS, "balanced"),
    "combined": ("auto", "balanced"),
}
_COMBINED_HELP = (
    "kind 'combined' accepts 'auto' (= 'balanced'), 'balanced', {'balanced': N}, "
    "{'power': q}, {'max_ratio': r}, a dict {class: n_samples} or a callable returning one; "
    "imbalanced-learn's other strings and floats resample in one direction only: use kind "
    "'over' or 'under' for them"
)

# --------------------------------------------------------------------------------------------
# small helpers


def _live(counts: Counts) -> Counts:
    """The classes that have rows: the only ones resampled or ranked."""
    return {key: n for key, n in counts.items() if n > 0}


def _majority(live: Counts) -> str:
    return max(live, key=live.__getitem__)  # max() keeps the first of equals: counts order


def _minority(live: Counts) -> str:
    return min(live, key=live.__getitem__)


def _merge(counts: Counts, targets: Mapping[str, int]) -> Counts:
    """Every class of ``counts`` in its order: the target where given, else its count."""
    return {key: int(targets.get(key, n)) for key, n in counts.items()}


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _as_rows(value: Any, what: str) -> int:
    """A whole number of rows: ints (not bool), or integral floats such as YAML's ``100.0``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{what} must be a whole number of rows, got {value!r} ({type(value).__name__})"
        )
    if isinstance(value, Integral):
        return int(value)
    if math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be a whole number of rows, got {value!r}; give e.g. 100")


def _as_real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _label_str(key: Any) -> str:
    """A key as it reads in a dict literal, without numpy's scalar reprs."""
    return repr(str(key)) if isinstance(key, str) else str(key)


# --------------------------------------------------------------------------------------------
# validation of the inputs


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return kind


def _check_counts(counts: Any) -> Counts:
    if not isinstance(counts, Mapping):
        raise TypeError(f"counts must be a mapping str(label) -> rows, got {type(counts).__name__}")
    checked: Counts = {}
    for key, n in counts.items():
        if not isinstance(key, str):
            raise TypeError(
                f"counts keys must be str(label), got {key!r} ({type(key).__name__}); "
                f"use {{str(label): rows}}"
            )
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
            raise ValueError(f"counts[{key!r}] must be an int >= 0, got {n!r}")
        checked[key] = int(n)
    if len(checked) < 2 or len(_live(checked)) < 2:
        raise ValueError(
            "The target 'y' needs to have more than 1 class. "
            f"Got {len(_live(checked))} class with rows instead (counts: {checked})"
        )
    return checked


# --------------------------------------------------------------------------------------------
# imbalanced-learn's string forms: which classes are targeted, as data

_SELECTORS: dict[str, Callable[[Counts], set[str]]] = {
    "all": lambda live: set(live),
    "majority": lambda live: {_majority(live)},
    "minority": lambda live: {_minority(live)},
    "not majority": lambda live: set(live) - {_majority(live)},
    "not minority": lambda live: set(live) - {_minority(live)},
}
_AUTO = {"over": "not majority", "under": "not minority"}
_REFUSED = {
    ("majority", "over"): "'sampling_strategy'='majority' cannot be used with over-sampler.",
    ("minority", "under"): (
        "'sampling_strategy'='minority' cannot be used with under-sampler and clean-sampler."
    ),
}
_LEVEL: dict[str, Callable[..., int]] = {"over": max, "under": min}


def _resolve_named(name: str, counts: Counts, kind: str) -> Counts:
    name = _AUTO[kind] if name == "auto" else name
    refusal = _REFUSED.get((name, kind))
    if refusal:
        other = "under" if kind == "over" else "over"
        raise ValueError(f"{refusal} Use kind '{other}', or 'combined' with a dict.")
    live = _live(counts)
    level = _LEVEL[kind](live.values())
    return _merge(counts, dict.fromkeys(_SELECTORS[name](live), level))


# --------------------------------------------------------------------------------------------
# float: a ratio, binary data only


def _resolve_ratio(ratio: Any, counts: Counts, kind: str) -> Counts:
    if math.isnan(ratio) or ratio <= 0 or ratio > 1:
        raise ValueError(
            "When 'sampling_strategy' is a float, it should be "
            f"in the range (0, 1]. Got {ratio} instead."
        )
    live = _live(counts)
    if len(live) != 2:
        raise ValueError(
            '"sampling_strategy" can be a float only when the type of target is binary. '
            f"For multi-class, use a dict. Got {len(live)} classes with rows: {list(live)}"
        )
    return _RATIO[kind](ratio, live, counts)


def _ratio_over(ratio: float, live: Counts, counts: Counts) -> Counts:
    major = _majority(live)
    n_major = live[major]
    (minor,) = set(live) - {major}
    generated = int(n_major * ratio - live[minor])
    if generated <= 0:
        raise ValueError(
            "The specified ratio required to remove samples from the minority class while "
            "trying to generate new samples. Please increase the ratio. "
            f"(ratio {ratio} of the majority {major!r} ({n_major} rows) is "
            f"{int(n_major * ratio)} rows for {minor!r}, which has {live[minor]})"
        )
    return _merge(counts, {minor: live[minor] + generated})


def _ratio_under(ratio: float, live: Counts, counts: Counts) -> Counts:
    minor = _minority(live)
    (major,) = set(live) - {minor}
    keep = int(live[minor] / ratio)
    if keep > live[major]:
        raise ValueError(
            "The specified ratio required to generate new sample in the majority class while "
            "trying to remove samples. Please increase the ratio. "
            f"({live[minor]} rows of {minor!r} / ratio {ratio} = {keep} rows for {major!r}, "
            f"which has {live[major]})"
        )
    return _merge(counts, {major: keep})


_RATIO: dict[str, Callable[[float, Counts, Counts], Counts]] = {
    "over": _ratio_over,
    "under": _ratio_under,
}

# --------------------------------------------------------------------------------------------
# dict {class: n} and callables


def _asked_rows(spec: Mapping[Any, Any], counts: Counts) -> Counts:
    """The dict's keys matched to the class keys and its values checked (not yet the kind)."""
    asked: Counts = {}
    given: dict[str, Any] = {}
    for key, value in spec.items():
        name = key if isinstance(key, str) else str(key)
        if name in asked:
            raise ValueError(
                f"'sampling_strategy' names the class {name!r} twice ({given[name]!r} and "
                f"{key!r}); give each class once"
            )
        asked[name] = _as_rows(value, f"'sampling_strategy'[{_label_str(key)}]")
        given[name] = key
    missing = [_label_str(given[name]) for name in asked if name not in counts]
    if missing:
        raise ValueError(
            f"The {{{', '.join(missing)}}} target class is/are not present in the data. "
            f"The classes are {list(counts)}; name a class by its label or its string."
        )
    negative = {name: n for name, n in asked.items() if n < 0}
    if negative:
        raise ValueError(
            "The number of samples in a class cannot be negative. "
            f"'sampling_strategy' contains some negative value: {negative}"
        )
    empty = {name: n for name, n in asked.items() if n > 0 and counts[name] == 0}
    if empty:
        raise ValueError(
            f"The class(es) {list(empty)} have 0 rows, so nothing can be resampled into "
            f"{empty}; give them 0 or leave them out."
        )
    return asked


_DIRECTION: dict[str, tuple[Callable[[int, int], bool], str, str]] = {
    # kind: (asked is wrong when f(asked, rows), the check's words, the other kind)
    "over": (lambda asked, rows: asked < rows, "greater or equal", "under"),
    "under": (lambda asked, rows: asked > rows, "less or equal", "over"),
}


def _resolve_classes(spec: Mapping[Any, Any], counts: Counts, kind: str) -> Counts:
    asked = _asked_rows(spec, counts)
    if kind in _DIRECTION:
        wrong, words, other = _DIRECTION[kind]
        for name, n in asked.items():
            if wrong(n, counts[name]):
                raise ValueError(
                    f"With {kind}-sampling methods, the number of samples in a class should be "
                    f"{words} to the original number of samples. Originally, there is "
                    f"{counts[name]} samples and {n} samples are asked (class {name!r}). "
                    f"Use kind '{other}' for this class, or 'combined' to move classes both ways."
                )
    return _merge(counts, asked)


def _resolve_callable(fn: Callable[..., Any], counts: Counts, kind: str) -> Counts:
    result = fn(Counter(_live(counts)))
    if not isinstance(result, Mapping):
        raise TypeError(
            f"A callable 'sampling_strategy' must return a dict {{class: n_samples}}; "
            f"{describe(fn)} returned {type(result).__name__}"
        )
    return _resolve_classes(result, counts, kind)


# --------------------------------------------------------------------------------------------
# balanced

_BALANCED_DEFAULT: dict[str, Callable[[Counts], int]] = {
    "over": lambda live: max(live.values()),
    "under": lambda live: min(live.values()),
    # round(total / K) half up: keeps the total row count as well as one size can
    "combined": lambda live: (2 * sum(live.values()) + len(live)) // (2 * len(live)),
}
_BALANCED_BOUNDS: dict[str, Callable[[int, int], tuple[int, int | None]]] = {
    "over": lambda lo, hi: (hi, None),  # over-sampling cannot remove rows
    "under": lambda lo, hi: (1, lo),  # under-sampling cannot add rows
    "combined": lambda lo, hi: (lo, hi),
}


def _resolve_balanced(size: Any, counts: Counts, kind: str) -> Counts:
    live = _live(counts)
    if size is None:
        n = _BALANCED_DEFAULT[kind](live)
    else:
        n = _as_rows(size, "'balanced'")
        lo, hi = min(live.values()), max(live.values())
        low, high = _BALANCED_BOUNDS[kind](lo, hi)
        if n < low or (high is not None and n > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(
                f"{{'balanced': {n}}} with kind {kind!r} needs N {bounds} (smallest class "
                f"{lo} rows, largest {hi}). Over-sampling needs N >= {hi}, under-sampling "
                f"N <= {lo}, combined N in [{lo}, {hi}]; or give 'balanced' for the default."
            )
    return _merge(counts, dict.fromkeys(live, n))


# --------------------------------------------------------------------------------------------
# power: targets ∝ n_c ** q


def _power_over(live: Counts, q: float) -> Counts:
    top = max(live.values())
    return {k: max(n, _round_half_up(top * (n / top) ** q)) for k, n in live.items()}


def _power_under(live: Counts, q: float) -> Counts:
    low = min(live.values())
    return {k: min(n, _round_half_up(low * (n / low) ** q)) for k, n in live.items()}


def _apportion(weights: list[float], total: int, sizes: list[int]) -> list[int]:
    """Largest-remainder rounding of ``total·w/Σw``: integers that sum to ``total`` exactly,
    each at least 1 (callers give total >= len(weights)). Equal remainders go to the larger
    of ``sizes`` (so the order of the classes never crosses, even at q=0), then the earlier."""
    w_sum = sum(weights)
    raw = [total * w / w_sum for w in weights]
    out = [math.floor(x) for x in raw]
    short = total - sum(out)
    assert 0 <= short <= len(out), (raw, total)
    by_remainder = sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], -sizes[i], i))
    for i in by_remainder[:short]:
        out[i] += 1
    # raw >= n_c**q >= 1 in exact arithmetic (Σ n**q <= total): this only guards rounding.
    for i in [i for i, n in enumerate(out) if n < 1]:
        out[max(range(len(out)), key=out.__getitem__)] -= 1
        out[i] += 1
    return out


def _power_combined(live: Counts, q: float) -> Counts:
    sizes = list(live.values())
    return dict(zip(live, _apportion([float(n) ** q for n in sizes], sum(sizes), sizes)))


_POWER: dict[str, Callable[[Counts, float], Counts]] = {
    "over": _power_over,
    "under": _power_under,
    "combined": _power_combined,
}


def _resolve_power(q: Any, counts: Counts, kind: str) -> Counts:
    q = _as_real(q, "'power' q")
    if not 0 <= q <= 1:
        raise ValueError(
            f"{{'power': q}} needs q in [0, 1], got {q}: q=1 keeps the counts, q=0 balances "
            "the classes, values between flatten the distribution"
        )
    return _merge(counts, _POWER[kind](_live(counts), q))


# --------------------------------------------------------------------------------------------
# max_ratio: cap max/min of the result at r


def _clamp(live: Counts, cap: int, r: Fraction) -> Counts:
    """The head cut to ``cap`` and the tail raised to the lowest floor the cap allows."""
    floor_ = math.ceil(cap / r)
    return {k: min(max(n, floor_), cap) for k, n in live.items()}


def _max_ratio_over(live: Counts, r: Fraction) -> Counts:
    floor_ = math.ceil(max(live.values()) / r)
    return {k: max(n, floor_) for k, n in live.items()}


def _max_ratio_under(live: Counts, r: Fraction) -> Counts:
    cap = math.floor(min(live.values()) * r)
    return {k: min(n, cap) for k, n in live.items()}


def _max_ratio_combined(live: Counts, r: Fraction) -> Counts:
    total = sum(live.values())

    def total_at(cap: int) -> int:  # nondecreasing in cap
        return sum(_clamp(live, cap, r).values())

    # total_at(lo) <= total (no class is raised at that cap) and total_at(hi) >= total.
    lo, hi = math.floor(min(live.values()) * r), max(live.values())
    while lo < hi:  # the largest cap whose total stays <= the original total
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if total_at(mid) <= total else (lo, mid - 1)
    caps = [lo, lo + 1] if lo < max(live.values()) else [lo]
    best = min(caps, key=lambda cap: (abs(total_at(cap) - total), cap))
    return _clamp(live, best, r)


_MAX_RATIO: dict[str, Callable[[Counts, Fraction], Counts]] = {
    "over": _max_ratio_over,
    "under": _max_ratio_under,
    "combined": _max_ratio_combined,
}


def _resolve_max_ratio(r: Any, counts: Counts, kind: str) -> Counts:
    value = _as_real(r, "'max_ratio' r")
    if value < 1:
        raise ValueError(
            f"{{'max_ratio': r}} needs r >= 1 (the largest class over the smallest), got {r}"
        )
    if isinstance(r, Integral):
        ratio = Fraction(int(r))
    else:
        ratio = r if isinstance(r, Fraction) else Fraction(value)
    live = _live(counts)
    if max(live.values()) <= ratio * min(live.values()):
        return dict(counts)
    return _merge(counts, _MAX_RATIO[kind](live, ratio))


# --------------------------------------------------------------------------------------------
# dispatch: strategy → (form, argument) → resolver

_RESOLVERS: dict[str, Callable[[Any, Counts, str], Counts]] = {
    "named": _resolve_named,
    "ratio": _resolve_ratio,
    "classes": _resolve_classes,
    "callable": _resolve_callable,
    "balanced": _resolve_balanced,
    "power": _resolve_power,
    "max_ratio": _resolve_max_ratio,
}
_COMBINED_FORMS = frozenset({"classes", "callable", "balanced", "power", "max_ratio"})


def _classify_string(name: str, kind: str) -> tuple[str, Any]:
    if name == "balanced" or (name == "auto" and kind == "combined"):
        return "balanced", None
    if name in _IMBLEARN_STRINGS:
        return "named", name
    raise ValueError(
        "When 'sampling_strategy' is a string, it needs to be one of "
        f"{list(_STRINGS[kind])} for kind {kind!r}. Got {name!r} instead."
    )


def _classify_mapping(spec: Mapping[Any, Any], counts: Counts) -> tuple[str, Any]:
    forms = [k for k in spec if isinstance(k, str) and k in _EXTRA_FORMS]
    if len(spec) == 1 and forms:
        (form,) = forms
        if form in counts:
            raise ValueError(
                f"'sampling_strategy' {describe(spec)} is ambiguous: {form!r} is both a "
                f"strategy form and a class of the data. To target the class, pass a callable "
                f"returning the dict (e.g. lambda counts: {{{form!r}: 100}}); to use the form, "
                "rename the class."
            )
        return form, spec[form]
    stray = [k for k in forms if k not in counts]
    if stray:
        raise ValueError(
            f"'sampling_strategy' {describe(spec)} mixes the form {stray[0]!r} with other keys; "
            f"a form is a one-key dict such as {{{stray[0]!r}: ...}}, and {stray[0]!r} is not a "
            f"class (classes: {list(counts)})"
        )
    return "classes", spec


def _classify(strategy: Any, counts: Counts, kind: str) -> tuple[str, Any]:
    if isinstance(strategy, str):
        return _classify_string(strategy, kind)
    if isinstance(strategy, Mapping):
        return _classify_mapping(strategy, counts)
    if isinstance(strategy, (list, tuple, set, frozenset)):
        raise ValueError(
            "'sampling_strategy' cannot be a list for samplers which are not cleaning "
            f"methods. Got {describe(strategy)}; give a dict {{class: n_samples}} instead."
        )
    if isinstance(strategy, Real) and not isinstance(strategy, bool):
        return "ratio", strategy
    if callable(strategy):
        return "callable", strategy
    raise TypeError(
        f"'sampling_strategy' must be a str, a float, a dict or a callable, got "
        f"{strategy!r} ({type(strategy).__name__})"
    )


def resolve_targets(strategy: Any, counts: Mapping[str, int], kind: Kind) -> dict[str, int]:
    """Target rows per class (same keys, same order as ``counts``) after resampling.

    Args:
        strategy: any form described in the module docstring (imbalanced-learn's strings,
            float, dict and callable, plus ``'balanced'``, ``{'balanced': N}``,
            ``{'power': q}`` and ``{'max_ratio': r}``).
        counts: ``str(label) -> rows``, in sorted label order (the tie-break order: the first
            of equal classes is the majority/minority). Classes with 0 rows are allowed: they
            keep 0 rows and never count as the minority or the majority.
        kind: ``"over"``, ``"under"`` or ``"combined"``.

    Returns:
        The final number of rows of every class (untouched classes keep their count).

    Raises:
        ValueError: a strategy that does not fit the data or the kind (imbalanced-learn's
            errors, with the class, what was asked and what exists).
        TypeError: a strategy, count or dict value of the wrong type.
    """
    kind_ = _check_kind(kind)
    checked = _check_counts(counts)
    form, argument = _classify(strategy, checked, kind_)
    if kind_ == "combined" and form not in _COMBINED_FORMS:
        raise ValueError(f"'sampling_strategy' {describe(strategy)}: {_COMBINED_HELP}.")
    targets = _RESOLVERS[form](argument, checked, kind_)
    assert list(targets) == list(checked), (targets, checked)
    return targets


_FORM_TEXT: dict[str, Callable[[Any], str]] = {
    "balanced": lambda n: f"balanced to {n} rows per class",
    "power": lambda q: f"power q={q}",
    "max_ratio": lambda r: f"max_ratio r={r}",
}


_DESCRIBE_ITEMS = 6


def describe(strategy: Any) -> str:
    """Short human text of a strategy, for messages and reports (a long dict is cut short).

    >>> describe({"power": 0.5})
    'power q=0.5'
    """
    if isinstance(strategy, str):
        return repr(strategy)
    if isinstance(strategy, Mapping):
        if len(strategy) == 1:
            ((key, value),) = strategy.items()
            if isinstance(key, str) and key in _FORM_TEXT:
                return _FORM_TEXT[key](value)
        shown = list(strategy.items())[:_DESCRIBE_ITEMS]
        items = [f"{_label_str(k)}: {v}" for k, v in shown]
        more = f", … (+{len(strategy) - len(shown)})" if len(strategy) > len(shown) else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(strategy, Real) and not isinstance(strategy, bool):
        return f"ratio {strategy}"
    if callable(strategy):
        return f"callable {getattr(strategy, '__qualname__', type(strategy).__name__)}"
    return f"{strategy!r} ({type(strategy).__name__})"
