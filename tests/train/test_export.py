"""``ctr export``: the program of every model and every embedding method in ``ctr models``,
loaded in a fresh process that never imports ctr, scores like ctr does (1e-5), at any batch
size down to 1, and a batch whose bags are all empty; it refuses an id outside its feature's
vocabulary, a bag of more ids than ctr's encoder makes, and (DIN) behaviour sequences of other
lengths in a row."""

import io
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctr.batch import Batch, JaggedFeatures
from ctr.cli import main
from ctr.datasets import prepare
from ctr.datasets.loader import BatchLoader
from ctr.datasets.saved import load_schema
from ctr.recipe import load_recipe, recipe_from_dict
from ctr.registry import EMBEDDINGS, MODELS
from ctr.train import runner
from ctr.train.export import export_program
from ctr.train.rundir import RunDir
from ctr.train.runner import train
from ctr.train.saved import best_checkpoint, restored_task
from ctr.train.net import probabilities
from ctr.train.task import CTRTask
from tests.conftest import tiny_recipe
from tests.embeddings.test_compression_methods import SMOKE
from tests.train.test_amazon_recipes import RECIPES, write_tiny_amazon

pytestmark = pytest.mark.slow  # one short training run per model and per embedding method

# checks each (model.pt2, inputs.npz) pair of its arguments, one process for them all; names
# the program of each pair that fails
FRESH = """
import json
import logging
import sys
import traceback
import numpy as np
import torch
torch.set_grad_enabled(False)
logged = []  # torch's warnings while it reads a program ("Symbol u0 did not appear in the graph ...")
reader_log = logging.Handler(logging.WARNING)
reader_log.emit = lambda record: logged.append(record.getMessage())
logging.getLogger("torch._export.serde.serialize").addHandler(reader_log)


def check(model, inputs):
    logged.clear()
    program = torch.export.load(model).module()
    assert not logged, logged
    saved = np.load(inputs)
    args = [torch.from_numpy(saved[k]) for k in ("dense", "values", "offsets")]
    scores = program(*args)
    assert np.abs(scores.numpy() - saved["expected"]).max() < 1e-5, np.abs(scores.numpy() - saved["expected"]).max()
    one = program(args[0][:1], torch.from_numpy(saved["first_values"]), torch.from_numpy(saved["first_offsets"]))
    assert abs(float(one[0]) - float(saved["expected"][0])) < 1e-5
    empty = program(args[0][:2], torch.from_numpy(saved["empty_values"]), torch.from_numpy(saved["empty_offsets"]))
    assert np.abs(empty.numpy() - saved["expected_empty"]).max() < 1e-5  # every bag empty: no id at all
    sparse = json.load(open(model + ".schema/inputs.json"))["sparse"]
    batch = (len(args[2]) - 1) // len(sparse)
    feature = next(f for f in range(len(sparse)) if args[2][(f + 1) * batch] > 0)  # the feature of values[0]
    for bad in (sparse[feature]["vocab_size"], -1):
        values = args[1].clone()
        values[0] = bad
        try:
            program(args[0], values, args[2])
            raise SystemExit(f"id {bad} of {sparse[feature]['name']} was scored")
        except RuntimeError as error:
            assert "outside its feature's vocabulary" in str(error), error
    first = np.split(saved["first_values"], saved["first_offsets"][1:-1])  # row 0's bags, feature by feature
    for f, spec in enumerate(sparse):
        width = spec["max_len"]  # a categorical's is 1
        assert spec["kind"] == "sequence" or width == 1, spec
        for count in (width, width + 1):  # as many ids as ctr's encoder puts in a bag, and one more
            # the other sequences of its max_len hold max_len ids: DIN refuses behaviours of other lengths in a row
            bags = [np.ones(count if g == f else width, dtype=np.int64)
                    if g == f or (other["kind"] == "sequence" and other["max_len"] == width) else bag
                    for g, (other, bag) in enumerate(zip(sparse, first))]
            offsets = torch.tensor(np.cumsum([0] + [len(bag) for bag in bags]))
            try:
                program(args[0][:1], torch.from_numpy(np.concatenate(bags)), offsets)
                assert count == width, f"a bag of {count} ids of {spec['name']} was scored"
            except RuntimeError as error:
                assert count > width and f"feature {spec['name']!r}: a bag holds more than" in str(error), error

failed = []
for model, inputs in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        check(model, inputs)
    except (Exception, SystemExit):
        failed.append(f"{model}: {traceback.format_exc()}")
assert not failed, "\\n".join(failed)
assert not any(name == "ctr" or name.startswith("ctr.") for name in sys.modules), "ctr was imported"
print("ok")
"""


