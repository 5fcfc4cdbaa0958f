"""The README's code runs as written, and every file the README and the docs name exists.

Every fenced ```python block of README.md is executed. The blocks under one top-level
heading ("## Usage", ...) continue each other, as a reader runs them: they share one
namespace and run in the README's order (asking for one block runs the blocks before it
first). Each block is its own test, named by the line of its opening fence, and its
tracebacks point at README.md's own lines. A block runs in a temporary folder, with
matplotlib's Agg backend.

A block that cannot run here carries a visible marker on the line right above its fence,
``<!-- not run: REASON -->``, and is skipped with that reason; nothing else is skipped
except blocks that need what a fresh clone may lack: an optional extra (transformers,
matplotlib, ...), or the paper's checkpoints (``$SKLEARN_LIB_CHECKPOINTS``). A block that
imports torch.distributed runs as one ``torchrun --nproc_per_node=1`` process would.

Shell and text blocks are not run, but the repository paths in them, in inline code and in
relative links must exist (in README.md, docs/reproduction.md and docs/reliability.md).
"""

import ast
import dataclasses
import importlib.util
import os
import re
import socket
import sys
import traceback
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "reproduction.md", ROOT / "docs" / "reliability.md"]

FENCE = re.compile(r" {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->")

# Modules of optional extras: a block needing one that is missing is skipped.
EXTRAS = {
    "transformers": ("transformers", 'pip install -e ".[models]"'),
    "skorch": ("skorch", 'pip install -e ".[models]"'),
    "matplotlib": ("matplotlib", 'pip install -e ".[plot]"'),
    "sklearn_lib.plotting": ("matplotlib", 'pip install -e ".[plot]"'),
    "tqdm": ("tqdm", 'pip install -e ".[progress]"'),
    "leidenalg": ("leidenalg", 'pip install -e ".[leiden]"'),
}
OPTIONAL_MODULES = {module for module, _ in EXTRAS.values()}

# Paths that are not in the repository, on purpose.
BUILT_BY_THE_DOCS = "docs/_build"  # the Sphinx site; its gallery pages are checked below
MADE_BY_THE_INSTALL_COMMAND = ".venv/"  # the README's own `python3 -m venv .venv`
OUTSIDE_THE_REPOSITORY = {
    # Where .ci/run looks for the paper's checkpoints; the README says they are not part of
    # this repository.
    "../shared/lib-paper",
}
# File types whose bare names (no folder) must be files of the repository, or files an
# example writes.
DOCUMENT_SUFFIXES = {".md", ".png", ".py", ".sh", ".txt", ".toml", ".html"}


# ---------------------------------------------------------------------------
# Markdown parsing


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # the opening fence, 1-based
    lang: str
    code: str
    section: str  # the "## " heading above it
    not_run: str | None  # the reason of a <!-- not run: ... --> marker right above
    marker_line: int | None  # that marker's line

    @property
    def id(self):
        return f"{self.path.name}:{self.line}"


def parse(path):
    """(blocks, prose): fenced blocks, and the text with every fenced line blanked."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, prose, section, i = [], list(lines), "(top)", 0
    while i < len(lines):
        match = FENCE.fullmatch(lines[i])
        if match is None:
            if lines[i].startswith("## "):
                section = lines[i][3:].strip()
            i += 1
            continue
        fence = match["fence"]
        close = re.compile(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*")
        end = next((j for j in range(i + 1, len(lines)) if close.fullmatch(lines[j])), None)
        assert end is not None, f"{path.name}:{i + 1}: code block never closed"
        above = next((k for k in range(i - 1, -1, -1) if lines[k].strip()), None)
        marker = NOT_RUN.fullmatch(lines[above].strip()) if above is not None else None
        blocks.append(
            Block(
                path=path,
                line=i + 1,
                lang=match["lang"].lower(),
                code="\n".join(lines[i + 1 : end]),
                section=section,
                not_run=marker["reason"] if marker else None,
                marker_line=above + 1 if marker else None,
            )
        )
        prose[i : end + 1] = [""] * (end + 1 - i)
        i = end + 1
    return blocks, "\n".join(prose)


README_BLOCKS, _ = parse(README)
PYTHON_BLOCKS = [b for b in README_BLOCKS if b.lang in ("python", "py")]


# ---------------------------------------------------------------------------
# What a block needs


def _imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _called_names(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            yield func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def missing_requirement(block):
    """Why a fresh clone cannot run ``block`` here (None: it can)."""
    tree = ast.parse(block.code)
    modules = set(_imported_modules(tree))
    for name, (module, install) in EXTRAS.items():
        needed = any(m == name or m.startswith(name + ".") for m in modules)
        if needed and importlib.util.find_spec(module) is None:
            return f"needs {module} ({install})"
    if "load_modular_addition" in set(_called_names(tree)):
        from sklearn_lib.models import find_checkpoint

        if find_checkpoint(0) is None:
            return "needs the paper's checkpoints: set SKLEARN_LIB_CHECKPOINTS to their folder"
    if any(m.startswith("torch.distributed") for m in modules):
        import torch.distributed

        if not torch.distributed.is_available():
            return "needs torch.distributed"
    return None


def _missing_optional_module(exc):
    """The optional module whose absence raised ``exc`` (or caused it), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            top = exc.name.split(".")[0]
            if top in OPTIONAL_MODULES:
                return top
        exc = exc.__cause__ or exc.__context__
    return None


