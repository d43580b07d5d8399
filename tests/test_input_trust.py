"""Bad inputs end in a clear error (or documented behaviour), never in silent garbage (issue 12, cases 1-4 and 9).

Every error is raised in Python, before anything is compiled, and names the argument, what it
got and what was expected.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from deepopt import data, sweep, train

CONFIG = train.Config((2, 3, 1), optimizer="adam", batch_size=16, epochs=2)
SPACE = {"learning_rate": sweep.log_uniform(1e-3, 1.0)}


@pytest.fixture(scope="module")
def splits() -> tuple[data.Dataset, data.Dataset]:
    train_set = data.make_moons(jax.random.key(0), 40, 0.2)
    dev_set = data.make_moons(jax.random.key(1), 20, 0.2)
    return (
        data.Dataset(np.asarray(train_set.X), np.asarray(train_set.y)),
        data.Dataset(np.asarray(dev_set.X), np.asarray(dev_set.y)),
    )


def with_label(split: data.Dataset, row: int, label: int) -> data.Dataset:
    y = split.y.copy()
    y[row] = label
    return data.Dataset(split.X, y)


def with_value(split: data.Dataset, row: int, column: int, value: float) -> data.Dataset:
    X = split.X.copy()
    X[row, column] = value
    return data.Dataset(X, split.y)


# ------------------------------------------------------------------------------ 1. labels in sweep.run


@pytest.mark.parametrize("label", [5, -1])
@pytest.mark.parametrize("where", ["train", "dev", "test"])
def test_sweep_refuses_labels_a_binary_net_cannot_have(splits, where, label):
    train_set, dev_set = splits
    sets = {"train": train_set, "dev": dev_set, "test": dev_set}
    sets[where] = with_label(sets[where], 3, label)
    compiled = sweep.compile_count()
    # a negative label is refused by the first check of every split, before the nets' output units are known
    expected = r"must be class ids in 0\.\.1 for n_out=1" if label == 5 else r"must be class ids >= 0 \(and <= 2147483647"
    with pytest.raises(ValueError, match=rf"{where}\.y {expected}.*, got values in \["):
        sweep.run(CONFIG, SPACE, sets["train"], sets["dev"], test=sets["test"], key=jax.random.key(0), num_configs=2)
    assert sweep.compile_count() == compiled


def test_fit_and_sweep_share_one_validation(splits):
    """The same bad split gives the same message through fit and through sweep.run."""
    train_set, dev_set = splits
    bad = with_label(train_set, 0, 7)
    messages = []
    for call in (
        lambda: train.fit(CONFIG, train.HParams(), jax.random.key(0), bad, dev_set),
        lambda: sweep.run(CONFIG, SPACE, bad, dev_set, key=jax.random.key(0), num_configs=2),
        lambda: train.check_split("train", bad, CONFIG),
    ):
        with pytest.raises(ValueError) as error:
            call()
        messages.append(str(error.value))
    assert len(set(messages)) == 1, messages


def test_sweep_checks_every_group_against_its_own_output_layer(splits):
    """Three classes are fine for a softmax group and refused for the sigmoid one, naming n_out."""
    train_set, dev_set = splits
    three = with_label(train_set, 0, 2)
    space = {**SPACE, "layer_sizes": sweep.choice([(2, 3, 3), (2, 3, 1)])}
    with pytest.raises(ValueError, match=r"train\.y must be class ids in 0\.\.1 for n_out=1, got values in \[0, 2\]"):
        sweep.run(CONFIG, space, three, dev_set, key=jax.random.key(0), num_configs=8)


# ------------------------------------------------------------------------------ 2. NaN and inf in X


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_fit_refuses_non_finite_inputs_naming_row_and_column(splits, value):
    train_set, dev_set = splits
    with pytest.raises(ValueError, match=r"train\.X has a non-finite value \(.*\) at row 7, column 1"):
        train.fit(CONFIG, train.HParams(), jax.random.key(0), with_value(train_set, 7, 1, value), dev_set)
    with pytest.raises(ValueError, match=r"dev\.X has a non-finite value \(nan\) at row 2, column 0"):
        train.fit(CONFIG, train.HParams(), jax.random.key(0), train_set, with_value(dev_set, 2, 0, np.nan))


@pytest.mark.parametrize("where", ["train", "dev", "test"])
def test_sweep_refuses_non_finite_inputs_before_compiling(splits, where):
    train_set, dev_set = splits
    sets = {"train": train_set, "dev": dev_set, "test": dev_set}
    sets[where] = with_value(sets[where], 4, 1, np.inf)
    compiled = sweep.compile_count()
    with pytest.raises(ValueError, match=rf"{where}\.X has a non-finite value \(inf\) at row 4, column 1"):
        sweep.run(CONFIG, SPACE, sets["train"], sets["dev"], test=sets["test"], key=jax.random.key(0), num_configs=2)
    assert sweep.compile_count() == compiled


def test_a_data_file_with_nan_names_its_first_row_and_column(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,inf,0\n6,nan,1\n")
    with pytest.raises(ValueError, match=r"points\.csv: X has a non-finite value \(inf\) at row 2, column 1"):
        data.load(path)


# ------------------------------------------------------------------------------ 3. CSV header detection


def write_csv(path, rows: np.ndarray, header: str | None) -> None:
    lines = ([header] if header is not None else []) + [",".join(f"{v:g}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("header", [None, "x1,x2,label", "pos_x,pos_y,team"])
def test_a_csv_keeps_every_data_row_with_or_without_a_header(tmp_path, header):
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.normal(size=(200, 2)), np.arange(200) % 2])
    path = tmp_path / "points.csv"
    write_csv(path, rows, header)
    loaded = data.load(path)
    assert loaded.X.shape == (200, 2)
    np.testing.assert_allclose(loaded.X, rows[:, :2].astype(np.float32), rtol=1e-5)
    np.testing.assert_array_equal(loaded.y, rows[:, 2])


def test_a_csv_with_text_below_the_first_row_is_refused_clearly(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match="no header row: the first row is numbers, so it is data"):
        data.load(path)


# ------------------------------------------------------------------------------ 4. labels that are not 0..K-1


@pytest.mark.parametrize(
    "labels, found, mapping",
    [([1, 2], "[1, 2]", "1 -> 0, 2 -> 1"), ([0, 2], "[0, 2]", "0 -> 0, 2 -> 1"), ([0, 1, 3], "[0, 1, 3]", "3 -> 2")],
)
def test_labels_with_a_gap_or_offset_are_refused_with_the_labels_found(tmp_path, labels, found, mapping):
    path = tmp_path / "gappy.csv"
    rows = np.column_stack([np.arange(12.0), np.arange(12.0), np.resize(labels, 12)])
    write_csv(path, rows, "a,b,label")
    with pytest.raises(ValueError, match="with every class present") as error:
        data.load(path)
    assert found in str(error.value) and mapping in str(error.value) and "gappy.csv" in str(error.value)


def test_a_test_file_may_miss_a_class_but_never_add_one(tmp_path):
    path = tmp_path / "test.csv"
    write_csv(path, np.column_stack([np.arange(6.0), np.arange(6.0), np.resize([0, 2], 6)]), "a,b,label")
    loaded = data.load(path, num_classes=3)  # classes 0..2 of the training file; class 1 missing is fine
    np.testing.assert_array_equal(np.unique(loaded.y), [0, 2])
    with pytest.raises(ValueError, match=r"labels must be class ids in 0\.\.1 for the classes of the training data"):
        data.load(path, num_classes=2)


# ------------------------------------------------------------------------------ 9. empty and all-discrete spaces


def test_an_empty_space_is_one_config_and_ids_are_unique(splits, tmp_path):
    train_set, dev_set = splits
    path = tmp_path / "rows.jsonl"
    results = sweep.run(CONFIG, {}, train_set, dev_set, key=jax.random.key(0), num_configs=3, seeds=2, results_path=path)
    rows = sweep.read_rows(path)
    assert len(rows) == len(results.rows) == 2 and len({row["id"] for row in rows}) == 2
    assert results.stats["configs"] == 1 and [row["seed"] for row in rows] == [0, 1]


def test_a_discrete_space_sampled_past_its_size_trains_each_config_once(splits):
    train_set, dev_set = splits
    space = {"learning_rate": sweep.choice([0.01, 0.1])}
    planned = sweep.plan(CONFIG, space, key=jax.random.key(0), num_configs=16, seeds=2)
    ids = [run_.id for run_ in planned]
    assert len(ids) == len(set(ids)) == 4
    assert sorted({run_.hparams["learning_rate"] for run_ in planned}) == [0.01, 0.1]
