import numpy as np
import pyarrow as pa
import pytest
import yaml

from ctr.datasets.synthetic import PlantedModel, SyntheticConfig, SyntheticDataset
from tests.conftest import tiny_recipe


def rows(**options):
    config = SyntheticConfig(rows=3000, chunk_rows=1000, vocab_scale=0.01, **options)
    return pa.Table.from_batches(list(SyntheticDataset(config).streams()["all"]()))


def test_same_seed_same_rows_other_seed_other_rows():
    a, b, c = rows(seed=1), rows(seed=1), rows(seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_criteo_schema_and_missing_values():
    table = rows()
    assert table.column_names == ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    missing = table.column("I1").null_count / table.num_rows
    assert 0.05 < missing < 0.15


def test_ids_are_heavy_tailed():
    table = rows()
    ids = table.column("C3").to_numpy()
    counts = np.sort(np.bincount(ids))[::-1]
    top = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top > 0.1  # the top 1% of ids carry far more than 1% of the rows


def test_positive_rate_is_calibrated():
    table = rows(positive_rate=0.3)
    assert abs(table.column("label").to_numpy().mean() - 0.3) < 0.04


def test_no_interacting_pairs_is_a_first_order_dataset_of_the_positive_rate():
    """``interacting_pairs: 0`` divided an empty pairwise sum by 0: every logit was nan and
    every label 0 (the run then refused its all-non-click validation split)."""
    table = rows(interacting_pairs=0, positive_rate=0.3)
    assert abs(table.column("label").to_numpy().mean() - 0.3) < 0.04


def test_planted_interactions_beat_first_order_terms():
    from ctr.metrics import auc

    model = PlantedModel(SyntheticConfig(vocab_scale=0.01))
    rng = np.random.default_rng(0)
    ids, counts = model.features(rng, 20000)
    terms = model.logit_terms(ids, counts)
    logits = model.bias + sum(terms.values())
    labels = rng.random(20000) < 1 / (1 + np.exp(-logits))
    first_order = auc(labels, terms["linear"] + terms["numeric"])
    assert auc(labels, logits) > first_order + 0.05


def test_pairwise_term_has_no_first_order_part():
    model = PlantedModel(SyntheticConfig(vocab_scale=0.01))
    ids, counts = model.features(np.random.default_rng(1), 200_000)
    pairwise = model.logit_terms(ids, counts)["pairwise"]
    column = model.pairs[0][0]
    head = np.bincount(ids[:, column]).argmax()  # the most frequent id of an interacting column
    conditional_mean = pairwise[ids[:, column] == head].mean()
    assert abs(conditional_mean) < 0.1 * pairwise.std()


@pytest.mark.parametrize("override, message", [
    ("data.vocab_scale=.nan", "data.vocab_scale: expected a finite number, got nan"),
    ("data.seed=-1", "data.seed: must be >= 0, got -1"),
    ("data.interacting_pairs=-1", "data.interacting_pairs: must be >= 0, got -1"),
    ("data.positive_rate=1.5", "data.positive_rate: must be in (0, 1), got 1.5"),
    ("data.missing_rate=2", "data.missing_rate: must be in [0, 1], got 2.0"),
    ("data.latent_dim=0", "data.latent_dim: must be a finite number > 0, got 0"),
    ("data.pairwise_scale=-1", "data.pairwise_scale: must be a finite number >= 0, got -1.0"),
])
def test_a_bad_generator_setting_is_one_line_naming_it(tmp_path, capsys, override, message):
    """Tracebacks from numpy (a NaN scale, a negative seed) or a silently odd dataset (a
    positive rate of 1.5) before."""
    from ctr.cli import main

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["data", "prepare", str(tmp_path / "r.yaml"), "-o", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ctr: error: {message}", err
    assert main(["data", "synth", str(tmp_path / "s.tsv"), "--rows", "10", "--seed", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "ctr: error: --seed: must be >= 0, got -1"


def test_a_latent_dim_past_memory_is_named_not_vocab_scale():
    """data.latent_dim: 1e9 on tiny vocabularies said "lower vocab_scale", a value that was not at fault."""
    from ctr.errors import UserError

    with pytest.raises(UserError, match=r"^data\.latent_dim: 1000000000 over .*; lower it$"):
        PlantedModel(SyntheticConfig(vocab_scale=0.001, latent_dim=1_000_000_000))


def test_vocabularies_past_memory_name_the_recipe_key(tmp_path, capsys):
    """From a recipe the refusal names data.vocab_scale (it said 'synthetic data: vocab_scale',
    the words of neither the recipe nor ``ctr data synth``'s --vocab-scale)."""
    from ctr.cli import main

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "-o", "data.vocab_scale=1e12"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctr: error: data.vocab_scale: 1e+12 gives ") and err.endswith("GiB; lower it"), err


@pytest.mark.parametrize("overrides, message", [
    (["data.vocab_scale=1000000"], "data.vocab_scale: 1e+06 gives column C3 1e+11 ids, past"),
    (["data.vocab_scale=1", f"data.vocab_sizes=[3000000000{',2' * 25}]"], "data.vocab_sizes: column C1's 3e+09 ids are past"),
])
def test_integer_ids_past_int32_are_one_line_naming_the_size(tmp_path, capsys, overrides, message):
    """With integer_ids each column's vocabulary is a feature's num_ids: one past int32's ids
    was the traceback of FeatureSpec's ValueError from default_features()."""
    from ctr.cli import main

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, data={"integer_ids": True})))
    assert main(["data", "prepare", str(tmp_path / "r.yaml"), *[a for o in overrides for a in ("-o", o)]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ctr: error: {message} the 2147483646 ids of int32 with integer_ids"), err
    assert "\n" not in err and not (tmp_path / "cache").exists()


# What the generator draws, per generator_version (the cache key holds the version, not the rows):
# a change of these rows needs a new version, or runs read the entries the earlier one wrote.
DRAWN = {5: "6d0427423aa53910"}


def test_the_rows_a_generator_version_draws_are_its_own():
    """Fixing ``interacting_pairs: 0`` (every label 0) changed the rows but kept version 4, so
    runs read their all-zero cache entries again."""
    import hashlib

    digest = hashlib.sha256()
    for pairs in (0, 12):
        table = rows(interacting_pairs=pairs)
        for name in ["label"] + [f"C{i}" for i in range(1, 27)]:
            digest.update(table.column(name).to_numpy().astype(np.int64).tobytes())
    assert DRAWN.get(SyntheticDataset.generator_version) == digest.hexdigest()[:16]
