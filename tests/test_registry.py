from dataclasses import dataclass

import pytest

from ctr.errors import RecipeError
from ctr.registry import DATASETS, EMBEDDINGS, MODELS, OPTIMIZERS, Registry, import_plugins
from ctr.typed import wrong_default


def test_register_and_get():
    things = Registry("thing")

    @dataclass
    class Cfg:
        size: int = 1

    @things.register("widget", config=Cfg)
    class Widget:
        """A widget."""

    entry = things.get("widget")
    assert entry.target is Widget and entry.config is Cfg and entry.summary == "A widget."
    assert "widget" in things and things.names() == ["widget"]


def test_unknown_name_names_key_and_choices():
    things = Registry("thing")
    things.register("a")(object)
    with pytest.raises(RecipeError, match=r"model\.name: unknown thing 'b' \(registered: a\)"):
        things.get("b", "model.name")


def test_duplicate_registration_rejected():
    things = Registry("thing")
    things.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        things.register("a")(float)


def test_the_same_class_defined_again_replaces_its_entry():
    """A reloaded plugin module (or a notebook cell run twice) was refused: "already registered"."""
    things = Registry("thing")

    def define(default):
        @dataclass
        class Cfg:
            size: int = default

        @things.register("widget", config=Cfg)
        class Widget:
            """A widget."""

        return Widget

    define(1)
    again = define(2)
    assert things.get("widget").target is again and things.get("widget").config().size == 2
    things.register("tool")(Exception("a"))
    with pytest.raises(ValueError, match="already registered"):  # another object, not a class defined again
        things.register("tool")(Exception("b"))


def test_builtins_load_lazily():
    assert {"dlrm", "lr"} <= set(MODELS.names())


def test_bad_plugin_module_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"plugins\[0\]: cannot import plugin module 'no_such_mod'"):
        import_plugins(["no_such_mod"])


def test_a_summary_is_the_docstrings_first_sentence_across_lines():
    """`ctr models` showed each docstring's first line, cut mid-sentence."""
    from ctr.registry import _summary

    assert _summary("Low-precision training of full tables, as the\n    benchmark's quantize.\n\n    More.") == (
        "Low-precision training of full tables, as the benchmark's quantize.")
    assert _summary("Wide & Deep: logits summed (Eq. 3).") == "Wide & Deep: logits summed (Eq. 3)."
    long = _summary("word " * 40)
    assert len(long) <= 110 and long.endswith(" …")


def test_every_builtin_summary_is_whole_and_plain():
    """`ctr models` showed int8 and int16 as one line cut at "(Zhang et al., …" (so the two
    read alike), and reST's double backticks as they are."""
    from ctr.registry import DATASETS, EMBEDDINGS

    for registry in (MODELS, EMBEDDINGS, DATASETS, OPTIMIZERS):
        for name in registry.names():
            summary = registry.get(name).summary
            assert not summary.endswith("…") and "``" not in summary, (name, summary)


def test_a_config_subclass_without_its_own_dataclass_decorator_is_refused():
    """Its keys are plain class attributes (is_dataclass holds through the base): a recipe's
    ``model.width`` was refused as an unknown key."""
    from ctr.recipe import ModelConfig
    things = Registry("model", config_base="ctr.recipe.ModelConfig")

    class Undecorated(ModelConfig):
        width: int = 3

    with pytest.raises(ValueError, match=r"model 'wide': its config Undecorated is not a dataclass \(decorate it with "
                                         r"@dataclass\): key 'width' would not be read"):
        things.register("wide", config=Undecorated)(object)


def test_a_config_default_of_the_wrong_type_is_refused():
    """``heads: int = "two"`` trained with 'two' in the config, and ``hidden: list[int] = 64``
    stopped at ``model: 'int' object is not iterable``: neither named the default."""
    from dataclasses import field

    from ctr.recipe import ModelConfig
    things = Registry("model", config_base="ctr.recipe.ModelConfig")

    @dataclass
    class Heads(ModelConfig):
        heads: int = "two"

    @dataclass
    class Hidden(ModelConfig):
        hidden: list[int] = field(default_factory=lambda: [64, "x"])

    with pytest.raises(ValueError, match=r"model 'a': the default of Heads\.heads: expected int, got 'two'$"):
        things.register("a", config=Heads)(object)
    with pytest.raises(ValueError, match=r"model 'b': the default of Hidden\.hidden\[1\]: expected int, got 'x'$"):
        things.register("b", config=Hidden)(object)

    @dataclass
    class Inner:
        n: int = "x"

    @dataclass
    class Nested(ModelConfig):
        inner: Inner = field(default_factory=Inner)

    with pytest.raises(ValueError, match=r"model 'c': the default of Inner\.n: expected int, got 'x'$"):
        things.register("c", config=Nested)(object)


def test_every_builtin_config_default_fits_its_type():
    for registry in (MODELS, EMBEDDINGS, DATASETS, OPTIMIZERS):
        for entry in registry.entries():
            assert entry.config is None or wrong_default(entry.config) is None, entry.name


def test_a_target_that_cannot_take_the_registrys_arguments_is_refused():
    """A model whose ``__init__(self, schema, config)`` lacked ``layout`` was a TypeError
    traceback from deep in training (``takes 3 positional arguments but 4 were given``)."""
    from ctr.models.base import CTRModel

    class TwoArguments(CTRModel):
        def __init__(self, schema: object, config: "ModelConfig"):  # noqa: F821 (shown without annotations)
            super().__init__(schema, None, config)

    with pytest.raises(ValueError, match=r"^model 'two_args': TwoArguments\(schema, config\) is called as "
                                         r"TwoArguments\(schema, layout, config\)$"):
        MODELS.register("two_args")(TwoArguments)
    assert "two_args" not in MODELS
    things = Registry("thing", arguments=("schema", "config"))
    things.register("any")(lambda *args: args)
    things.register("named")(lambda schema, config=None: schema)
    assert things.names() == ["any", "named"]


@pytest.mark.parametrize("listed", ["json.py", "lib/json.py"])
def test_a_plugin_listed_by_its_file_name_is_told_to_give_the_module(listed):
    """``plugins: [my_models.py]`` said "No module named 'my_models.py'; 'my_models' is not a
    package" (Python's words for a submodule ``py``), which does not say what to write."""
    with pytest.raises(RecipeError, match=rf"^plugins\[0\]: cannot import plugin module '{listed}': a file name; "
                                          r"list the module's name, json, with its folder on PYTHONPATH$"):
        import_plugins([listed])


def test_a_file_name_that_names_a_module_whose_own_import_fails_says_what_is_missing(tmp_path, monkeypatch):
    """``my_plug.py`` that imports a missing package was told to list the module's name (the
    import of ``my_plug`` ran and failed on its own import): the missing package is named."""
    (tmp_path / "my_plug.py").write_text("import no_such_package_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RecipeError, match=r"^plugins\[0\]: cannot import plugin module 'my_plug.py': .*"
                                          r"No module named 'no_such_package_here'"):
        import_plugins(["my_plug.py"])
