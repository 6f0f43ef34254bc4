"""Models defined outside the project: through a recipe's ``plugins:`` list (the example of
docs/extending.md, run as documented) and through the ``ctr.models`` entry-point group."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctr.cli import main
from ctr.errors import RecipeError
from ctr.registry import DATASETS, EMBEDDINGS, MODELS, import_plugins
from tests.conftest import tiny_recipe

DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def code_block(text: str, first_line: str) -> str:
    """The fenced block of docs/extending.md that starts with ``first_line``."""
    for block in re.findall(r"```\w*\n(.*?)```", text, flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"docs/extending.md has no block starting with {first_line!r}")


def ctr(args, cwd, pythonpath):
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "CTR_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "ctr.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_docs_plugin_example_trains_as_documented(plugin_dir, monkeypatch, capsys):
    """Trained as documented (``PYTHONPATH=. ctr train`` in its own process); listing the
    models and a misspelt key are checked in this process, from the same folder."""
    docs = DOCS.read_text()
    (plugin_dir / "my_models.py").write_text(code_block(docs, "# my_models.py"))
    (plugin_dir / "my_recipe.yaml").write_text(code_block(docs, "# my_recipe.yaml"))
    command = code_block(docs, "PYTHONPATH=. ctr train").split()
    assert command[:3] == ["PYTHONPATH=.", "ctr", "train"]
    result = ctr([*command[2:], "-o", "trainer.progress_bar=false", "-o", "trainer.num_threads=1"], plugin_dir, plugin_dir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((plugin_dir / "runs" / "my-mlp" / "metrics.json").read_text())
    assert 0.5 < metrics["test"]["auc"] <= 1.0
    monkeypatch.chdir(plugin_dir)
    capsys.readouterr()
    assert main(["models"]) == 0
    assert "my_mlp" not in capsys.readouterr().out  # a plugins: module is imported by the recipe only
    assert main(["train", "my_recipe.yaml", "-o", "model.hiden=[8]"]) == 2
    assert "model.hiden: unknown key" in capsys.readouterr().err


PLUGIN = '''
"""A model that lives outside ctr: a linear logit over the field vectors."""
from dataclasses import dataclass

import torch
from torch import nn

from ctr.models.base import CTRModel, pool_sequences
from ctr.recipe import ModelConfig
from ctr.registry import MODELS


@dataclass
class OutsideConfig(ModelConfig):
    name: str = "outside_linear"
    scale: float = 1.0


@MODELS.register("outside_linear", config=OutsideConfig)
class OutsideLinear(CTRModel):
    """Outside linear model (an entry-point plugin)."""

    def __init__(self, schema, layout, config):
        super().__init__(schema, layout, config)
        width = (len(layout.pooled) + len(layout.sequences)) * layout.dim + self.num_dense
        self.linear = nn.Linear(width, 1)

    def forward(self, batch, embedded):
        fields = pool_sequences(embedded, self.layout)
        return self.config.scale * self.linear(torch.cat([fields.flatten(1), batch.dense], 1)).squeeze(-1)
'''


@pytest.fixture
def installed_plugin(tmp_path):
    """A distribution on PYTHONPATH whose entry point in group ``ctr.models`` names a module."""
    site = tmp_path / "site"
    dist = site / "outside_models-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "outside_models.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-models\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ctr.models]\noutside_linear = outside_models\n")
    return site


@pytest.mark.slow
def test_entry_point_plugin_is_listed_and_trains(tmp_path, installed_plugin):
    listed = ctr(["models"], tmp_path, installed_plugin)
    assert listed.returncode == 0 and "outside_linear" in listed.stdout
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: outside\n"
        "data: {dataset: synthetic, rows: 6000, vocab_scale: 0.002, chunk_rows: 2000}\n"
        "model: {name: outside_linear, scale: 2.0}\n"
        "embedding: {method: full, dim: 8}\n"
        "train: {batch_size: 512, epochs: 1}\n"
        "trainer: {progress_bar: false, num_threads: 1}\n"
    )
    result = ctr(["train", str(recipe), "--out", str(tmp_path / "run")], tmp_path, installed_plugin)
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "run" / "recipe.yaml").read_text()
    assert "outside_linear" in saved and "scale: 2.0" in saved
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["auc"] > 0


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on ``sys.path`` for plugin modules; afterwards the registries and
    ``sys.modules`` forget what they registered and imported."""
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = {registry: dict(registry._entries) for registry in (MODELS, EMBEDDINGS, DATASETS)}
    yield tmp_path
    for registry, entries in saved.items():
        for name, entry in list(registry._entries.items()):
            if name not in entries and registry._builtins.get(name) != entry.target.__module__:  # a built-in stays
                del registry._entries[name]
        registry._entries.update(entries)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


