"""The dense per-stage threshold grid inside the search: no point of the plain grid is lost."""

from __future__ import annotations

import pytest

from tiered.calibrate import LogView, SearchSettings, search
from tiered.calibrate.grid import grid_frontier

from .test_calibrate import make_log

SETTINGS = SearchSettings(max_stages=4, beam=4, per_structure=1, refine_rounds=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_frontier_is_never_beaten_by_the_plain_grid_on_its_rows(seed: int) -> None:
    view = LogView.of(make_log(n=200, seed=seed))
    result = search(view, settings=SETTINGS)
    front = result.frontier
    for p in grid_frontier(view, max_stages=4):
        assert any(f.cost <= p.cost + 1e-12 and f.quality >= p.quality - 1e-12 for f in front), p
    # every sub-cascade's threshold structure keeps the grid's combinations too
    for p in grid_frontier(view, max_stages=4):
        if len(p.models) < 2:
            continue
        key = (*((j, "threshold:logprob") for j in p.models[:-1]), (p.models[-1], ""))
        pts = result.structures[key]
        assert any(q.cost <= p.cost + 1e-12 and q.quality >= p.quality - 1e-12 for q in pts)


def test_the_dense_grid_can_be_turned_off() -> None:
    view = LogView.of(make_log(n=200, seed=0))
    plain = SearchSettings(max_stages=4, beam=4, per_structure=1, refine_rounds=1, dense_grid=False)
    dense = search(view, settings=SETTINGS)
    sparse = search(view, settings=plain)
    assert sum(map(len, dense.structures.values())) > sum(map(len, sparse.structures.values()))
