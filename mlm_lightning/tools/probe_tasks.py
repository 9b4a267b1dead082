"""The labelled tasks of ``probe``: a user's file (or train/test pair), or the embedded Shakespeare genre task.

A task file is ``.csv``, ``.jsonl`` or ``.parquet`` with a text column and a label column (names settable), and
optionally a group column: rows of one group (a document, a customer, a play) are never split between training
and test. Without a test file the rows are split, the same way for every model: per seed a stratified split
(``test_fraction`` of each class's groups held out), or ``folds`` stratified folds (fixed by the first seed).

Everything is checked before any model is loaded; bad input is one :class:`MLMError` line.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlm_lightning.errors import MLMError

#: The embedded task's name (``--task shakespeare-genre``).
GENRE_TASK = "shakespeare-genre"
TASK_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")

#: The First Folio's (1623) grouping of the 36 plays it prints, by the file names of the ``shakespeare`` package
#: (modern spelling, ``shksprdata/texts/<name>_gut.txt``). Troilus and Cressida is missing from the Folio's
#: catalogue but printed between the histories and the tragedies, as a tragedy; Cymbeline closes the
#: tragedies. Pericles is not in the Folio, and the poems are not plays: neither is part of the task.
FIRST_FOLIO_GENRES: dict[str, str] = {
    **dict.fromkeys(
        [
            "tempest",
            "two_gentlemen_of_verona",
            "merry_wives_of_windsor",
            "measure_for_measure",
            "comedy_of_errors",
            "much_ado_about_nothing",
            "loves_labours_lost",
            "midsummer_nights_dream",
            "merchant_of_venice",
            "as_you_like_it",
            "taming_of_the_shrew",
            "alls_well_that_ends_well",
            "twelfth_night",
            "winters_tale",
        ],
        "comedy",
    ),
    **dict.fromkeys(
        [
            "john",
            "richard_ii",
            "henry_iv_part_1",
            "henry_iv_part_2",
            "henry_v",
            "henry_vi_part_1",
            "henry_vi_part_2",
            "henry_vi_part_3",
            "richard_iii",
            "henry_viii",
        ],
        "history",
    ),
    **dict.fromkeys(
        [
            "troilus_and_cressida",
            "coriolanus",
            "tragedy_of_titus_andronicus",
            "romeo_and_juliet",
            "timon_of_athens",
            "julius_caesar",
            "macbeth",
            "hamlet",
            "lear",
            "othello",
            "antony_and_cleopatra",
            "cymbeline",
        ],
        "tragedy",
    ),
}
# A speech's first line: its speaker, `KING HENRY.`, `FIRST CITIZEN.`, `Ham.`, `Gregory.` (at most four words).
_SPEAKER = re.compile(r"^[A-Z][A-Za-z0-9.,'&-]*( [A-Za-z0-9.,'&-]+){0,3}\.?$")
_STAGE = re.compile(r"\[[^\]]*\]?")  # stage directions: `[Exit.]`, `[Enter ...`
# The first act (or, in The Taming of the Shrew, the Induction's first scene): the list of persons comes before.
_FIRST_ACT = re.compile(r"^\s*(ACT (I|1|FIRST)\b|SCENE (I|1)\b)", re.IGNORECASE | re.MULTILINE)


@dataclass
class ProbeTask:
    """A labelled task: texts, their class indices and groups; ``test`` marks a given test file's rows.

    Attributes:
        name: What the tables call it.
        texts: The texts, in file order (training file first, then the test file's).
        labels: Class index of each text (into ``classes``).
        classes: The class names, sorted.
        groups: Group of each text (rows of one group stay on one side of a split).
        test: For a train/test pair, which rows are the test file's; ``None``: the rows are split.
    """

    name: str
    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray
    test: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def _read_table(path: Path, columns: dict[str, str | None]) -> dict[str, list]:
    """The named columns of a ``.csv``/``.jsonl``/``.parquet`` file (read with pyarrow: nothing is cached)."""
    import pyarrow as pa

    suffix = path.suffix.lower()
    if suffix not in TASK_SUFFIXES:
        raise MLMError(f"task file {path}: unsupported type '{path.suffix}' (use .csv, .jsonl or .parquet)")
    if not path.is_file():
        raise MLMError(f"task file {path}: no such file")
    try:
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            # Every column as text: a label `1` and a label `01` are different classes only if the file says so.
            names = pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 20)).column_names
            table = pacsv.read_csv(
                path, convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
            )
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.json as pajson

            table = pajson.read_json(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
        raise MLMError(f"could not read task file {path}: {' '.join(str(err).split())[:200]}") from err
    found = {}
    for role, column in columns.items():
        if column is None:
            continue
        if column not in table.column_names:
            raise MLMError(
                f"task file {path}: no column '{column}' (columns: {', '.join(table.column_names)}); "
                f"set --{role}_column"
            )
        found[role] = table.column(column).to_pylist()
    return found


def _check_rows(path: Path, text: list, label: list) -> None:
    for i, (t, y) in enumerate(zip(text, label), start=1):
        if not isinstance(t, str) or not t.strip():
            what = "empty" if isinstance(t, str) or t is None else f"not text ({type(t).__name__})"
            raise MLMError(f"task file {path}: row {i}: the text is {what}; every row needs a text")
        if y is None or (isinstance(y, str) and not y.strip()):
            raise MLMError(f"task file {path}: row {i}: the label is empty; every row needs a label")
    if not text:
        raise MLMError(f"task file {path}: no rows")


def read_task(
    task: str,
    test_file: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    passages_per_play: int = 12,
) -> ProbeTask:
    """The task ``task`` names: :data:`GENRE_TASK` or a labelled file (with ``test_file``: a train/test pair).

    Raises:
        MLMError: A file is missing or unreadable, a column is missing, a text or label is empty, there is one
            class only, or the test file has a class the training file lacks.
    """
    if task == GENRE_TASK:
        if test_file:
            raise MLMError(f"--task {GENRE_TASK} brings its own split by play: leave --test_file unset")
        return genre_task(passages_per_play)
    from mlm_lightning.io.sources import resolve_pkg

    parts = []
    for name in [task, test_file] if test_file else [task]:
        path = Path(resolve_pkg(name)).expanduser()
        cols = _read_table(path, {"text": text_column, "label": label_column, "group": group_column})
        _check_rows(path, cols["text"], cols["label"])
        parts.append((path, cols))
    texts = [t for _, cols in parts for t in cols["text"]]
    raw = [str(y) for _, cols in parts for y in cols["label"]]
    classes = sorted(set(str(y) for y in parts[0][1]["label"]))
    if len(classes) < 2:
        raise MLMError(f"task file {parts[0][0]}: one class only ('{classes[0]}'): a probe needs two or more labels")
    if len(parts) == 2:
        extra = sorted(set(str(y) for y in parts[1][1]["label"]) - set(classes))
        if extra:
            raise MLMError(f"test file {parts[1][0]}: label '{extra[0]}' is not in the training file {parts[0][0]}")
    index = {c: i for i, c in enumerate(classes)}
    if group_column:
        groups = [f"{k}:{g}" for k, (_, cols) in enumerate(parts) for g in cols["group"]]
    else:
        groups = [str(i) for i in range(len(texts))]
    test = None
    if len(parts) == 2:
        test = np.zeros(len(texts), dtype=bool)
        test[len(parts[0][1]["text"]) :] = True
    return ProbeTask(
        name=Path(task).name,
        texts=texts,
        labels=np.array([index[y] for y in raw], dtype=np.int64),
        classes=classes,
        groups=np.array(groups),
        test=test,
    )


def speeches(text: str, min_words: int = 25) -> list[str]:
    """The speeches of a play's text with at least ``min_words`` words: the speaker's name and stage directions cut.

    A speech's first line names its speaker (``KING HENRY.``, ``Ham.``): a classifier would learn the names, not the
    language, so it is dropped, like the bracketed stage directions. Reading starts at the first act: the list
    of persons before it is not a speech.
    """
    found = []
    start = _FIRST_ACT.search(text)
    for paragraph in re.split(r"\n\s*\n", text[start.start() if start else 0 :]):
        lines = [line.strip() for line in paragraph.strip().splitlines() if line.strip()]
        if len(lines) < 2 or not _SPEAKER.match(lines[0]):
            continue
        body = " ".join(_STAGE.sub(" ", " ".join(lines[1:])).split())
        if len(body.split()) >= min_words:
            found.append(body)
    return found


def genre_task(passages_per_play: int = 12) -> ProbeTask:
    """The embedded task: a speech's genre (comedy, history, tragedy) by the First Folio's grouping of its play.

    ``passages_per_play`` speeches of 25 words or more, evenly spaced through each play (no random draw: the
    same passages on every machine); the group of a passage is its play, so test passages come from plays the
    training split does not see.
    """
    from mlm_lightning.io.sources import resolve_pkg

    folder = Path(resolve_pkg("pkg://shksprdata/texts"))
    texts, labels, groups = [], [], []
    classes = sorted(set(FIRST_FOLIO_GENRES.values()))
    for play, genre in sorted(FIRST_FOLIO_GENRES.items()):
        path = folder / f"{play}_gut.txt"
        if not path.is_file():
            raise MLMError(f"{path}: missing; the embedded task needs the `shakespeare` package (scripts/setup.sh)")
        found = speeches(path.read_text(encoding="utf-8", errors="replace"))
        picks = np.linspace(0, len(found) - 1, num=min(passages_per_play, len(found))).round().astype(int)
        for i in dict.fromkeys(picks.tolist()):
            texts.append(found[i])
            labels.append(classes.index(genre))
            groups.append(play)
    return ProbeTask(
        name=GENRE_TASK, texts=texts, labels=np.array(labels, dtype=np.int64), classes=classes, groups=np.array(groups)
    )


@dataclass
class Split:
    """One run's rows: ``seed`` and ``fold`` name it (the same in every model's runs, so runs pair up)."""

    seed: int
    fold: int
    train: np.ndarray
    test: np.ndarray


def _group_classes(task: ProbeTask) -> dict[str, int]:
    """Each group's class; a group with two classes cannot be split by class."""
    found: dict[str, int] = {}
    for group, label in zip(task.groups.tolist(), task.labels.tolist()):
        if found.setdefault(group, label) != label:
            raise MLMError(
                f"task {task.name}: group '{group}' has rows of two classes ({task.classes[found[group]]}, "
                f"{task.classes[label]}): a stratified split keeps a group whole, so each group needs one class"
            )
    return found


