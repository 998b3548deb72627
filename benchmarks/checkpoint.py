"""Checkpoint cost of an online cascade: saving and loading its learned state.

A hashed n-gram stage in front of a label-column expert learns HEADLINES
(``../shared/data/text/headlines_{train,test}.jsonl``); after ``--items`` items its state
is checkpointed the way ``tiered run`` does it (``state_dict`` -> ``RunStore.commit``, then
``RunStore.latest`` -> ``load_state_dict`` into a fresh cascade), and, for comparison, the
same tree is written with ``pickle`` (what checkpoints held before the arrays + JSON format).

    .venv/bin/python benchmarks/checkpoint.py
    .venv/bin/python benchmarks/checkpoint.py --items 2000 10000 --repeat 5

Times are the median of ``--repeat`` runs, in milliseconds: wall clock, or with
``--clock cpu`` this process's CPU time (steadier when the machine is shared; it leaves
out waiting for the disk).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiered.core import FixedCost, Item, Stage
from tiered.models.hashed_ngram import HashedNgramModel
from tiered.models.label_column import LabelColumn
from tiered.online import OnlineCascade, OnlineConfig
from tiered.store import Checkpoint, RunIdentity, RunStore
from tiered.store.state import decode_state, encode_state

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"


def load_items() -> list[Item]:
    items = []
    for split in ("train", "test"):
        with open(DATA / f"headlines_{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                items.append(Item(id=str(r["id"]), input=r["text"], fields={"label": r["label"]}))
    return items


def cascade() -> OnlineCascade:
    expert = Stage(
        "expert", LabelColumn("label", usd_per_call=0.002), cost=FixedCost(usd_per_call=0.002)
    )
    cfg = OnlineConfig(target_agreement=0.96)
    return OnlineCascade([Stage("hashed_ngram", HashedNgramModel())], expert, cfg, seed=0)


CLOCK = time.perf_counter


def median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = CLOCK()
        out = fn()
        times.append(1000 * (CLOCK() - t0))
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: steadier on a busy machine"
    )
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    items = load_items()
    print(
        f"{'items':>6} {'state_dict':>10} {'load':>6} {'commit':>7} {'latest':>7} | "
        f"{'pickle: enc':>11} {'dec':>6} {'MB':>5} | {'state: enc':>10} {'dec':>6} {'MB':>5}"
    )
    for n in args.items:
        oc = cascade()
        for i in range(0, n, 256):
            oc.process(items[i : min(i + 256, n)])
        t_state, state = median_ms(oc.state_dict, args.repeat)
        fresh = cascade()
        t_load, _ = median_ms(lambda f=fresh, s=state: f.load_state_dict(s), args.repeat)
        with tempfile.TemporaryDirectory() as tmp:
            store = RunStore(Path(tmp) / "s.sqlite")
            store.start(RunIdentity("x", "in", "out"))
            cp = Checkpoint(learner=state)
            t_commit, _ = median_ms(lambda st=store, c=cp: st.commit(c), args.repeat)
            t_latest, _ = median_ms(store.latest, args.repeat)
            store.close()
        cells = []
        formats: list[tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = [
            (lambda s: pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads),
            (encode_state, decode_state),
        ]
        for enc, dec in formats:
            try:
                t_enc, blob = median_ms(lambda e=enc, s=state: e(s), args.repeat)
            except Exception:  # this format cannot hold the state
                cells.append(f"{'n/a':>11} {'':>6} {'':>5}")
                continue
            t_dec, _ = median_ms(lambda d=dec, b=blob: d(b), args.repeat)
            cells.append(f"{t_enc:>11.1f} {t_dec:>6.1f} {len(blob) / 1e6:>5.2f}")
        print(
            f"{n:>6} {t_state:>10.1f} {t_load:>6.1f} {t_commit:>7.1f} {t_latest:>7.1f} | "
            + " | ".join(cells)
        )


if __name__ == "__main__":
    main()