# ---------------------------------------------------------------------------
# Running blocks


class _Section:
    """The namespace, folder and outcomes of one top-level README section."""

    def __init__(self, folder):
        self.folder = folder
        self.namespace = {"__name__": "__main__"}
        self.outcomes = {}  # block line -> ("passed" | "skipped" | "failed", message)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_environment():
    """What ``torchrun --nproc_per_node=1`` sets for its one process."""
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }


def _run(block, section, monkeypatch):
    """Run ``block`` in its section's namespace; return (outcome, message)."""
    if block.not_run is not None:
        return "skipped", f"{block.id}: marked 'not run: {block.not_run}'"
    reason = missing_requirement(block)
    if reason is not None:
        return "skipped", f"{block.id}: {reason}"
    code = compile("\n" * block.line + block.code, str(block.path), "exec")
    distributed = "torch.distributed" in block.code
    error = None
    with monkeypatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        patch.chdir(section.folder)
        patch.setenv("MPLBACKEND", "Agg")
        for name, value in (_torchrun_environment() if distributed else {}).items():
            patch.setenv(name, value)
        if "matplotlib" in sys.modules:
            sys.modules["matplotlib"].use("Agg")
        warnings.simplefilter("always")
        # Deprecations inside the libraries are theirs to fix, not the README's.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        try:
            exec(code, section.namespace)
        except Exception as exc:
            error = exc
        finally:
            if "matplotlib.pyplot" in sys.modules:
                sys.modules["matplotlib.pyplot"].close("all")
            left_initialised = distributed and _destroy_process_group()
    if error is not None:
        module = _missing_optional_module(error)
        if module is not None:
            install = next(i for m, i in EXTRAS.values() if m == module)
            return "skipped", f"{block.id}: needs {module} ({install})"
        return "failed", _describe_failure(block, error)
    if left_initialised:
        return "failed", f"{block.id}: the block leaves its process group initialised"
    if caught:
        shown = "\n".join(
            f"  {Path(w.filename).name}:{w.lineno}: {w.category.__name__}: {w.message}"
            for w in caught
        )
        return "failed", f"{block.id}: the block warns; a new user would see:\n{shown}"
    return "passed", ""


def _destroy_process_group():
    """Destroy a process group a block left behind; say whether there was one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def _describe_failure(block, exc):
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != str(block.path):
        tb = tb.tb_next
    lines = [
        f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(block.path)
    ]
    where = f"{block.path.name}:{lines[-1]}" if lines else block.id
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return f"{where}: the python block at {block.id} ({block.section}) failed:\n{text}"


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    return {}


def _section_of(block, sections, tmp_path_factory):
    if block.section not in sections:
        sections[block.section] = _Section(tmp_path_factory.mktemp("readme"))
    return sections[block.section]


@pytest.mark.slow  # the blocks train the demo MLP (a few seconds) and fit several bases
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_readme_python_block_runs(block, sections, tmp_path_factory, monkeypatch):
    section = _section_of(block, sections, tmp_path_factory)
    # The blocks this one continues: its section's earlier blocks, run first if not yet run.
    for earlier in PYTHON_BLOCKS:
        if earlier.section != block.section or earlier.line >= block.line:
            continue
        if earlier.line not in section.outcomes:
            section.outcomes[earlier.line] = _run(earlier, section, monkeypatch)
        outcome, message = section.outcomes[earlier.line]
        if outcome == "failed":
            pytest.fail(
                f"{block.id} continues the block at {earlier.id}, which failed:\n{message}",
                pytrace=False,
            )
    if block.line not in section.outcomes:
        section.outcomes[block.line] = _run(block, section, monkeypatch)
    outcome, message = section.outcomes[block.line]
    if outcome == "skipped":
        pytest.skip(message)
    if outcome == "failed":
        pytest.fail(message, pytrace=False)


def test_not_run_markers_are_few_and_sit_right_above_a_python_block():
    assert PYTHON_BLOCKS, "README.md has no python block"
    placed = {b.marker_line for b in PYTHON_BLOCKS if b.not_run is not None}
    for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if re.search(r"<!--\s*not run", line, flags=re.IGNORECASE):
            assert n in placed, (
                f"README.md:{n}: a 'not run' marker must be written <!-- not run: REASON --> "
                "on the line right above a ```python fence"
            )
    # Each not-run block is README code that CI never checks: keep them rare.
    marked = [f"{b.id} ({b.not_run})" for b in PYTHON_BLOCKS if b.not_run is not None]
    assert len(marked) <= 2, f"too many README blocks marked 'not run': {marked}"


# ---------------------------------------------------------------------------
# Files named in README.md and docs/*.md

PATH_TOKEN = re.compile(r"(?:\.{1,2}/)?[A-Za-z_.][\w.-]*(?:/[\w.*-]+)*/?")
SPLIT = re.compile(r"[\s=,;()\[\]\"'|`]+")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`([^`]+)`")


def _repository_names():
    """Names of the repository's files and folders, at any depth."""
    skip = {".git", ".venv", "_build", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found = set()
    for _folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        found.update(dirs)
        found.update(names)
    return found


def _written_by_examples():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "examples").glob("*.py"))
    return set(re.findall(r"[\"']([\w.-]+\.\w+)[\"']", text))


