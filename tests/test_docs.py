"""The documentation site: its code blocks run as written, and it builds with ``--strict``.

Each page's ``python`` blocks run in order in one fresh module namespace, as a reader pasting
them into a session would (``docs/nn.md`` is covered by ``tests/test_nn_docs.py``). The site
build needs the ``docs`` extras (``pip install -e ".[docs]"``) and is skipped without them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import funcimplicit as fi

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
# Tested elsewhere (tests/test_nn_docs.py), with assertions of its own.
OWN_TESTS = {"nn.md"}
PAGES = sorted(
    path.relative_to(DOCS).as_posix()
    for path in DOCS.rglob("*.md")
    if path.relative_to(DOCS).as_posix() not in OWN_TESTS
)
# Pages that teach by example must show code (a page losing its blocks would pass silently).
PAGES_WITH_CODE = {
    "index.md",
    "getting-started.md",
    "maths.md",
    "guides/hyperparameters.md",
    "guides/meta-learning.md",
    "guides/distributed.md",
    "guides/deq.md",
    "guides/batching.md",
    "guides/constrained.md",
    "guides/compile.md",
    "guides/extending.md",
    "migration/jaxopt.md",
    "migration/torchopt.md",
    "migration/torchdeq.md",
}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    return BLOCK.findall((DOCS / page).read_text())


def docs_tools_installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    # The pages' problems are tiny; on a shared CI machine a second intra-op thread that
    # waits for a busy core slows small ops many-fold. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _page_param(page: str) -> object:
    marks = []
    if page == "guides/compile.md":
        # torch 2.13's dynamo reads .grad of a non-leaf tensor itself while tracing past the
        # implicit rule (a graph break at Function.apply) and warns about its own access.
        marks.append(
            pytest.mark.filterwarnings(
                "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
            )
        )
        # The compiled backward solve of a compiled caller uses inductor, whose CPU code
        # generation calls APIs torch 2.13 itself deprecates (as in test_compile.py).
        marks.append(
            pytest.mark.filterwarnings(
                "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
            )
        )
        marks.append(
            pytest.mark.filterwarnings(
                "ignore:`torch._prims_common.check` is deprecated:FutureWarning"
            )
        )
    return pytest.param(page, marks=marks, id=page)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
def test_page_python_blocks_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(page)
    if page in PAGES_WITH_CODE:
        assert blocks, f"docs/{page} should show runnable code"
    if not blocks:
        return
    # A real module: torch.compile resolves a function's globals by importing its module.
    name = "funcimplicit_docs_" + re.sub(r"\W", "_", page.removesuffix(".md"))
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        for block in blocks:  # blocks build on each other, like a reader's session
            exec(compile(block, str(DOCS / page), "exec"), module.__dict__)
    finally:
        del sys.modules[name]
        if page == "guides/compile.md":
            torch._dynamo.reset()
    assert capsys.readouterr().out, f"docs/{page}: the examples should print their results"


def test_pages_with_code_exist() -> None:
    missing = PAGES_WITH_CODE - set(PAGES)
    assert not missing, f"pages listed as teaching by example are missing: {sorted(missing)}"


def test_every_page_is_in_the_nav() -> None:
    config = CONFIG.read_text()
    absent = [page for page in [*PAGES, *OWN_TESTS] if f" {page}" not in config]
    assert not absent, f"docs pages missing from the nav of mkdocs.yml: {absent}"


def test_relative_links_point_at_pages() -> None:
    # mkdocs --strict checks this too, but only where the docs extras are installed.
    broken = []
    for page in [*PAGES, *OWN_TESTS]:
        text = BLOCK.sub("", (DOCS / page).read_text())
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
            if not (DOCS / page).parent.joinpath(target).resolve().is_file():
                broken.append(f"docs/{page} -> {target}")
    assert not broken, f"links to missing pages: {broken}"


def test_api_reference_lists_every_public_name() -> None:
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: funcimplicit\.(\w+)\s*$", api, re.M))
    missing = set(fi.__all__) - documented
    assert not missing, f"docs/api.md has no `::: funcimplicit.NAME` entry for {sorted(missing)}"


@pytest.mark.skipif(
    not docs_tools_installed(),
    reason="the site build needs mkdocs-material and mkdocstrings[python]: "
    "pip install -e '.[docs]'",
)
def test_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    maths = (site / "maths" / "index.html").read_text()
    assert 'class="arithmatex"' in maths  # formulas reach MathJax
    api = (site / "api" / "index.html").read_text()
    for name in fi.__all__:
        if name != "nn":
            assert f'id="funcimplicit.{name}"' in api, f"{name} is not rendered in the API page"
    assert 'id="funcimplicit.nn.ImplicitMetaGradientModule"' in api