BENCH_METHOD = '''
from dataclasses import dataclass

from ctr.embeddings.base import EmbeddingMethod
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS


@dataclass
class BenchProbeConfig(EmbeddingConfig):
    method: str = "bench_probe"


@EMBEDDINGS.register("bench_probe", config=BenchProbeConfig)
class BenchProbe(EmbeddingMethod):
    """A method only a recipe's plugins: list registers."""
'''


def test_bench_compression_accepts_a_method_of_the_recipes_plugins(plugin_dir, monkeypatch):
    """--methods was checked before the recipe's plugins were imported: "unknown embedding method"."""
    from ctr.bench import compression

    (plugin_dir / "bench_methods.py").write_text(BENCH_METHOD)
    recipe = plugin_dir / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(plugin_dir)))
    ran = []
    monkeypatch.setattr(compression, "_run_cell", lambda cell, raw, out, *rest: ran.append((cell, raw)) or {
        "method": cell.method, "budget": cell.budget, "seed": cell.seed, "run_dir": out / cell.key, "status": "error: -"})
    compression.run_compression(recipe, ["full", "bench_probe"], [0.5], 1, plugin_dir / "out", ["plugins=[bench_methods]"])
    assert [(cell.method, raw["plugins"]) for cell, raw in ran] == [("full", ["bench_methods"]), ("bench_probe", ["bench_methods"])]


def model_plugin(name: str, config_body: str = "", header: str = "") -> str:
    """A plugin module registering model ``name`` (``config_body``: extra lines of its config,
    ``header``: code before it)."""
    return f'''from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ctr.models.base import CTRModel
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
{header}

@dataclass
class PluginConfig(ModelConfig):
    name: str = "{name}"
{config_body}

@MODELS.register("{name}", config=PluginConfig)
class PluginModel(CTRModel):
    """A model of a test."""
'''


@pytest.mark.parametrize("source, said", [
    ("x = 1\ndef f(:\n    pass\n", r"plug\.py:2: SyntaxError: "),
    ("from dataclasses import dataclass\n\n@dataclass\nclass C:\n    a: int = 1\n    b: int\n",
     r"plug\.py:3: TypeError: non-default argument 'b' follows default argument"),
    ("raise RuntimeError('boom at import')\n", r"plug\.py:1: RuntimeError: boom at import"),
    ("import not_a_real_dependency_xyz\n", r"plug\.py:1: No module named 'not_a_real_dependency_xyz'"),
])
def test_a_plugin_that_fails_to_import_is_one_recipe_error(plugin_dir, source, said):
    """Only an ImportError was a RecipeError; a syntax error or an exception was a traceback."""
    (plugin_dir / "plug.py").write_text(source)
    with pytest.raises(RecipeError, match=r"^plugins\[1\]: cannot import plugin module 'plug': .*" + said):
        import_plugins(["json", "plug"])


