import re

import pytest

from ctr.errors import RecipeError
from ctr.recipe import load_recipe, recipe_from_dict
from ctr.recipe.files import apply_override


def test_defaults_and_typed_sections():
    recipe = recipe_from_dict({"model": {"name": "dlrm", "top_mlp": [8]}})
    assert type(recipe.model).__name__ == "DLRMConfig" and recipe.model.top_mlp == [8]
    assert type(recipe.data).__name__ == "SyntheticConfig"
    assert recipe.train.batch_size == 4096


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, r"^trian: unknown key, did you mean train\?"),
        ({"train": {"batch_sise": 3}}, r"^train\.batch_sise: unknown key, did you mean batch_size\? \(allowed: batch_size"),
        ({"train": {"zzz": 3}}, r"^train\.zzz: unknown key \(allowed: batch_size"),
        ({"train": {"batch_size": "abc"}}, r"^train\.batch_size: expected int, got 'abc'"),
        ({"trainer": {"num_threads": "abc"}}, r"^trainer\.num_threads: expected int or 'auto', got 'abc'$"),
        ({"train": {"optimizer": {"lr": "fast"}}}, r"^train\.optimizer\.lr: expected float"),
        ({"model": {"name": "nosuchmodel"}}, r"^model\.name: unknown model 'nosuchmodel'"),
        ({"embedding": {"method": "zip"}}, r"^embedding\.method: unknown embedding method 'zip' \(registered: "),
        ({"embedding": {"method": "hsah"}}, r"^embedding\.method: unknown embedding method 'hsah', did you mean hash\?"),
        ({"model": {"name": "DeepFM"}}, r"^model\.name: unknown model 'DeepFM', did you mean deepfm\?"),
        ({"model": {"name": "deepfm", "bottom_mlp": [8]}},
         r"^model\.bottom_mlp: unknown key for model deepfm \(allowed: "),  # keys of another model's, say
        ({"embedding": {"method": "hash", "block": 4}}, r"^embedding\.block: unknown key for embedding method hash "),
        ({"data": {"dataset": "criteo", "vocab_sizes": [3]}}, r"^data\.vocab_sizes: unknown key for dataset criteo "),
        ({"train": {"BATCH_SIZE": 3}}, r"^train\.BATCH_SIZE: unknown key, did you mean batch_size\?"),
        ({"model": {"name": "dlrm", "top_mlp": [1, "x"]}}, r"^model\.top_mlp\[1\]: expected int"),
        ({"data": {"rows": -1}}, r"^data\.rows: must be a finite number > 0, got -1$"),
        ({"train": {"optimizer": {"name": "adamx"}}}, r"^train\.optimizer\.name: unknown optimizer"),
        ({"data": {"features": [{"name": "a", "kind": "dense"}]}}, r"^data\.features\[0\]\.kind: expected one of"),
        ({"data": {"features": 5}}, r"^data\.features: expected list or mapping, got 5$"),  # not 'or FeatureShorthand'
    ],
)
def test_invalid_recipes_name_the_key(raw, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(raw)


def test_override_parses_yaml_values():
    raw = {"train": {"batch_size": 8}}
    apply_override(raw, "train.batch_size=16")
    apply_override(raw, "model.top_mlp=[4, 2]")
    apply_override(raw, "train.early_stop=null")
    recipe = recipe_from_dict(raw)
    assert recipe.train.batch_size == 16 and recipe.model.top_mlp == [4, 2]
    assert recipe.train.early_stop is None


def test_override_sets_a_key_of_an_empty_section(tmp_path):
    """A section left null (``model:`` with its keys commented out) reads as its defaults, but
    an override of a key in it was refused: ``model: is not a section, cannot set model.name``."""
    path = tmp_path / "recipe.yaml"
    path.write_text("model:\ntrain:\n  early_stop: null\n")
    recipe = load_recipe(path, ["model.name=lr", "train.early_stop.patience=5"])
    assert recipe.model.name == "lr" and recipe.train.early_stop.patience == 5


def test_override_needs_equals():
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_override({}, "train.batch_size")


@pytest.mark.parametrize("item", ["data..rows=5", ".seed=1", "seed.=1", "data.split.=0.5", "data.split.valid.=0.5"])
def test_override_with_an_empty_key_part_names_the_override(item):
    """A stray dot left an empty key: it was set (``data.split.valid: {'': 0.5}``) and the
    error named an empty or half key (``: unknown key``, ``data.: unknown key``)."""
    raw = {"seed": 1, "data": {"split": {"valid": 0.1}}}
    with pytest.raises(RecipeError) as caught:
        apply_override(raw, item)
    assert str(caught.value) == f"override {item!r}: an empty key between dots; expected key.path=value"
    assert raw == {"seed": 1, "data": {"split": {"valid": 0.1}}}


def test_an_override_that_is_not_utf8_is_refused_naming_its_byte():
    """``-o data.path=caf\\xe9.csv`` (a Latin-1 byte, held in ``sys.argv`` as the surrogate
    ``\\udce9``) set a path that pyarrow could not open: a UnicodeEncodeError traceback."""
    raw = {"data": {"path": "rows.csv"}}
    with pytest.raises(RecipeError) as caught:
        apply_override(raw, "data.path=caf\udce9.csv")
    assert str(caught.value) == (
        "override 'data.path=caf\\xe9.csv': its value is not UTF-8 (byte 0xe9); give it in UTF-8")
    assert raw == {"data": {"path": "rows.csv"}}


def test_an_override_whose_key_is_not_utf8_is_told_so():
    """``-o caf\\xe9=1`` was told "give its value in UTF-8": the key holds the byte."""
    with pytest.raises(RecipeError) as caught:
        apply_override({}, "caf\udce9=1")
    assert str(caught.value) == "override 'caf\\xe9=1': its key is not UTF-8 (byte 0xe9); give it in UTF-8"


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_recipe_is_refused_not_read_as_every_default(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"empty\.yaml: an empty recipe; name at least its data or model"):
        load_recipe(path)


def test_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain:\n  batch_size: [1, 2\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_recipe(path)


def test_a_recipe_file_that_is_not_text_is_refused_naming_it(tmp_path):
    """A binary file (or one in another encoding) given as the recipe was a UnicodeDecodeError traceback."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04\xff\xfe binary")
    with pytest.raises(RecipeError, match=r"^.*model\.pt: cannot read recipe: not UTF-8 text \(byte 0xff at offset 4\)$"):
        load_recipe(path)


def test_recipe_round_trips_through_dict():
    recipe = recipe_from_dict({"model": {"name": "lr"}, "train": {"epochs": 2}})
    again = recipe_from_dict(recipe.to_dict())
    assert again == recipe


def test_scientific_floats_without_a_dot_are_floats():
    raw = {}
    apply_override(raw, "train.optimizer.weight_decay=1e-5")  # YAML 1.1 reads this as the string '1e-5'
    apply_override(raw, "train.optimizer.lr=2E-3")
    recipe = recipe_from_dict(raw)
    assert recipe.train.optimizer.weight_decay == 1e-5 and recipe.train.optimizer.lr == 2e-3
    with pytest.raises(RecipeError, match=r"^train\.optimizer\.lr: expected float, got '1e-5x'"):
        recipe_from_dict({"train": {"optimizer": {"lr": "1e-5x"}}})
    with pytest.raises(RecipeError, match=r"^train\.batch_size: expected int"):
        recipe_from_dict({"train": {"batch_size": "1e3"}})


@pytest.mark.parametrize("raw, message", [
    ({"trainer": {"precision": "foo"}}, r"^trainer\.precision: 'foo': use 32-true, bf16-mixed, 16-mixed"),
    ({"trainer": {"precision": "bf16-true"}}, r"^trainer\.precision: 'bf16-true'"),  # it crashed at the first validation
    ({"trainer": {"precision": "16-mixed"}, "train": {"grad_clip": 1.0}},
     r"^trainer\.precision: 16-mixed would clip loss-scaled gradients"),
    ({"trainer": {"precision": "16-mixed"}, "train": {"embedding_optimizer": {"fused": True}}},
     r"^trainer\.precision: 16-mixed scales the gradients that the fused table update applies"),
    ({"trainer": {"precision": "16-mixed"}, "embedding": {"method": "alpt"}},
     r"^trainer\.precision: 16-mixed scales the gradients that alpt applies to its rows in the backward"),
    ({"embedding": {"method": "dnis", "budget": 0.5, "arch_optimizer": {"name": "sparse_adam"}}},
     r"^embedding\.arch_optimizer\.name: sparse_adam steps sparse gradients only"),  # a crash at step 1
    ({"embedding": {"method": "dnis", "budget": 0.5, "arch_optimizer": {"name": "rowwise_adagrad", "weight_decay": 1}}},
     r"^embedding\.arch_optimizer\.weight_decay: rowwise_adagrad applies no weight decay"),  # ignored
    ({"embedding": {"method": "optembed", "arch_optimizer": {"name": "adma", "weight_decay": 1}}},
     r"^embedding\.arch_optimizer\.name: unknown optimizer 'adma', did you mean adam\?"),  # found as a stage began
])
def test_a_precision_ctr_would_train_wrongly_is_refused_before_any_work(raw, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(raw)
    assert recipe_from_dict({"trainer": {"precision": "bf16-mixed"}, "train": {"grad_clip": 1.0}})


@pytest.mark.parametrize("key, value", [("train.optimizer.weight_decay", ".nan"), ("train.optimizer.lr", ".inf"),
                                        ("train.early_stop.min_delta", ".nan")])
def test_a_float_setting_takes_finite_numbers_only(key, value):
    """nan passed every ``x < 0`` check (a torch traceback later), inf trained to a divergence."""
    raw = {}
    apply_override(raw, f"{key}={value}")
    with pytest.raises(RecipeError, match=rf"^{key.replace('.', chr(92) + '.')}: expected a finite number, got "):
        recipe_from_dict(raw)


@pytest.mark.parametrize("section, value", [("model", []), ("data", False), ("embedding", ""), ("model", 0)])
def test_a_section_that_is_not_a_mapping_is_refused_not_read_as_its_defaults(section, value):
    """``data: false`` trained on the default synthetic data, ``model: []`` the default DLRM."""
    with pytest.raises(RecipeError, match=rf"^{section}: expected a mapping, got {re.escape(repr(value))}$"):
        recipe_from_dict({section: value})
    assert recipe_from_dict({section: None})  # null (an empty section) is the defaults


@pytest.mark.parametrize("raw, message", [
    ({"seed": -1}, r"^seed: must be in \[0, 4294967295\] \(numpy's seeds\), got -1$"),
    ({"seed": 2**32}, r"^seed: must be in \[0, 4294967295\]"),
    ({"data": {"split": {"seed": -5}}}, r"^data\.split\.seed: must be >= 0, got -5$"),
    ({"data": {"shuffle_buffer": 0}}, r"^data\.shuffle_buffer: must be >= 1 \(rows\), got 0$"),
    ({"data": {"features": []}}, r"^data\.features: \[\] lists no feature; list the features to train, or leave data\.features out"),
    ({"data": {"prefetch": -1}}, r"^data\.prefetch: must be >= 0 \(0: batches built inline\), got -1$"),
    ({"embedding": {"init_std": -1}}, r"^embedding\.init_std: must be >= 0, got -1\.0$"),
    ({"embedding": {"dense_max_mb": -1}}, r"^embedding\.dense_max_mb: must be >= 0, got -1\.0$"),
    ({"train": {"eval_batch_size": 0}}, r"^train\.eval_batch_size: must be >= 1, got 0$"),
    ({"train": {"early_stop": {"patience": 0}}},
     r"^train\.early_stop\.patience: must be >= 1, got 0 "
     r"\(0 stops at the first validation without a gain, as 1 does\)$"),
    ({"train": {"early_stop": {"patience": -1}}}, r"^train\.early_stop\.patience: must be >= 1, got -1$"),
    ({"trainer": {"num_nodes": 0}}, r"^trainer\.num_nodes: must be >= 1, got 0$"),
    ({"model": {"name": "autoint", "heads": 0}}, r"^model\.heads: must be >= 1, got 0$"),
    ({"model": {"name": "dcnv2", "low_rank": 0}}, r"^model\.low_rank: must be >= 1, got 0$"),
    ({"model": {"name": "dcn", "cross_layers": 0}}, r"^model\.cross_layers: must be >= 1, got 0$"),
    ({"embedding": {"method": "ttrec", "budget": 0.5, "max_rank": 0}}, r"^embedding\.max_rank: must be >= 1, got 0$"),
    ({"embedding": {"method": "dhe", "budget": 0.5, "buckets": 1}}, r"^embedding\.buckets: must be >= 2, got 1$"),
    ({"embedding": {"method": "adaptemb", "budget": 0.5, "frequent_budget_share": 1.5}},
     r"^embedding\.frequent_budget_share: must be in \[0, 1\), got 1\.5$"),
    ({"embedding": {"method": "mgqe", "budget": 0.5, "commitment": -1}}, r"^embedding\.commitment: must be >= 0, got -1\.0$"),
    ({"embedding": {"method": "dnis", "budget": 0.5, "alpha_l1": -1}}, r"^embedding\.alpha_l1: must be >= 0, got -1\.0$"),
    ({"embedding": {"method": "autodim", "budget": 0.5, "temperature_decay": -1}},
     r"^embedding\.temperature_decay: must be >= 0, got -1\.0$"),
    ({"embedding": {"method": "optembed", "budget": 0.5, "mutations": -1}}, r"^embedding\.mutations: must be >= 0, got -1$"),
])
def test_a_value_out_of_range_is_refused_when_read_not_by_a_traceback_later(raw, message):
    """Each trained into a traceback (numpy's seed bounds, torch's normal_, the loader's
    check), or, for ``prefetch: -1``, built batches ahead without a bound (a queue of maxsize -1)."""
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(raw)
    assert recipe_from_dict({"seed": 0, "data": {"prefetch": 0, "split": {"seed": 0}}, "embedding": {"init_std": 0}})


def test_a_path_given_to_a_dataset_that_generates_its_rows_is_refused():
    """``data: {path: rows.csv}`` without a ``dataset`` (synthetic, the default) trained on
    generated rows, the file never read."""
    with pytest.raises(RecipeError, match=r"^data\.path: the synthetic dataset generates its rows and reads no file; "
                                          r"name the dataset that reads 'rows\.csv' in data\.dataset \(csv, parquet, "
                                          r"criteo, \.\.\.\)$"):
        recipe_from_dict({"data": {"path": "rows.csv"}})


def test_split_fractions_given_to_a_dataset_that_splits_its_rows_itself_are_refused():
    """``amazon`` puts each user's last item in test and the one before in validation: a
    ``data.split`` fraction was silently unused. Its seed (the quantile sample's) and
    movielens's fractions (its random split) are taken."""
    with pytest.raises(RecipeError, match=r"^data\.split: the amazon dataset splits its rows itself and reads neither "
                                          r"data\.split\.valid nor data\.split\.test; leave them out$"):
        recipe_from_dict({"data": {"dataset": "amazon", "path": "am", "split": {"valid": 0.2}}})
    assert recipe_from_dict({"data": {"dataset": "amazon", "path": "am", "split": {"seed": 7}}})
    assert recipe_from_dict({"data": {"dataset": "movielens", "path": "ml", "split": {"valid": 0.2, "test": 0.05}}})


@pytest.mark.parametrize("model, message", [
    ({"name": "dlrm", "top_mlp": [16, -1]}, r"^model\.top_mlp: layer widths must be >= 1, got \[16, -1\]$"),
    ({"name": "dlrm", "bottom_mlp": [0]}, r"^model\.bottom_mlp: layer widths must be >= 1, got \[0\]$"),
    ({"name": "dcn", "hidden": [0]}, r"^model\.hidden: layer widths must be >= 1, got \[0\]$"),
    ({"name": "autoint_plus", "hidden": [-1]}, r"^model\.hidden: layer widths must be >= 1, got \[-1\]$"),
    ({"name": "din", "attention_hidden": [0]}, r"^model\.attention_hidden: layer widths must be >= 1, got \[0\]$"),
    ({"name": "deepfm", "dropout": -0.5}, r"^model\.dropout: must be in \[0, 1\), got -0\.5$"),
    ({"name": "wdl", "dropout": 1}, r"^model\.dropout: must be in \[0, 1\), got 1\.0$"),
    ({"name": "autoint_plus", "dropout": 2}, r"^model\.dropout: must be in \[0, 1\), got 2\.0$"),
    ({"name": "dcnv2", "dropout": 1.5}, r"^model\.dropout: must be in \[0, 1\), got 1\.5$"),
])
def test_a_layer_width_below_1_or_a_dropout_outside_0_1_is_refused_when_read(model, message):
    """Each was a torch traceback once the model was built (a negative width, a dropout
    above 1 or below 0), or a layer of no units (width 0: DCN's IndexError, elsewhere a logit
    that reads nothing; dropout 1: a layer that outputs zeros)."""
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"model": model})
    key = next(k for k in model if k != "name")
    assert recipe_from_dict({"model": {"name": model["name"], key: 0.0 if key == "dropout" else []}})


@pytest.mark.parametrize("text, where", [
    ("name: x\ntrain:\n  batch_size: 256\nmodel: {name: lr}\ntrain:\n  epochs: 1\n", r"dup\.yaml:5: duplicate key 'train' \(first at line 2\)"),
    ("train:\n  batch_size: 256\n  epochs: 2\n  batch_size: 512\n", r"dup\.yaml:4: duplicate key 'batch_size' \(first at line 2\)"),
    ("model: {name: lr, name: dlrm}\n", r"dup\.yaml:1: duplicate key 'name' \(first at line 1\)"),
])
def test_a_key_given_twice_in_a_recipe_file_is_refused_naming_its_line(tmp_path, text, where):
    """YAML kept the last of the two silently: a second ``train:`` section dropped the first's
    batch_size, which trained at the default 4096."""
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=rf"{where}$"):
        load_recipe(path)


def test_a_backend_for_a_method_that_does_not_read_it_is_refused_naming_the_key():
    """pep, robe, dhe, ... look their rows up themselves: ``embedding.backend: triton`` on one
    was accepted and ignored, and its run read as a Triton benchmark."""
    with pytest.raises(RecipeError, match=r"^embedding\.backend: method 'pep' does its own lookups and does not read "
                                          r"the kernel backend \(leave it out\)$"):
        recipe_from_dict({"embedding": {"method": "pep", "budget": 0.5, "backend": "torch"}})
    for method, budget in (("full", None), ("hash", 0.5), ("unified", 0.5)):
        embedding = {"method": method, "budget": budget, "backend": "torch"}
        assert recipe_from_dict({"embedding": embedding}).embedding.backend == "torch"


def test_the_environments_backend_is_taken_for_every_method(monkeypatch):
    """``$CTR_KERNEL_BACKEND`` is the machine's preference, not the recipe's: a method that
    does not read it is not refused for it."""
    monkeypatch.setenv("CTR_KERNEL_BACKEND", "triton")
    assert recipe_from_dict({"embedding": {"method": "pep", "budget": 0.5}}).embedding.backend is None