# 6 of the synthetic data's 26 categoricals (tables of 660 rows in all) and 2
# numerics: a program's graph, its load in the fresh process and its checks (two a feature)
# grow with the features, and no check depends on their number
FEATURES = [*({"name": f"C{i}"} for i in (3, 4, 6, 9, 10, 12)), *({"name": f"I{i}", "kind": "numeric"} for i in (1, 2))]


def few_features_recipe(tmp: Path, **sections) -> dict:
    """``tiny_recipe`` over ``FEATURES``."""
    raw = tiny_recipe(tmp, **sections)
    raw["data"]["features"] = FEATURES
    return raw


def model_recipe(name: str, tmp: Path):
    if name == "din":
        history = write_tiny_amazon(tmp)
        return load_recipe(RECIPES.parent / "amazon_beauty" / "din.yaml", [
            f"data.path={history}", f"data.cache_dir={tmp / 'cache'}", "train.max_steps=3",
            "train.batch_size=256", "trainer.progress_bar=false"])
    raw = few_features_recipe(tmp, train={"max_steps": 3})
    raw["model"] = {"name": name}
    return recipe_from_dict(raw)


def first_row(values: torch.Tensor, offsets: torch.Tensor, features: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Row 0 of a batch as a batch of one: its values and offsets [F + 1] (its bags, feature by feature)."""
    bags = [values[offsets[f * batch] : offsets[f * batch + 1]] for f in range(features)]
    lengths = torch.tensor([0] + [bag.numel() for bag in bags])
    return torch.cat(bags).numpy(), torch.cumsum(lengths, 0).numpy()


# read as the module is collected: the registries' entries then, before any test registers its own
MODEL_NAMES = [entry.name for entry in MODELS.entries()]
METHOD_NAMES = [entry.name for entry in EMBEDDINGS.entries()]


def method_recipe(name: str, tmp: Path, **options):
    """DLRM over embedding method ``name`` (every stage of a multi-stage method, 3 steps a
    training stage); ``options`` override its embedding settings."""
    from tests.train.test_stages import DNIS, OPTEMBED

    embedding = {"optembed": OPTEMBED, "dnis": DNIS}.get(name, {"method": name, "dim": 8, **SMOKE.get(name, {})})
    if name in ("hash", "unified"):
        embedding = {**embedding, "budget": 0.3}
    return recipe_from_dict(few_features_recipe(tmp, train={"max_steps": 3}, embedding={**embedding, **options}))


@pytest.fixture
def no_curves(monkeypatch):
    """Runs that draw no curves.png (a second a run on a busy machine; export never reads it)."""
    monkeypatch.setattr(runner, "plot_curves", lambda log_csv, out: None)


def test_every_model_and_embedding_method_exports_and_scores_like_ctr_without_ctr(tmp_path, no_curves):
    """Every model in ``ctr models`` and every method in ``ctr embeddings`` (a folder each, one
    dataset cache for the synthetic ones), their programs checked in one fresh process (its
    start and first load cost more than a program's checks). The methods' ``full`` is DLRM
    over full tables, as the models' ``dlrm``: exported once."""
    methods = [name for name in METHOD_NAMES if name != "full"]
    for name in [*MODEL_NAMES, *methods]:
        (tmp_path / name).mkdir()
    exports = [exported(model_recipe(name, tmp_path / name if name == "din" else tmp_path), tmp_path / name)
               for name in MODEL_NAMES]
    exports += [exported(method_recipe(name, tmp_path), tmp_path / name) for name in methods]
    scores_like_ctr_without_ctr(exports, tmp_path)
    refuses_behaviours_of_other_lengths(tmp_path / "din" / "model.pt2")


def refuses_behaviours_of_other_lengths(model: Path) -> None:
    """DIN's program refuses a row whose behaviour sequences (hist_item_id, hist_cat_id) differ
    in length: it paired one position's item with another position's category, silently."""
    program = torch.export.load(model).module()
    lengths = {"hist_item_id": 2, "hist_cat_id": 1}
    inputs = json.loads(model.with_name(model.name + ".schema").joinpath("inputs.json").read_text())
    keys = [spec["name"] for spec in inputs["sparse"]]
    sparse = JaggedFeatures.from_lengths(keys, torch.ones(len(keys) + 1, dtype=torch.int64),
                                         torch.tensor([lengths.get(key, 1) for key in keys]))
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"^model\.sequence_fields: DIN reads \['hist_item_id', "
                                                            r"'hist_cat_id'\] position by position, and a row's "
                                                            r"sequences differ in length; "):
        program(torch.zeros(1, len(inputs["dense"])), sparse.values, sparse.offsets)


PRUNED = ("deeplight", "pep", "dnis", "autosrh", "optembed")  # each stores its kept entries as SparseRows


def test_a_pruned_table_stored_as_csr_exports_and_scores_like_ctr_without_ctr(tmp_path, no_curves):
    """A pruned table stored as CSR (dim 64 at budget 0.05: CSR keeps more entries than the
    bitmap) did not export: its lookup sized the kept entries by a count read from the ids
    ("Could not extract specialized integer from data-dependent expression"). Each method's
    checkpoint holds CSR's columns; each program (one fresh process) scores like ctr and loads
    without torch's warning."""
    exports = []
    for name in PRUNED:
        (tmp_path / name).mkdir()
        exports.append(exported(method_recipe(name, tmp_path, dim=64, budget=0.05), tmp_path / name))
        state = torch.load(best_checkpoint(RunDir(tmp_path / name / "run")), weights_only=False)["state_dict"]
        assert any(key.endswith("sparse.columns") for key in state), name
    scores_like_ctr_without_ctr(exports, tmp_path)


def sequence_recipe(tmp: Path, pooling: str):
    """DLRM over a categorical ``a`` and a sequence ``tags`` (max_len 3, ``pooling``) read
    from a CSV of 800 rows in ``tmp``."""
    rng = np.random.default_rng(4)
    tags = ["^".join(f"t{v}" for v in rng.integers(0, 9, rng.integers(0, 6))) for _ in range(800)]
    frame = pd.DataFrame({"label": rng.integers(0, 2, 800), "a": [f"a{v}" for v in rng.integers(0, 5, 800)],
                          "tags": tags})
    frame.to_csv(tmp / "rows.csv", index=False)
    features = [{"name": "a"}, {"name": "tags", "kind": "sequence", "max_len": 3, "pooling": pooling}]
    raw = tiny_recipe(tmp, train={"max_steps": 3})
    raw["data"] = {"dataset": "csv", "path": str(tmp / "rows.csv"), "label": "label", "features": features,
                   "cache_dir": str(tmp / "cache")}
    return recipe_from_dict(raw)


def test_a_pooled_sequence_exports_and_scores_like_ctr_without_ctr(tmp_path):
    """A sequence (max_len 3) pooled by sum, and one by mean, beside a categorical: each
    program (a folder each, checked in one fresh process) scores like ctr, and refuses a bag of
    4 items (it pooled its first 3) or a categorical's bag of 2 ids (summed)."""
    for pooling in ("sum", "mean"):
        (tmp_path / pooling).mkdir()
    scores_like_ctr_without_ctr([exported(sequence_recipe(tmp_path / pooling, pooling), tmp_path / pooling)
                                 for pooling in ("sum", "mean")], tmp_path)


@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_exporting_sequences_warns_of_nothing(pooling, tmp_path):
    """A sequence's lookups, one id a bag, kept their offsets in an attribute: torch.export
    warned that a tensor attribute was assigned during export."""
    recipe = sequence_recipe(tmp_path, pooling)
    schema = prepare(recipe.data, progress=False).schema
    net = CTRTask(recipe, schema).net
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_program(net, schema)
    assert [str(warning.message) for warning in caught] == []


@pytest.fixture(scope="module")
def methods_dir(tmp_path_factory) -> Path:
    """One folder (one dataset cache) for the methods' untrained nets."""
    return tmp_path_factory.mktemp("methods")


@pytest.mark.parametrize("method", [name for name in METHOD_NAMES if name != "autodim"])
def test_a_program_loads_without_a_warning_of_torch(method, methods_dir, caplog):
    """Loading the program of int8, ttrec, unified and every method pooling ``embed_ids`` by
    default printed torch's 'Symbol u0 did not appear in the graph that was deserialized': the
    pooling sized its bag index by the bags' lengths, an unbacked size the program's ranges kept.
    Each method's untrained net (autodim's, before its search, does not export: its trained
    one is read by the fresh process of the test of every method)."""
    recipe = method_recipe(method, methods_dir)
    schema = prepare(recipe.data, progress=False).schema
    saved = io.BytesIO()
    torch.export.save(export_program(CTRTask(recipe, schema).net, schema), saved)
    reader = logging.getLogger("torch._export.serde.serialize")  # its records stop at torch's own handler
    reader.addHandler(caplog.handler)
    try:
        torch.export.load(io.BytesIO(saved.getvalue()))
    finally:
        reader.removeHandler(caplog.handler)
    assert [record.getMessage() for record in caplog.records if record.name == reader.name] == []


def test_a_dhe_program_sizes_nothing_by_the_ids(methods_dir, caplog):
    """dhe decoded each distinct id once while tracing too: torch.unique's count, a size read
    from the ids (an unbacked symbol u0, from 0 to 2^63), sized every layer of the decoder in
    the program. Exporting, it decodes every id (the decoder is row-wise in evaluation): no
    size but the batch's and the ids'. The program loads without torch's warning and scores a
    batch as the net does."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    recipe = method_recipe("dhe", methods_dir)
    schema = prepare(recipe.data, progress=False).schema
    net = CTRTask(recipe, schema).net.eval()
    program = export_program(net, schema)
    unbacked = {str(symbol) for node in program.graph.nodes for symbol in free_unbacked_symbols(node.meta.get("val"))}
    assert unbacked == set() and not any(free_unbacked_symbols(expr) for expr in program.range_constraints)
    saved = io.BytesIO()
    torch.export.save(program, saved)
    reader = logging.getLogger("torch._export.serde.serialize")
    reader.addHandler(caplog.handler)
    try:
        loaded = torch.export.load(io.BytesIO(saved.getvalue())).module()
    finally:
        reader.removeHandler(caplog.handler)
    assert [record.getMessage() for record in caplog.records if record.name == reader.name] == []
    batch = next(iter(BatchLoader(next(Path(recipe.data.cache_dir, "data").glob("*/test")), schema, 64, prefetch=0)))
    with torch.no_grad():
        expected = probabilities(net(batch)[0]).float()
        scores = loaded(batch.dense, batch.sparse.values, batch.sparse.offsets)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_a_short_sequence_beside_a_larger_vocabulary_is_scored(padding, tmp_path):
    """A sequence's masked slots read padding: they read the ids of the bags beside its own
    (here ``a``'s, past the sequence's table), and the program's lookup failed on them."""
    rng = np.random.default_rng(5)
    tags = ["^".join(f"t{v}" for v in rng.integers(0, 3, rng.integers(0, 4))) for _ in range(300)]
    frame = pd.DataFrame({"label": rng.integers(0, 2, 300), "a": [f"a{v}" for v in range(300)], "tags": tags})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    features = [{"name": "a"}, {"name": "tags", "kind": "sequence", "max_len": 3, "pooling": "sum", "padding": padding},
                {"name": "b", "source": "a", "share_with": "a"}]
    raw = tiny_recipe(tmp_path)
    raw["data"] = {"dataset": "csv", "path": str(tmp_path / "rows.csv"), "label": "label", "features": features,
                   "cache_dir": str(tmp_path / "cache")}
    schema = prepare(recipe_from_dict(raw).data, progress=False).schema
    net = CTRTask(recipe_from_dict(raw), schema).net.eval()
    program = export_program(net, schema).module()
    keys = [info.spec.name for info in schema.sparse_features]
    last = schema.sparse_features[0].vocab_size - 1  # a's (and b's) last id: past tags' table, the last one
    sparse = JaggedFeatures(keys, torch.tensor([last, 2, last]), torch.tensor([0, 1, 2, 3]))
    dense = torch.zeros(1, len(schema.dense_features))
    with torch.no_grad():
        expected = probabilities(net(Batch(dense, sparse, torch.zeros(1)))[0]).float()
        assert torch.allclose(program(dense, sparse.values, sparse.offsets), expected, atol=1e-6)


def exported(recipe, folder: Path) -> tuple[Path, Path]:
    """Trains ``recipe`` in ``folder``, exports it, and saves a test batch (its first row
    alone, two rows of empty bags) with ctr's scores of them: the program and that batch."""
    run, model = folder / "run", folder / "model.pt2"
    train(recipe, run)
    assert main(["export", str(run), "--out", str(model)]) == 0
    assert (folder / "model.pt2.schema" / "inputs.json").exists()

    schema = load_schema(run / "schema")
    task = restored_task(RunDir(run), recipe, schema, best_checkpoint(RunDir(run)))
    keys = [info.spec.name for info in schema.sparse_features]
    batch = next(iter(BatchLoader(next(Path(recipe.data.cache_dir, "data").glob("*/test")), schema, 64, prefetch=0)))
    first_values, first_offsets = first_row(batch.sparse.values, batch.sparse.offsets, len(keys), batch.size)
    empty_values, empty_offsets = torch.zeros(0, dtype=torch.int64), torch.zeros(len(keys) * 2 + 1, dtype=torch.int64)
    empty = Batch(batch.dense[:2], JaggedFeatures(keys, empty_values, empty_offsets), torch.zeros(2))
    with torch.no_grad():  # as ctr predict scores a batch, not through the exported wrapper
        expected, expected_empty = (probabilities(task.net.eval()(rows)[0]).float() for rows in (batch, empty))
    np.savez(folder / "inputs.npz", dense=batch.dense.numpy(), values=batch.sparse.values.numpy(),
             offsets=batch.sparse.offsets.numpy(), expected=expected.numpy(), first_values=first_values,
             first_offsets=first_offsets, empty_values=empty_values.numpy(), empty_offsets=empty_offsets.numpy(),
             expected_empty=expected_empty.numpy())
    return model, folder / "inputs.npz"


def scores_like_ctr_without_ctr(exports: list[tuple[Path, Path]], tmp_path: Path) -> None:
    """Each exported program scores its saved batch (and the batch's first row alone) in one
    fresh process without ctr: as ctr scores it, to 1e-5."""
    pairs = [str(path) for pair in exports for path in pair]
    result = subprocess.run([sys.executable, "-c", FRESH, *pairs], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-6000:]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A tiny synthetic run of 2 steps (the tests only export it)."""
    tmp = tmp_path_factory.mktemp("short")
    train(recipe_from_dict(tiny_recipe(tmp, train={"max_steps": 2})), tmp / "run")
    return tmp / "run"


def test_an_export_stopped_part_way_never_leaves_a_program_beside_another_runs_schema(short_run, tmp_path,
                                                                                      monkeypatch):
    """Re-exporting over an earlier export: stopped as the new schema is put in place, the
    earlier program is gone (an incomplete export), not left beside the new schema."""
    import os

    run = short_run
    out = tmp_path / "export" / "model.pt2"
    assert main(["export", str(run), "--out", str(out)]) == 0
    replace = os.replace

    def stop_at_the_schema(source, target):
        if str(target).endswith(".schema"):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", stop_at_the_schema)
    assert main(["export", str(run), "--out", str(out)]) == 130
    assert not out.exists()
    assert not [p.name for p in (tmp_path / "export").iterdir() if ".tmp-" in p.name]  # no temporary left


def test_an_export_past_the_free_disk_is_refused_naming_out_and_writes_nothing(short_run, tmp_path, monkeypatch,
                                                                              capsys):
    """torch's archive writer aborted the process on a full disk ("terminate called after
    throwing an instance of 'c10::Error'"): no message, no exit code of ctr's."""
    import shutil

    from ctr.train import export

    run = short_run
    out = tmp_path / "export" / "model.pt2"
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 1 << 40, 1000))
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert re.fullmatch(rf"ctr: error: {re.escape(str(out))}: the program needs ~[\d.]+ MB, 0.001 MB free on its "
                        r"disk; free space there or choose another --out\n", capsys.readouterr().err)
    assert not (tmp_path / "export").exists()  # the folder made for --out too


def test_a_program_takes_batches_and_ids_past_what_memory_holds(short_run, tmp_path):
    """A program refused a batch of more than 2^24 rows (``Guard failed: dense.size()[0] <=
    16777216``), and 2^31 ids: a file scored at once stopped there. Its range of B and N (read
    from the program's inputs: a batch that large does not fit this test's memory) goes past
    2^40."""
    out = tmp_path / "model.pt2"
    assert main(["export", str(short_run), "--out", str(out)]) == 0
    program = torch.export.load(out)
    shapes = {node.name: node.meta["val"].shape for node in program.graph.nodes if node.op == "placeholder"}
    ranges = {str(symbol): bounds for symbol, bounds in program.range_constraints.items()}
    for size in (shapes["dense"][0], shapes["values"][0]):
        assert ranges[str(size)].upper >= 1 << 40
