"""The adversarial review of issue 24, run by ``benchmarks/adversarial_review.py``.

``harness`` runs and classifies cases, ``reference`` holds the independent
computations results are checked against (nothing there calls sklearn_lib),
``models`` the models the cases use, and each ``cases_*`` module one family
of case groups.
"""