def _slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path):
    _, prose = parse(path)
    return {_slug(line.lstrip("#")) for line in prose.splitlines() if line.startswith("#")}


def named_paths(path):
    """(line, target, base): repository paths named in code, shell blocks and links."""
    blocks, prose = parse(path)
    found = []
    for block in blocks:
        if block.lang in ("python", "py"):
            continue  # run by the test above; the files they write are their own
        for offset, line in enumerate(block.code.splitlines(), start=block.line + 1):
            found += [(offset, token, ROOT) for token in SPLIT.split(line)]
    for span in CODE_SPAN.finditer(prose):
        line = prose.count("\n", 0, span.start()) + 1
        found += [(line, token, ROOT) for token in SPLIT.split(span[1])]
    without_code = CODE_SPAN.sub(lambda m: " " * len(m[0]), prose)
    for link in LINK.finditer(without_code):
        target = link["target"]
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        line = prose.count("\n", 0, link.start()) + 1
        found.append((line, "link:" + target, path.parent))
    return found


def _is_path(token):
    """Whether a token of code names a repository path (`docs/figures`, not `SSE/SST`)."""
    if "/" not in token.rstrip("/") or not PATH_TOKEN.fullmatch(token):
        return False
    parts = token.rstrip("/").split("/")
    top_level = {p.name for p in ROOT.iterdir()} | {".", ".."}
    return token.endswith("/") or bool(Path(parts[-1]).suffix) or parts[0] in top_level


def _is_bare_name(token):
    """A file name of a document type (`README.md`) or a folder (`models/`), no parent."""
    if re.fullmatch(r"[A-Za-z_.][\w.-]*/", token):
        return True
    return bool(re.fullmatch(r"[\w.-]+", token)) and Path(token).suffix in DOCUMENT_SUFFIXES


def missing_files(path):
    names, written = _repository_names(), _written_by_examples()
    problems = []
    for line, token, base in named_paths(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        anchor = ""
        if token.startswith("link:"):
            shown, _, anchor = token[len("link:") :].partition("#")
            file = base / shown if shown else path
            shown = shown or path.name
        else:
            shown = token.rstrip(".,:;")
            if not shown or shown.startswith(("/", "$", "~", "-")) or "://" in shown:
                continue  # absolute paths, variables, flags, URLs
            if _is_bare_name(shown):
                if shown.rstrip("/") not in names | written:
                    problems.append(f"{where}: {shown} is no file or folder of the repository")
                continue
            if not _is_path(shown):
                continue
            file = ROOT / shown  # commands and code name paths from the repository root
        relative = os.path.normpath(os.path.relpath(file, ROOT))
        if relative.startswith(".."):
            if os.path.normpath(shown) not in OUTSIDE_THE_REPOSITORY:
                problems.append(f"{where}: {shown} is outside the repository")
        elif relative.startswith(os.path.normpath(MADE_BY_THE_INSTALL_COMMAND)):
            continue
        elif relative == BUILT_BY_THE_DOCS or relative.startswith(BUILT_BY_THE_DOCS + "/"):
            # A gallery page is built from the example of the same name.
            page = re.fullmatch(r"docs/_build/auto_examples/(plot_\w+)\.html", relative)
            if page and not (ROOT / "examples" / f"{page[1]}.py").is_file():
                problems.append(f"{where}: {shown} has no example {page[1]}.py")
        elif not (ROOT / relative).exists():
            problems.append(f"{where}: {shown} does not exist")
        elif anchor and relative.endswith(".md") and anchor not in _anchors(ROOT / relative):
            problems.append(f"{where}: {shown} has no heading #{anchor}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_named_exists(path):
    problems = missing_files(path)
    assert not problems, "\n".join(problems)


def test_reliability_names_existing_tests():
    # docs/reliability.md names tests as `abbr::test_name`, with each abbreviation spelled out.
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    files = dict(re.findall(r"`(\w+)`\s+is\s+`(tests/[\w/.]+\.py)`", text))
    missing = []
    for abbr, name in re.findall(r"`(\w+)::(test_\w+)`", text):
        assert abbr in files, f"docs/reliability.md does not say which file {abbr!r} is"
        source = (ROOT / files[abbr]).read_text(encoding="utf-8")
        if not re.search(rf"^def {name}\(", source, flags=re.MULTILINE):
            missing.append(f"{abbr}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
