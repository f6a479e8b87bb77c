"""One check of a set of named arrays against the set a model expects (framework-free).

Every loader of weights uses it, on both backends and in the parity tools: the JAX DiT's
official-parameter loader, both trainers' checkpoint restore and initial weights, the parity
harness's torch loader and the converter's target check. The first missing key, then the
first unexpected key (alphabetically), then the first key of another shape in the expected
collection's order is named.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def check_keys_and_shapes(got: Mapping[str, Sequence[int]], want: Mapping[str, Sequence[int]], what: str,
                          note: str = "") -> None:
    """got, want: {name: shape}. Raises KeyError for a missing or an unexpected name, ValueError
    for a shape that differs; `what` names the collection ("checkpoint params"), `note` is
    appended to the key errors (e.g. "; it was written for another architecture")."""
    missing = sorted(set(want) - set(got))
    if missing:
        raise KeyError(f"{what}: {missing[0]!r} is missing ({len(missing)} missing in all: {missing[:5]}){note}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise KeyError(f"{what}: unexpected {extra[0]!r} ({len(extra)} unexpected in all: {extra[:5]}){note}")
    for k in want:  # in the model's order: the first layer of another size is named
        g, w = tuple(int(s) for s in got[k]), tuple(int(s) for s in want[k])
        if g != w:
            raise ValueError(f"{what}: {k!r} has shape {g}, the model expects {w}")
