"""Running Gram sums (``_core.gram_sum``): float64 sums, float32 products only where certified."""

import numpy as np
import pytest
import torch

import sklearn_lib._core.gram_sum as gram_sum
from sklearn_lib._core.gram_sum import LOW_PRECISION_RTOL, GramSum, loewner_within


def _loewner_error(total, exact):
    """The smallest ``eta`` with ``-eta G <= total - G <= eta G``."""
    inverse = torch.linalg.inv(torch.linalg.cholesky(exact))
    return float(torch.linalg.eigvalsh(inverse @ (total - exact) @ inverse.T).abs().max())


@pytest.mark.parametrize("panel", [128, 10], ids=["one product", "four panels"])
def test_float64_products_agree_in_any_chunks(panel, monkeypatch):
    """To the bit on some CPUs (MKL's kernels on one Xeon), to a few units in the last
    place on others (an AVX-512 one): the test holds on any."""
    monkeypatch.setattr(gram_sum, "PANEL_WIDTH", panel)
    rows = torch.randn(900, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole, chunked = GramSum(40, "cpu"), GramSum(40, "cpu")
    whole.add(rows)
    for start in range(0, 900, 128):
        chunked.add(rows[start : start + 128])
    expected = rows.T @ rows
    scale = float(expected.abs().max())
    torch.testing.assert_close(whole.total, chunked.total, rtol=1e-14, atol=1e-14 * scale)
    # Panels are products of other shapes: an entry near zero (a cancelling sum) is
    # rounded otherwise than by one product, within 1e-13 of the Gram's scale.
    atol = 0 if panel == 128 else 1e-13 * float(expected.abs().max())
    torch.testing.assert_close(whole.total, expected, rtol=1e-13, atol=atol)
    assert whole.words == "float64 (the fit's dtype)"


@pytest.mark.parametrize("width", [1, 9, 37, 40])
def test_panels_fill_the_upper_triangle_of_the_product(width, monkeypatch):
    monkeypatch.setattr(gram_sum, "PANEL_WIDTH", 9)  # up to 4 panels of unequal widths
    rows = torch.randn(50, width, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.full((width, width), 7.0, dtype=torch.float64)
    gram_sum.add_gram_(target, rows, alpha=0.5)
    upper = torch.triu(torch.ones(width, width, dtype=torch.bool))
    expected = 7.0 + 0.5 * rows.T @ rows
    torch.testing.assert_close(target[upper], expected[upper], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("low", [None, torch.float32])
def test_the_sum_is_symmetric_whichever_products_made_it(low, monkeypatch):
    monkeypatch.setattr(gram_sum, "PANEL_WIDTH", 8)
    generator = torch.Generator().manual_seed(4)
    rows = torch.randn(300, 32, generator=generator)
    slopes = (torch.randn(300, 32, generator=generator) > 0).float()
    sums = GramSum(32, "cpu", low)
    for part in rows.split(100):  # the decision, then certified (or float64) products
        sums.add(part)
    sums.add(slopes, exact=torch.float32)
    sums.add_matrix(torch.eye(32), alpha=2.0)
    total = sums.total
    assert torch.equal(total, total.T)
    rows, slopes = rows.double(), slopes.double()
    expected = rows.T @ rows + slopes.T @ slopes + 2 * torch.eye(32, dtype=torch.float64)
    torch.testing.assert_close(total, expected, rtol=1e-5 if low else 1e-12, atol=1e-5)
    assert sums.total is total  # kept until the next add
    sums.add(rows[:1])
    assert sums.total is not total


def test_alpha_scales_and_matrices_add():
    rows = torch.randn(30, 4, dtype=torch.float64)
    sums = GramSum(4, "cpu")
    sums.add(rows, alpha=2.5)
    sums.add_matrix(torch.eye(4, dtype=torch.float64), alpha=3.0)
    torch.testing.assert_close(
        sums.total, 2.5 * rows.T @ rows + 3 * torch.eye(4, dtype=torch.float64)
    )
    assert sums.words == "float64 (the fit's dtype) and float64 (made by its closed form)"


def test_float32_products_where_certified_keep_the_gram_within_the_bound():
    rows = torch.randn(4096, 64, generator=torch.Generator().manual_seed(1))  # float32 rows
    sums = GramSum(64, "cpu", low=torch.float32)
    for start in range(0, 4096, 1024):
        sums.add(rows[start : start + 1024])
    assert sums.precision == torch.float32
    assert sums.why == "certified within 1e-05 on its first 1,024 rows"
    exact = rows.double().T @ rows.double()
    assert 0 < _loewner_error(sums.total, exact) <= LOW_PRECISION_RTOL
    assert sums.total.dtype == torch.float64


def test_an_ill_conditioned_gram_stays_in_float64():
    """Variances spread as on the paper's attention input: float32 cannot hold them.

    In directions that mix the features (axis-aligned ones, float32 holds to
    its relative precision).
    """
    generator = torch.Generator().manual_seed(2)
    scales = torch.logspace(0, -5.5, 32, dtype=torch.float64)  # variances down to 1e-11
    rotation = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64, generator=generator))[0]
    rows = torch.randn(2000, 32, dtype=torch.float64, generator=generator) * scales @ rotation
    rows = rows.float()
    sums = GramSum(32, "cpu", low=torch.float32)
    sums.add(rows)
    assert sums.precision == torch.float64
    assert sums.why == (
        "float32 products not within 1e-05 of the Gram in every direction on its first 2,000 rows"
    )
    exact = rows.double().T @ rows.double()
    torch.testing.assert_close(sums.total, exact, rtol=1e-13, atol=0)
    # Float32 products would have moved the small directions far past the bound.
    low = rows.T @ rows
    assert _loewner_error(low.double(), exact) > 100 * LOW_PRECISION_RTOL


def test_batches_narrower_than_the_gram_wait_for_one_that_can_certify():
    generator = torch.Generator().manual_seed(5)
    narrow, wide = (
        torch.randn(20, 50, generator=generator),
        torch.randn(500, 50, generator=generator),
    )
    sums = GramSum(50, "cpu", low=torch.float32)
    sums.add(narrow)  # multiplied in float64: nothing is decided on 20 rows
    assert sums.precision is None
    assert sums.words == "float64 (rows fewer than its width (50) to certify float32 on)"
    sums.add(wide)
    assert sums.precision == torch.float32
    exact = narrow.double().T @ narrow.double() + wide.double().T @ wide.double()
    assert _loewner_error(sums.total, exact) <= LOW_PRECISION_RTOL
    sums.add(torch.randn(5, 50, generator=generator))  # decided once: float32 from now on
    assert [dtype for dtype, _ in sums.used] == [torch.float64, torch.float32]
    assert sums.words.endswith("and float32 (certified within 1e-05 on its first 500 rows)")


def test_the_bound_is_what_decides(monkeypatch):
    rows = torch.randn(2048, 16, generator=torch.Generator().manual_seed(3))
    exact = rows.double().T @ rows.double()
    needed = _loewner_error((rows.T @ rows).double(), exact)
    monkeypatch.setattr(gram_sum, "LOW_PRECISION_RTOL", needed * 1.01)
    passing = GramSum(16, "cpu", low=torch.float32)
    passing.add(rows)
    assert passing.precision == torch.float32
    monkeypatch.setattr(gram_sum, "LOW_PRECISION_RTOL", needed * 0.99)
    failing = GramSum(16, "cpu", low=torch.float32)
    failing.add(rows)
    assert failing.precision == torch.float64


def test_exact_batches_skip_the_decision_and_are_said():
    slopes = (torch.rand(300, 8, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    sums = GramSum(8, "cpu", low=torch.float32)
    sums.add(slopes, exact=torch.float32)
    assert sums.precision is None  # nothing decided: those products are exact
    np.testing.assert_array_equal(sums.total.numpy(), (slopes.T @ slopes).double().numpy())
    assert sums.words == "float32 (exact: 0/1 entries)"


def test_no_rows_is_no_decision():
    sums = GramSum(3, "cpu", low=torch.float32)
    sums.add(torch.empty(0, 3))
    assert sums.precision is None and sums.words == "none (no rows)"
    assert torch.count_nonzero(sums.total) == 0


@pytest.mark.parametrize("low", [None, torch.float64])
def test_float64_fits_never_decide(low):
    sums = GramSum(3, "cpu", low=low)
    assert sums.precision == torch.float64 and sums.low is None


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_certificate_holds_both_sides(sign):
    generator = torch.Generator().manual_seed(6)
    rows = torch.randn(200, 6, dtype=torch.float64, generator=generator)
    gram = rows.T @ rows
    assert loewner_within(gram, sign * 0.5e-5 * gram, 1e-5)
    assert not loewner_within(gram, sign * 2e-5 * gram, 1e-5)
    # An error along the smallest direction only, on either side.
    values, vectors = torch.linalg.eigh(gram)
    smallest = torch.outer(vectors[:, 0], vectors[:, 0])
    assert loewner_within(gram, sign * 0.9e-5 * values[0] * smallest, 1e-5)
    assert not loewner_within(gram, sign * 1.1e-5 * values[0] * smallest, 1e-5)


def test_directions_without_variance_are_left_out_of_the_certificate():
    """A dead unit (all zeros) makes the Gram singular, not the float32 products wrong."""
    generator = torch.Generator().manual_seed(7)
    rows = torch.randn(500, 8, generator=generator)
    rows[:, 3] = 0
    sums = GramSum(8, "cpu", low=torch.float32)
    sums.add(rows)
    assert sums.precision == torch.float32
    gram = rows.double().T @ rows.double()
    error = torch.zeros(8, 8, dtype=torch.float64)
    error[3, 3] = 1e-30  # an error where there is no variance: not certified
    assert not loewner_within(gram, error, 1e-5)
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    assert not loewner_within(zeros, zeros, 1e-5)  # rows of zeros prove nothing
    duplicated = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert loewner_within(duplicated, zeros, 1e-5)  # no error at all, whatever the rank


@pytest.mark.parametrize("certified", [True, False])
def test_a_decided_batch_is_multiplied_once_in_each_dtype(certified, monkeypatch):
    calls = []
    product = gram_sum._upper_product
    monkeypatch.setattr(
        gram_sum, "_upper_product", lambda rows, dtype: calls.append(dtype) or product(rows, dtype)
    )
    adds = []
    monkeypatch.setattr(GramSum, "_add_rows", lambda *a: adds.append(a))
    rows = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    if not certified:  # a direction of variance 1e-12, rotated: float32 products fail
        rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
        rows = (rows * torch.tensor([1.0, 1e-6, 1.0, 1.0])) @ rotation[0]
    sums = GramSum(4, "cpu", low=torch.float32)
    sums.add(rows)
    # The certificate's two products; the one kept is added, none made again.
    assert calls == [torch.float64, torch.float32] and adds == []
    assert sums.precision == (torch.float32 if certified else torch.float64)
    expected = rows.double().T @ rows.double()
    torch.testing.assert_close(sums.total, expected, rtol=1e-5 if certified else 1e-12, atol=0)