def make_splits(task: ProbeTask, seeds: list[int], folds: int = 0, test_fraction: float = 0.25) -> list[Split]:
    """The runs' training and test rows, the same for every model.

    * a given test file: the same split for every seed;
    * ``folds`` >= 2: stratified folds of the groups, drawn once with the first seed; every seed runs every fold;
    * otherwise: per seed, ``test_fraction`` of each class's groups (at least one) held out, drawn with the seed.

    Raises:
        MLMError: A class has fewer groups than folds (or than two, for a held-out split).
    """
    if not seeds:
        raise MLMError("--seeds: give at least one seed (three or more for a spread)")
    index = np.arange(len(task.texts))
    if task.test is not None:
        return [Split(s, 0, index[~task.test], index[task.test]) for s in seeds]
    by_class: dict[int, list[str]] = {}
    for group, label in sorted(_group_classes(task).items()):
        by_class.setdefault(label, []).append(group)
    need = max(folds, 2)
    counts = Counter({c: len(g) for c, g in by_class.items()})
    label, smallest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    if smallest < need:
        unit = "examples" if len(set(task.groups.tolist())) == len(task.texts) else "groups"
        what = f"{folds} folds" if folds >= 2 else "a training and a test side"
        raise MLMError(
            f"task {task.name}: class '{task.classes[label]}' has {smallest} {unit}, fewer than {what} need "
            f"({need}): give more labelled rows of it{', or fewer --folds' if folds >= 2 else ''}"
        )
    groups = task.groups
    splits = []
    if folds >= 2:
        rng = np.random.default_rng(seeds[0])
        fold_of: dict[str, int] = {}
        for label in sorted(by_class):
            members = list(rng.permutation(by_class[label]))
            offset = int(rng.integers(folds))  # so small classes do not all fill fold 0 first
            for i, g in enumerate(members):
                fold_of[str(g)] = (i + offset) % folds
        assigned = np.array([fold_of[g] for g in groups.tolist()])
        for seed in seeds:
            for k in range(folds):
                splits.append(Split(seed, k, index[assigned != k], index[assigned == k]))
        return splits
    for seed in seeds:
        rng = np.random.default_rng(seed)
        held: set[str] = set()
        for label in sorted(by_class):
            members = by_class[label]
            n = min(len(members) - 1, max(1, round(test_fraction * len(members))))
            held.update(str(g) for g in rng.permutation(members)[:n])
        is_test = np.array([g in held for g in groups.tolist()])
        splits.append(Split(seed, 0, index[~is_test], index[is_test]))
    return splits
