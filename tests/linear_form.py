"""A closed form written as a user of the contract would: sections that are one ``nn.Linear``.

One file: the form itself.  ``tests/integration/test_closed_form_contract.py``
registers it and checks that a fit uses it.  For ``out = x W^T + b`` the row of
cotangent ``c`` is ``c W`` at every point, and the Gram of the integrated rows
over ``m`` samples is ``m (sum_a w_a)^2 W^T K W`` with ``K = sum_r sum_p c c^T``.
"""

import torch
from torch import nn

from sklearn_lib._routes.forms.base import ClosedForm
from sklearn_lib._routes.tracing import feeds, quietly


class LinearForm(ClosedForm):
    """The closed form of a section whose source module is exactly an ``nn.Linear``."""

    title = "The nn.Linear formula"
    position_wise = True
    calls = 0  # how often a product was asked of any instance (for the tests)

    def __init__(self, linear):
        self.linear = linear

    @classmethod
    def detect(cls, session, section):
        module = session.model.get_submodule(section.src)
        if type(module) is not nn.Linear or not quietly(feeds, session.model, section):
            return None  # the output must reach the next node unchanged
        return cls(module)

    def vjp(self, x, points, cotangents, tangents=None):
        type(self).calls += 1
        W = self.linear.weight  # (d_out, d)
        rows = cotangents @ W  # (R, *positions, d): the same at every point
        if tangents is None:
            return rows.unsqueeze(1)
        directions, coefficients = tangents  # (J, d), (m, *positions, J)
        along = rows.reshape(rows.shape[0], -1, rows.shape[-1]) @ directions.T  # (R, P, J)
        coefficients = coefficients.reshape(coefficients.shape[0], -1, coefficients.shape[-1])
        return torch.einsum("rpj,mpj->rmj", along, coefficients)

    def gram(self, x, points, weights, cotangents):
        type(self).calls += 1
        W = self.linear.weight.to(torch.float64)
        c = cotangents.reshape(-1, cotangents.shape[-1]).to(torch.float64)  # (R P, d_out)
        m = points.shape[0] // weights.shape[0]
        return m * weights.sum().to(torch.float64) ** 2 * (W.T @ (c.T @ c) @ W)
