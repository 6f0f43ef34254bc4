"""docs/extending.md's dataset plugin works as documented."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from ctr.datasets import prepare
from ctr.recipe import recipe_from_dict

DOCS = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def write_clicks(path: Path) -> None:
    """40 rows of the documented plugin's JSON lines: 5 users, 3 ads, a price."""
    rows = ({"clicked": i % 2, "user": f"u{i % 5}", "ad": f"a{i % 3}", "price": i / 10} for i in range(40))
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def documented_block(first_line: str) -> str:
    blocks = DOCS.read_text().split("```python\n")[1:]
    for block in blocks:
        if block.startswith(first_line):
            return block.split("```")[0]
    raise AssertionError(f"docs/extending.md has no block starting with {first_line!r}")


def test_documented_dataset_plugin_prepares(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(documented_block("# my_data.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"clicked": i % 3 == 0, "user": f"u{i % 9}", "ad": f"a{i % 4}", "price": i / 10} for i in range(200)]
    (tmp_path / "clicks.jsonl").write_text("".join(json.dumps({**r, "clicked": int(r["clicked"])}) + "\n" for r in rows))
    recipe = recipe_from_dict({"plugins": ["my_data"], "data": {
        "dataset": "my_clicks", "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}})
    prepared = prepare(recipe.data, progress=False)
    assert sum(s["rows"] for s in prepared.report["splits"].values()) == 200
    assert prepared.schema.group == "user" and prepared.schema.feature("user").vocab_size == 2 + 9


def test_a_dataset_plugin_whose_code_changed_encodes_anew(tmp_path, monkeypatch):
    """The cache key held the plugin's class name, options and files, not its code: an edited
    plugin (another label rule, fewer rows) kept the encoding of the code before."""
    from ctr.datasets.cache import stale_entries

    plugin = tmp_path / "my_data_edited.py"  # its own module and dataset name: the test above imports my_data
    plugin.write_text(documented_block("# my_data.py").replace('"my_clicks"', '"my_clicks_edited"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    write_clicks(tmp_path / "clicks.jsonl")
    recipe = recipe_from_dict({"plugins": ["my_data_edited"], "data": {
        "dataset": "my_clicks_edited", "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}})
    first = prepare(recipe.data, progress=False)
    assert prepare(recipe.data, progress=False).root == first.root  # unchanged code: reused
    plugin.write_text(plugin.read_text().replace("to_batches(65_536)", "to_batches(1_000)"))
    assert [entry.reason for entry in stale_entries(tmp_path / "cache" / "data")] == [
        f"the code of dataset plugin {plugin.resolve()} changed"]
    assert prepare(recipe.data, progress=False).root != first.root


def test_a_dataset_plugin_whose_package_helper_changed_encodes_anew(tmp_path, monkeypatch):
    """The key held the plugin's module file alone: a helper module of its own package that the
    reader imports (here its batch size) was edited and the entry of the code before was read."""
    from ctr.datasets.cache import stale_entries

    package = tmp_path / "clicks_pkg"
    (package / "util").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "util" / "__init__.py").write_text("")
    (package / "util" / "sizes.py").write_text("BATCH = 65_536\n")
    code = documented_block("# my_data.py").replace('"my_clicks"', '"my_clicks_pkg"')
    (package / "reader.py").write_text("from clicks_pkg.util.sizes import BATCH\n" +
                                       code.replace("to_batches(65_536)", "to_batches(BATCH)"))
    monkeypatch.syspath_prepend(str(tmp_path))
    write_clicks(tmp_path / "clicks.jsonl")
    recipe = recipe_from_dict({"plugins": ["clicks_pkg.reader"], "data": {
        "dataset": "my_clicks_pkg", "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}})
    first = prepare(recipe.data, progress=False)
    assert prepare(recipe.data, progress=False).root == first.root
    (package / "util" / "sizes.py").write_text("BATCH = 1_000\n")
    reader, package = (package / "reader.py").resolve(), package.resolve()
    assert [entry.reason for entry in stale_entries(tmp_path / "cache" / "data")] == [
        f"the code of dataset plugin {reader} changed (or of its package {package})"]
    assert prepare(recipe.data, progress=False).root != first.root


def test_a_stream_yielding_a_dataframe_is_one_line(tmp_path, monkeypatch):
    """The docs ask for Arrow record batches; a DataFrame failed deep in the checks
    ("'DataFrame' object has no attribute 'schema'")."""
    from ctr.errors import DataError

    plugin = tmp_path / "my_frames.py"
    plugin.write_text(documented_block("# my_data.py").replace('"my_clicks"', '"my_frames"').replace(
        'yield batch.replace_schema_metadata({"file": str(file)})', "yield batch.to_pandas()"))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "clicks.jsonl").write_text(json.dumps({"clicked": 1, "user": "u", "ad": "a", "price": 1.0}) + "\n")
    recipe = recipe_from_dict({"plugins": ["my_frames"], "data": {
        "dataset": "my_frames", "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}})
    with pytest.raises(DataError, match=r"^data\.dataset: my_frames's 'all' stream yielded a DataFrame; a stream yields"
                                        r" pyarrow record batches"):
        prepare(recipe.data, progress=False)


def test_streams_other_than_the_documented_dict_are_one_line(tmp_path, monkeypatch):
    """A split named other than all/train/valid/test failed in the split assignment ("x not in
    tuple"), a bare function at ``split not in streams``, both in tracebacks."""
    from ctr.errors import DataError

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "clicks.jsonl").write_text(json.dumps({"clicked": 1, "user": "u", "ad": "a", "price": 1.0}) + "\n")
    for name, returned, got in [("my_training", '{"training": rows}', "keys 'training'"), ("my_bare", "rows", "function")]:
        (tmp_path / f"{name}.py").write_text(documented_block("# my_data.py").replace('"my_clicks"', f'"{name}"').replace(
            'return {"all": rows}', f"return {returned}"))
        recipe = recipe_from_dict({"plugins": [name], "data": {
            "dataset": name, "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}})
        with pytest.raises(DataError, match=rf"^data\.dataset: {name}'s streams\(\) returned {got}; a source returns "
                                            r"\{'all': stream\} or \{'train': stream, 'valid': \.\.\., 'test': \.\.\.\}"):
            prepare(recipe.data, progress=False)


def test_default_features_other_than_feature_specs_are_one_line(tmp_path, monkeypatch):
    """Names or dicts for FeatureSpecs failed in an AttributeError traceback ("'str' object
    has no attribute 'name'"), a FeatureSpec the source builds wrong in its ValueError's."""
    from ctr.errors import DataError

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "clicks.jsonl").write_text(json.dumps({"clicked": 1, "user": "u", "ad": "a", "price": 1.0}) + "\n")
    for name, returned, got in [("my_names", '["user", "ad"]', r"'user' \(a str\) at \[0\]"),
                                ("my_dicts", '[FeatureSpec(name="user"), {"name": "ad"}]', r"\{'name': 'ad'\} \(a dict\) at \[1\]"),
                                ("my_spec", 'FeatureSpec(name="user")', r"a FeatureSpec"),
                                ("my_bad_spec", '[FeatureSpec(name="user", max_len=0)]', None)]:
        block = documented_block("# my_data.py").replace('"my_clicks"', f'"{name}"')
        start = block.index("        return [FeatureSpec(name=\"user\")")
        end = block.index("\n\n", start)
        (tmp_path / f"{name}.py").write_text(block[:start] + f"        return {returned}" + block[end:])
        recipe = recipe_from_dict({"plugins": [name], "data": {
            "dataset": name, "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}})
        said = (rf" returned {got}; a source returns a list of FeatureSpec \(ctr\.schema\)" if got else
                r": feature 'user': min_count, oov_buckets and max_len must be >= 1$")  # a spec's ValueError: a traceback
        with pytest.raises(DataError, match=rf"^data\.dataset: {name}'s default_features\(\){said}"):
            prepare(recipe.data, progress=False)


@pytest.mark.parametrize("column, value, said", [
    ("user", '["u", "v"]', r"'all' stream \(\S+part-\d\.jsonl\): column 'user' \(list<item: string>\) cannot be read by "
                           r"data\.features \(user\), kind categorical; declare kind: sequence"),
    ("user", '{"id": 1}', r"'all' stream \(\S+part-\d\.jsonl\): column 'user' \(struct<id: int64>\) cannot be read by "
                          r"data\.features \(user\), kind categorical; store it as strings or numbers"),
    ("price", '{"cents": 1}', r"'all' stream \(\S+part-\d\.jsonl\): column 'price' \(struct<cents: int64>\) cannot be "
                              r"read by data\.features \(price\), kind numeric; store it as numbers"),
    ("clicked", None, r"data\.label: column 'clicked' is absent from \S+part-\d\.jsonl \(it has: user, ad, price\)"),
], ids=["list-as-categorical", "struct-as-categorical", "struct-as-numeric", "no-label"])
@pytest.mark.parametrize("batch", [0, 1])
def test_a_stream_column_its_feature_cannot_read_is_one_line(tmp_path, monkeypatch, column, value, said, batch):
    """A list or struct column of a plugin's stream failed in pyarrow's cast ("Unsupported
    cast from list<item: string> to utf8"); a column of a later batch (the stream's next file)
    too, and a label absent from it in a KeyError."""
    from ctr.errors import DataError

    name = f"my_typed_{abs(hash((column, value, batch)))}"
    (tmp_path / f"{name}.py").write_text(documented_block("# my_data.py").replace('"my_clicks"', f'"{name}"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"clicked": i % 2, "user": f"u{i}", "ad": "a", "price": 1.0} for i in range(4)]
    for row in rows[2 * batch:]:  # in the first file's batch or the second's
        row.pop(column) if value is None else row.update({column: json.loads(value)})
    (tmp_path / "logs").mkdir()
    for part in (0, 1):
        (tmp_path / "logs" / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2 * part:][:2]))
    recipe = recipe_from_dict({"plugins": [name], "data": {
        "dataset": name, "path": str(tmp_path / "logs"), "cache_dir": str(tmp_path / "cache")}})
    with pytest.raises(DataError, match=rf"^(data\.dataset: {name}'s )?" + said + "$"):
        prepare(recipe.data, progress=False)


@pytest.mark.parametrize("alike", [False, True])
def test_a_plugin_listing_its_default_features_shares_their_entry_only_where_it_says_it_reads_alike(
        tmp_path, monkeypatch, alike):
    """Any source whose listed features equal its defaults shared the defaults' entry, a
    plugin's too, which may read its rows otherwise once its features are listed (as libsvm
    without a featindex does): it keeps its own unless it sets ``listed_defaults_alike``."""
    name = f"my_listed_{str(alike).lower()}"
    code = documented_block("# my_data.py").replace('"my_clicks"', f'"{name}"')
    (tmp_path / f"{name}.py").write_text(code.replace('    group = "user"\n',
                                                      f'    group = "user"\n    listed_defaults_alike = {alike}\n'))
    monkeypatch.syspath_prepend(str(tmp_path))
    write_clicks(tmp_path / "clicks.jsonl")
    data = {"dataset": name, "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}
    omitted = prepare(recipe_from_dict({"plugins": [name], "data": data}).data, progress=False)
    features = [{"name": "user"}, {"name": "ad"}, {"name": "price", "kind": "numeric", "transform": "log1p"}]
    listed = prepare(recipe_from_dict({"plugins": [name], "data": {**data, "features": features}}).data, progress=False)
    assert (listed.root == omitted.root) == alike


def test_a_run_keyed_by_its_packaged_plugins_file_alone_is_not_told_its_code_changed(tmp_path):
    """A run an earlier ctr began keyed its packaged plugin by the module's file alone: a resume
    (``input_change``) was refused as if the code had changed. Another module file is a change."""
    from ctr.datasets.cache import input_change
    from ctr.datasets.source import code_digest

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    module = tmp_path / "pkg" / "reader.py"
    module.write_text("ROWS = 1\n")
    now = {"files": [], "code": [str(module), code_digest(module)]}
    file_alone = hashlib.sha256(module.read_bytes()).hexdigest()
    assert input_change({"files": [], "code": [str(module), file_alone]}, now) is None
    assert "code of dataset plugin" in input_change({"files": [], "code": [str(module), "0" * 64]}, now)


def test_a_packaged_plugin_beside_an_editors_lock_link_and_a_data_folder_prepares_and_cleans(tmp_path, monkeypatch,
                                                                                               capsys):
    """Every ``*.py`` under the package keyed the entry: an editor's lock link ``.#reader.py``
    (to no file) failed prepare and ``ctr data clean`` in a FileNotFoundError traceback, and a
    folder's data file changed nothing. An unreadable file of the package is one line naming it."""
    from ctr.cli import main
    from ctr.datasets.source import code_digest
    from ctr.errors import DataError

    package = tmp_path / "lockpkg"
    (package / "scripts").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "reader.py").write_text(documented_block("# my_data.py").replace('"my_clicks"', '"my_locked"'))
    os.symlink("nowhere", package / ".#reader.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    write_clicks(tmp_path / "clicks.jsonl")
    recipe = recipe_from_dict({"plugins": ["lockpkg.reader"], "data": {
        "dataset": "my_locked", "path": str(tmp_path / "clicks.jsonl"), "cache_dir": str(tmp_path / "cache")}})
    first = prepare(recipe.data, progress=False)
    (package / "scripts" / "rows.csv").write_text("1,2\n")  # no .py file: not the package's code
    assert prepare(recipe.data, progress=False).root == first.root
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "\n0 stale entries" in "\n" + capsys.readouterr().out and (first.root / "DONE").exists()
    os.symlink("nowhere", package / "broken.py")  # a link to no file, not hidden: left out too
    assert prepare(recipe.data, progress=False).root == first.root
    (package / "unreadable.py").write_text("")
    read_bytes = Path.read_bytes

    def denied(path):
        if path.name == "unreadable.py":  # as root, a mode of 000 reads all the same
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    said = rf"^data\.dataset: plugin code {package / 'unreadable.py'}: cannot be read \(permission denied\)$"
    with pytest.raises(DataError, match=said):
        code_digest(package / "reader.py")


def test_a_packaged_plugins_helper_in_a_folder_without_init_keys_its_code(tmp_path):
    """A folder of the package without an ``__init__.py`` (``helpers/util.py`` imports as
    ``pkg.helpers.util``, a namespace package) was not read: editing its helper kept the entry
    of the code before. Hidden names, ``__pycache__``, linked folders and links to no file are
    left out."""
    from ctr.datasets.source import code_digest

    package = tmp_path / "nspkg"
    (package / "helpers").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "reader.py").write_text("from nspkg.helpers.util import BATCH\n")
    (package / "helpers" / "util.py").write_text("BATCH = 65_536\n")
    before = code_digest(package / "reader.py")
    (package / "helpers" / "util.py").write_text("BATCH = 1_000\n")
    edited = code_digest(package / "reader.py")
    assert edited != before
    for folder in ("__pycache__", ".git", "elsewhere"):
        (tmp_path / folder if folder == "elsewhere" else package / folder).mkdir()
        ((tmp_path if folder == "elsewhere" else package) / folder / "x.py").write_text("X = 1\n")
    os.symlink(tmp_path / "elsewhere", package / "linked")
    os.symlink("nowhere", package / "helpers" / "broken.py")
    (package / "helpers" / ".#util.py").write_text("")
    assert code_digest(package / "reader.py") == edited


def test_a_plain_packages_code_digest_is_the_one_earlier_entries_hold(tmp_path):
    """A package of regular ``.py`` files and subpackages keys its entry as before: each file's
    path in the package and hash, in sorted path order (entries prepared before are not stale)."""
    from ctr.datasets.source import code_digest

    package = tmp_path / "plainpkg"
    for name in ("__init__.py", "a.py", "a/__init__.py", "a/b.py", "a_b.py", "z/__init__.py", "z/y/__init__.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(f"NAME = {name!r}\n")
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        digest.update(f"{file.relative_to(package)}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\n".encode())
    assert code_digest(package / "a.py") == digest.hexdigest()


@pytest.mark.parametrize("fails", ["iterdir", "is_dir"])
def test_an_unreadable_folder_of_a_packaged_plugin_is_one_line_naming_it(tmp_path, monkeypatch, fails):
    """A folder of the package that cannot be listed (or whose entries cannot be looked at)
    raised a PermissionError traceback rather than the one line the docs promise."""
    from ctr.datasets.source import code_digest
    from ctr.errors import DataError

    package = tmp_path / "deniedpkg"
    (package / "closed").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "closed" / "util.py").write_text("")
    real = getattr(Path, fails)

    def denied(path, *args, **kwargs):
        if (path if fails == "iterdir" else path.parent).name == "closed":  # as root, a mode of 000 reads all the same
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, fails, denied)
    said = rf"^data\.dataset: plugin code {package / 'closed'}: cannot be read \(permission denied\)$"
    with pytest.raises(DataError, match=said):
        code_digest(package / "__init__.py")
