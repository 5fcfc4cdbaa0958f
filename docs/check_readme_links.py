"""Check that every built page README.md names exists: run after the docs build.

README.md links pages of the built site by their path in a checkout, e.g.
``docs/_build/auto_examples/plot_image_mlp.html``.  After
``python -m sphinx docs docs/_build`` this script checks that each such path
(any ``docs/_build/...html``, an ``#anchor`` aside) exists, so that a renamed
example or a build that left one out fails CI instead of leaving a dead link.
A README that names no built page passes.

Usage: ``python docs/check_readme_links.py [README] [BUILD_DIR]`` (defaults:
the repository's README.md and docs/_build).
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "docs/_build/"
# A path in a markdown link, an HTML attribute or plain text, up to ".html".
PAGE = re.compile(r"(?<![\w/.-])(?:\./)?(" + re.escape(PREFIX) + r"[\w./-]*?\.html)(?![\w])")


def named_pages(text):
    """The ``docs/_build/...html`` paths named in ``text``, in order, without repeats."""
    return list(dict.fromkeys(match.group(1) for match in PAGE.finditer(text)))


def missing_pages(readme, build_dir):
    """The pages ``readme`` names that are not under ``build_dir``, and all it names."""
    pages = named_pages(Path(readme).read_text(encoding="utf-8"))
    missing = [page for page in pages if not (Path(build_dir) / page[len(PREFIX) :]).is_file()]
    return missing, pages


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    readme = Path(args[0]) if args else ROOT / "README.md"
    build_dir = Path(args[1]) if len(args) > 1 else ROOT / "docs" / "_build"
    missing, pages = missing_pages(readme, build_dir)
    if missing:
        print(f"{readme} names pages that the docs build did not write (in {build_dir}):")
        for page in missing:
            print(f"  {page}")
        return 1
    print(f"{readme}: all {len(pages)} named page(s) of the docs build exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
