"""Is a training database in label order? A sorted one trains on batches of one class and learns nothing.

Caffe's Data layer reads records in key order, and `convert_imageset` without `--shuffle` writes them class by
class, so a database built that way (ours with `--keep-order`, or anyone's) feeds whole batches of one label.
The test here needs only the labels: it reads windows of consecutive records spread over the database and counts
how often the label changes from one record to the next. In a shuffled order a change happens with probability
1 - sum(p_c^2) (p_c: each label's share), whatever the classes' sizes; a sorted order changes only at class
boundaries. Works for any LMDB of Datums, ours or Caffe's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from squeezecaffe.data_tools.lmdb_io import shared_env
from squeezecaffe.proto import pb

WINDOWS = 8  # windows spread evenly over the database
WINDOW = 256  # consecutive records per window
MIN_EXPECTED = 16  # below this many expected changes the sample cannot tell (e.g. one class holds 99.9%)
SORTED_RATIO = 0.25  # fewer than a quarter of the expected changes: in label order, not shuffled


@dataclass(frozen=True)
class LabelOrder:
    records: int  # records in the database
    sampled: int  # records read
    changes: int  # label changes between neighbouring sampled records (inside a window)
    expected: float  # the changes a shuffled order gives with these label shares
    first_run: int  # records at the start that share the first record's label

    @property
    def looks_sorted(self) -> bool:
        return self.expected >= MIN_EXPECTED and self.changes < SORTED_RATIO * self.expected


def _label(value: bytes) -> int:
    datum = pb.Datum()
    datum.ParseFromString(value)
    return int(datum.label)


def label_order(db: str | Path) -> LabelOrder:
    env = shared_env(Path(db))  # one handle per database and process (LMDB refuses a second open)
    with env.begin() as txn:
        total = txn.stat()["entries"]
        keys = list(txn.cursor().iternext(keys=True, values=False)) if total > WINDOWS * WINDOW else None
        starts = ([round(i * (total - WINDOW) / (WINDOWS - 1)) for i in range(WINDOWS)] if keys is not None
                  else [0])
        windows: list[list[int]] = []
        cursor = txn.cursor()
        for start in starts:
            labels: list[int] = []
            ok = cursor.first() if keys is None else cursor.set_key(keys[start])
            while ok and len(labels) < (WINDOW if keys is not None else total):
                labels.append(_label(cursor.value()))
                ok = cursor.next()
            windows.append(labels)
    sample = [label for window in windows for label in window]
    shares: dict[int, int] = {}
    for label in sample:
        shares[label] = shares.get(label, 0) + 1
    collision = sum((n / len(sample)) ** 2 for n in shares.values()) if sample else 1.0
    pairs = sum(max(0, len(w) - 1) for w in windows)
    changes = sum(a != b for w in windows for a, b in itertools.pairwise(w))
    first = windows[0] if windows else []
    first_run = next((i for i, label in enumerate(first) if label != first[0]), len(first))
    return LabelOrder(records=total, sampled=len(sample), changes=changes, expected=pairs * (1.0 - collision),
                      first_run=first_run)


def sorted_message(db: str | Path, order: LabelOrder) -> str:
    return (f"{db}: the records are in label order ({order.changes} label changes in {order.sampled} sampled "
            f"records where a shuffled order gives about {order.expected:.0f}; the first {order.first_run} share one "
            "label), so every batch would hold one or a few classes. Rebuild it with `squeezecaffe build-lmdb` "
            "(it shuffles the training split unless --keep-order) or convert_imageset --shuffle, or pass "
            "--allow-sorted to train on it as it is")
