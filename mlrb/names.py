"""Names of the losses and the named sets a selection can use.

Notation of Lee & Kim (ECCV 2020), Table 1: loss type t at pyramid scale k is "t@k".
Output column 13*k + t follows the paper's order (see ../shared/spec/loss-space.md).
The AMLR pair (Yu & Heo 2023) is "Si" (scale-invariant) and "Gr" (masked gradient).
"""
from __future__ import annotations

import difflib
import functools
import re
from typing import Iterable

# The 13 loss types in the paper's Table 1 order.
LOSS_TYPES = ("D", "M", "M5", "M17", "M65", "r", "c", "rr", "rc", "cc", "N", "Nr", "Nc")
# The same types in the order the paper's public trainer stores them per scale.
TRAINER_LOSS_TYPES = ("D", "r", "c", "N", "rr", "rc", "cc", "Nr", "Nc", "M", "M5", "M17", "M65")
NUM_SCALES = 6
NUM_TYPES = len(LOSS_TYPES)
# Box-filter sizes of the local mean-removed losses M5, M17, M65.
BOX_SIZES = {"M5": 5, "M17": 17, "M65": 65}

LOSS_NAMES = tuple(f"{t}@{k}" for k in range(NUM_SCALES) for t in LOSS_TYPES)
TRAINER_LOSS_NAMES = tuple(f"{t}@{k}" for k in range(NUM_SCALES) for t in TRAINER_LOSS_TYPES)
AMLR_NAMES = ("Si", "Gr")
# Every selectable loss: the 78 of the space (indices 0..77), then the AMLR pair (78, 79).
ALL_NAMES = LOSS_NAMES + AMLR_NAMES
INDEX = {name: i for i, name in enumerate(ALL_NAMES)}
# TRAINER_TO_PAPER[j] is the paper-order index of the trainer's j-th loss.
TRAINER_TO_PAPER = tuple(INDEX[n] for n in TRAINER_LOSS_NAMES)


def _of_types(types: Iterable[str]) -> tuple[str, ...]:
    types = set(types)
    return tuple(n for n in LOSS_NAMES if n.split("@")[0] in types)


# Named sets of the paper's Table 5 (L_D, L_M, L_G, L_N, L^k) plus conveniences.
SETS: dict[str, tuple[str, ...]] = {
    "all": LOSS_NAMES,
    "L": LOSS_NAMES,
    "D0": ("D@0",),
    "L_D": _of_types(["D"]),
    "L_M": _of_types(["M", "M5", "M17", "M65"]),
    "L_G": _of_types(["r", "c", "rr", "rc", "cc"]),
    "L_N": _of_types(["N", "Nr", "Nc"]),
    "AMLR": AMLR_NAMES,
    **{f"L^{k}": tuple(f"{t}@{k}" for t in LOSS_TYPES) for k in range(NUM_SCALES)},
    **{f"L{k}": tuple(f"{t}@{k}" for t in LOSS_TYPES) for k in range(NUM_SCALES)},
}

# The loss sets of the paper's Table 5 (and Table 7), as selection strings.
TABLE5_SETS: dict[str, str] = {
    "{D0}": "D0",
    "{D0,M0,r0,c0}": "D@0, M@0, r@0, c@0",
    "{D0,r0,c0,N0}": "D@0, r@0, c@0, N@0",
    "L_D|L_N": "L_D | L_N",
    "L_D|L_M": "L_D | L_M",
    "L_D|L_G": "L_D | L_G",
    "L^0": "L^0",
    "L^0|L^1|L^2": "L^0 | L^1 | L^2",
    "L^3|L^4|L^5": "L^3 | L^4 | L^5",
    "all": "all",
}

_SEPARATORS = re.compile(r"[\s,|+∪{}]+")


def _tokens(select) -> list[str]:
    if isinstance(select, str):
        items = [select]
    else:
        try:
            items = list(select)
        except TypeError:
            raise TypeError(
                f"select must be a string or an iterable of strings, got {type(select).__name__}"
            ) from None
    tokens = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"select entries must be strings (loss or set names), got {item!r}")
        tokens += [t for t in _SEPARATORS.split(item) if t]
    return tokens


def resolve_select(select=None) -> tuple[int, ...]:
    """Indices into ALL_NAMES of a selection, in selection order, each loss once.

    ``select`` is None (all 78), a name ("M17@2"), a set ("L_G", "L^3", "all", "D0",
    "AMLR"), a string joining several with ``|``, ``,``, ``+`` or ``∪`` ("L^3 | L^4"), or
    an iterable of those. A loss named twice (or by two overlapping sets) keeps its
    first position.
    """
    if select is None:
        return tuple(range(len(LOSS_NAMES)))
    # Trainers pass the same selection every step (LossSpace: its 78 names): parsed once.
    if isinstance(select, str):
        return _resolve_strings((select,))
    if isinstance(select, (list, tuple)) and all(isinstance(item, str) for item in select):
        return _resolve_strings(tuple(select))
    return _resolve_items(select)


@functools.lru_cache(maxsize=256)
def _resolve_strings(items: tuple[str, ...]) -> tuple[int, ...]:
    return _resolve_items(items)  # a bad name raises, and nothing is cached


def _resolve_items(select) -> tuple[int, ...]:
    out: dict[int, None] = {}
    for tok in _tokens(select):
        if tok in INDEX:
            out.setdefault(INDEX[tok], None)
        elif tok in SETS:
            for name in SETS[tok]:
                out.setdefault(INDEX[name], None)
        else:
            close = difflib.get_close_matches(tok, list(INDEX) + list(SETS), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown loss or set name {tok!r}{hint} "
                f"(names look like 'D@0' or 'M17@2'; sets: {', '.join(SETS)})"
            )
    if not out:
        raise ValueError("select names no loss; pass None for all 78")
    return tuple(out)


def names_of(indices: Iterable[int]) -> tuple[str, ...]:
    return tuple(ALL_NAMES[i] for i in indices)