def test_a_plugin_that_exits_as_it_is_imported_is_one_line_naming_it(plugin_dir, capsys):
    """``sys.exit(3)`` in a plugin module ended ``ctr models`` with code 3 and not a word."""
    (plugin_dir / "quits.py").write_text("import sys\n\nsys.exit(3)\n")
    assert main(["models", "--plugins", "json,quits"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: --plugins[1]: cannot import plugin module 'quits': {plugin_dir / 'quits.py'}:3: SystemExit: 3")


def test_an_installed_plugin_that_exits_as_it_is_imported_is_a_warning(plugin_dir, caplog):
    """An entry point's module that exits is a broken plugin, as one that raises: the built-ins stay."""
    from ctr.registry import Registry

    dist = plugin_dir / "quitting-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: quitting\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ctr.test_quitting]\nquitter = quitting_plugin\n")
    (plugin_dir / "quitting_plugin.py").write_text("raise SystemExit('bye')\n")
    registry = Registry("model", entry_point_group="ctr.test_quitting")
    assert registry.names() == []
    assert f"could not load model plugin quitter: {plugin_dir / 'quitting_plugin.py'}:1: SystemExit: bye" in caplog.text


def test_a_name_registered_twice_names_the_module_that_has_it(plugin_dir):
    """Two copies of a plugin module: a ValueError traceback, "'twice' is already registered"."""
    (plugin_dir / "copy_a.py").write_text(model_plugin("twice"))
    (plugin_dir / "copy_b.py").write_text(model_plugin("twice"))
    with pytest.raises(RecipeError, match=r"^plugins\[1\]: cannot import plugin module 'copy_b': \S*copy_b\.py:\d+: "
                       r"model 'twice' is already registered by copy_a\.PluginModel$"):
        import_plugins(["copy_a", "copy_b"])


def test_a_reloaded_plugin_replaces_its_entries(plugin_dir):
    """importlib.reload of a plugin module was refused: "'reloaded' is already registered"."""
    import importlib

    (plugin_dir / "reloaded.py").write_text(model_plugin("reloaded"))
    import_plugins(["reloaded"])
    (plugin_dir / "reloaded.py").write_text(model_plugin("reloaded", "    width: int = 3"))
    module = importlib.reload(sys.modules["reloaded"])
    assert MODELS.get("reloaded").target is module.PluginModel and MODELS.get("reloaded").config().width == 3


def test_a_plugin_cannot_take_a_builtins_name(plugin_dir):
    """A plugin registering "deepfm" silently replaced the built-in for `model: deepfm`."""
    from ctr.recipe import recipe_from_dict

    (plugin_dir / "clash.py").write_text(model_plugin("deepfm"))
    with pytest.raises(RecipeError, match=r"^plugins\[0\]: cannot import plugin module 'clash': \S*clash\.py:\d+: "
                       r"model 'deepfm' is a built-in; register yours under another name$"):
        recipe_from_dict({"plugins": ["clash"], "model": {"name": "deepfm"}})
    assert MODELS.get("deepfm").target.__module__ == "ctr.models.deepfm"


@pytest.mark.parametrize("registry, kind, base", [
    ("MODELS", "model", "ModelConfig"), ("EMBEDDINGS", "embedding method", "EmbeddingConfig"),
    ("DATASETS", "dataset", "DataConfig"),
])
def test_a_config_must_subclass_its_registrys_base_config(plugin_dir, registry, kind, base):
    """A plain dataclass was accepted, then failed later: "model.name: unknown key (allowed: hidden)"."""
    (plugin_dir / "plain.py").write_text(
        "from dataclasses import dataclass\n"
        f"from ctr.registry import {registry}\n\n\n"
        "@dataclass\nclass PlainConfig:\n    hidden: int = 1\n\n\n"
        f"{registry}.register('plain_thing', config=PlainConfig)(dict)\n"
    )
    with pytest.raises(RecipeError, match=rf"plain\.py:10: {kind} 'plain_thing': its config must subclass "
                                          rf"ctr\.recipe\.{base}$"):
        import_plugins(["plain"])


KEY_TYPES = '''
class Act(str, Enum):
    relu = "relu"


@dataclass
class Inner:
    root: Path = Path(".")
'''


@pytest.mark.parametrize("key, said", [
    ("init_from: Path | None = None", "'init_from' has type Path"), ("act: Act = Act.relu", "'act' has type Act"),
    ("ids: dict[int, int] = None", r"'ids' has type dict\[int, int\]"),
    ("inner: Inner = field(default_factory=Inner)", "'inner.root' has type Path"),
    ("pair: tuple[int, str] = (1, 'a')", r"'pair' has type tuple\[int, str\]"),  # read as tuple[int, ...]
], ids=["path", "enum", "int_keys", "nested", "fixed_tuple"])
def test_a_config_key_of_a_type_a_recipe_cannot_hold_is_refused(plugin_dir, key, said):
    """A Path or Enum key registered, then failed with a traceback when set or when recipe.yaml was written."""
    (plugin_dir / "typed_keys.py").write_text(model_plugin("typed_keys", f"    {key}", KEY_TYPES))
    with pytest.raises(RecipeError, match=rf"model 'typed_keys': config key {said}, which a recipe cannot hold; "
                                          r"use bool, int, float, str, .* config dataclasses$"):
        import_plugins(["typed_keys"])


def test_a_bare_list_key_is_read_and_written(plugin_dir):
    """``hidden: list`` was a TypeError traceback ("unsupported config type") when set."""
    from ctr.recipe import recipe_from_dict

    (plugin_dir / "bare.py").write_text(model_plugin("bare_list", "    hidden: list = None"))
    recipe = recipe_from_dict({"plugins": ["bare"], "model": {"name": "bare_list", "hidden": [8, 4]}})
    assert recipe.model.hidden == [8, 4] and recipe.to_dict()["model"]["hidden"] == [8, 4]


def test_ctr_models_lists_the_plugins_it_is_given(plugin_dir, capsys):
    """`ctr models` could not import a plugins: module, so it never listed one."""
    from ctr.cli import main

    (plugin_dir / "listed.py").write_text(model_plugin("listed_model"))
    assert main(["models", "--plugins", "json, listed"]) == 0
    assert re.search(r"^  listed_model +A model of a test\.$", capsys.readouterr().out, flags=re.M)
    assert main(["models", "--plugins", "json,no_such_plugin_xyz"]) == 2
    assert "--plugins[1]: cannot import plugin module 'no_such_plugin_xyz'" in capsys.readouterr().err
