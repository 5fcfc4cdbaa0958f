"""The adversarial review of issue 24, run by ``benchmarks/adversarial_review.py``.

``harness`` runs and classifies cases, ``reference`` holds the independent
computations results are checked against (nothing there calls sklearn_lib),
``models`` the models the cases use, and each ``cases_*`` module one family
of case groups.
"""

import sys
from pathlib import Path

# The tests' models (toy_models) and independent references (_refs), shared with the
# review rather than written twice.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
