"""The contract of a closed form, the one applicability veto, and the registry.

A *closed form* gives a section's Jacobian products without a backward pass
per row.  Each is a :class:`ClosedForm` in a file of its own, registered in
:data:`REGISTRY`; the route table (:mod:`~sklearn_lib._routes.table`) walks
the registry once per call, on the probe, and keeps for each kind of product
the first form that offers it and passes its check against autograd.

Adding a form is one new file: subclass :class:`ClosedForm`, implement
:meth:`~ClosedForm.detect` and :meth:`~ClosedForm.vjp` (and
:meth:`~ClosedForm.gram` where a Gram is cheaper than rows), and
:func:`register` it.  The veto, the checks against autograd, the
fall-back warnings, padding and chunking are the route table's and
:class:`~sklearn_lib._routes.jacobian.SectionJacobian`'s, not the form's.
"""

import abc
from dataclasses import dataclass

import torch

from ..._core.numerics import max_relative_error
from ..._model.failures import Exploratory
from ..._model.inputs import n_rows, take_rows
from ..autograd import autograd_rows
from ..products import (
    directional,
    form_directional,
    form_gram,
    form_rows,
    gram_of,
    masked_inputs,
    probe_rows,
)

#: Samples on which a form is checked against autograd, and random +-1
#: combinations of all rows checked besides the first row.
CHECK_SAMPLES, CHECK_COMBINATIONS = 16, 2


@dataclass(frozen=True)
class Probe:
    """Where forms are checked against autograd: the probe's inputs, its points and rows.

    Attributes
    ----------
    x : torch.Tensor or dict of torch.Tensor
        The probe's model inputs (``n`` samples).
    points : torch.Tensor of shape (A * n, *positions, d)
        Alpha-major points of the integration rule at the section's source.
    rows : torch.Tensor or ExactRows of shape (R, P_out, d_next)
        Cotangent rows (the exact ones of the identity next basis).
    weights : torch.Tensor of shape (A,)
    tangents : (torch.Tensor, torch.Tensor) or None
        Directions ``(J, d)`` and coefficients ``(n, P_in, J)``, for the
        directional derivatives.
    """

    x: object
    points: object
    rows: object
    weights: object
    tangents: object = None

    def first(self, k, n_combinations):
        """The first ``k`` samples at every point, with the first row and ``n_combinations``
        random +-1 combinations of all rows (every output position and feature)."""
        n, n_alpha = n_rows(self.x), self.weights.shape[0]
        shape = self.points.shape[1:]
        points = self.points.reshape(n_alpha, n, *shape)[:, :k].flatten(0, 1)
        rows = probe_rows(self.rows.to(points.dtype), n_combinations)
        tangents = self.tangents and (self.tangents[0], self.tangents[1][:k])
        return Probe(take_rows(self.x, slice(0, k)), points, rows, self.weights, tangents)


@dataclass(frozen=True)
class Inapplicable:
    """What :meth:`ClosedForm.detect` may return instead of None: why the form does not
    apply, and whether the fit should warn (a section the form was meant for, such as
    attention, written with an operation it does not know)."""

    why: str
    warn: bool = False


class NotOffered(Exception):
    """Raised by a form's products where it turns out, on the values, not to apply (an
    export that fails): the check then counts the form as not offering the product, and
    the route table says why."""


class ClosedForm(abc.ABC):
    """A closed form of one section's Jacobian products (see the module docstring).

    Attributes
    ----------
    title : str
        How warnings and the fit's plan name the form.
    position_wise : bool
        Whether output position ``t`` depends on input position ``t`` alone:
        then positions fold into samples, and the exact rows of one position
        serve all (``k_next`` rows instead of ``P_out * k_next``).
    traced : bool
        Whether the form is recognised from the model's code (its modules
        or its fx trace), which :func:`structural_veto` may rule out.
    padding : bool
        Whether the form reads an ``attention_mask`` as the autograd route
        does; the others do not serve sections whose positions it covers.
    exact_rows : bool
        Whether :meth:`gram` takes exact cotangent rows as an
        :class:`~sklearn_lib._routes.cotangents.ExactRows` (made chunk by
        chunk) rather than all of them as one tensor.
    per_sample_rows : bool
        Whether the form takes cotangent rows with a sample axis, each
        sample's own ``(R, n, P_out, d_out)``: stochastic sources drawn per
        sample (more independent draws for the same work).
    exact_per_position : bool
        Whether exact rows of several output positions cost less per row than
        random combinations of them (they go back per position), so that a fit
        is priced on exact rows.
    reads_forward_kwargs : bool
        Whether the form reads the model as called with ``forward_kwargs``
        (a traced form that traces with them); the veto keeps the others off.
    sampled_rows_gain : bool
        Whether its products cost less than autograd's where every row is a
        random source (mixing every output position and feature).  A form
        whose gain is the structure of exact rows has none there, and is not
        tried for a fit that takes only such rows: its setup (an export) would
        be spent for nothing.
    """

    title = "A closed form"
    position_wise = False
    traced = True
    padding = False
    exact_rows = False
    per_sample_rows = False
    exact_per_position = False
    reads_forward_kwargs = False
    sampled_rows_gain = True

    @classmethod
    @abc.abstractmethod
    def detect(cls, session, section):
        """The form of ``section`` of the session's model, or None (or an
        :class:`Inapplicable` saying why) where it does not apply.

        Raises only what no call swallows (out of memory,
        ``KeyboardInterrupt``, ``SystemExit``; see
        :class:`~sklearn_lib._model.failures.Exploratory`): reading user code
        may fail in any way, which only means the section is not recognised.
        A detection that raises anything else is a fault of the form: the
        fit warns and does not use it.
        """

    @abc.abstractmethod
    def vjp(self, x, points, cotangents, tangents=None):
        """The rows ``J(point)^T c_r`` at every point, or directional derivatives.

        Parameters
        ----------
        x : torch.Tensor or dict of torch.Tensor
            The batch of model inputs the points come from.
        points : torch.Tensor of shape (m, *positions, d)
        cotangents : torch.Tensor of shape (R, *output positions, d_out)
        tangents : (torch.Tensor, torch.Tensor), optional
            ``(v, a)``, ``v`` of shape ``(J, d)`` and ``a`` of shape
            ``(m, *positions, J)``.

        Returns
        -------
        torch.Tensor or NotImplemented
            Rows ``(R, m or 1, *positions, d)`` (a point axis of size 1: the
            same at every point); with ``tangents`` the derivatives along
            ``a[m, p, j] * v[j]``, ``(R, m, J)``.  NotImplemented where the
            form does not cover the case.
        """

    def describe(self, kind):
        """How warnings name the form when it serves ``kind`` (its :attr:`title`)."""
        return self.title

    def gram(self, x, points, weights, cotangents):
        """``sum_x sum_r sum_s g g^T`` of the integrated rows, ``(d, d)``, or NotImplemented.

        ``points`` are alpha-major (``len(weights)`` points per sample).
        The default has none: the Gram is then made from the rows.
        """
        return NotImplemented

    def rows(self, x, points, rows, weights, chunks):
        """Integrated rows ``(r, n or 1, P_in, d)`` for each ``(start, stop)`` of ``chunks``."""
        for start, stop in chunks:
            yield form_rows(self, x, points, rows[start:stop], weights, n_rows(x))

    def batch_within_cache(self):
        """The most samples per batch for which the form's rows stay within the cache, as
        measured on the batches it served; None (the default): no bound of its own."""
        return None

    def statistics(self, session, section, rule):
        """An accumulator the statistics pass can feed, whose result gives ``M'`` for any
        next basis (``result().m_prime(matrix)``), or None (the default) where there is none."""
        return None

    def check(self, session, section, kind, probe):
        """Whether this form gives ``kind`` equal to autograd on the first samples.

        Parameters
        ----------
        session : ModelSession
        section : Section
        kind : {"rows", "gram", "tangents"}
        probe : Probe

        Returns
        -------
        passed : bool or None
            None where the form does not offer ``kind`` (NotImplemented, or
            :class:`NotOffered`).
        why : str
            Why it failed, or why it is not offered.
        """
        k = min(n_rows(probe.x), CHECK_SAMPLES)
        first = probe.first(k, CHECK_COMBINATIONS)
        x_first, points, rows, weights, tangents = (
            first.x,
            first.points,
            first.rows,
            first.weights,
            first.tangents,
        )
        # Any fault of a form (parameters under other names than it expects): it is not
        # used, and says why.  Out of memory propagates: autograd would need more, not less.
        with Exploratory() as making:
            closed = self._product(kind, x_first, points, rows, weights, tangents)
        if isinstance(making.error, NotOffered):
            return None, str(making.error)
        if making.error is not None:
            return False, f"it raised {type(making.error).__name__}: {making.error}"
        if closed is NotImplemented:
            return None, ""
        # Three rows: a plain loop (vmap would first import functorch, seconds on a cold start).
        chunks = autograd_rows(session, section, x_first, points, rows, weights, batched=False)
        # Padded input positions count nowhere, as in every pass (forms that read padding).
        auto = torch.cat(list(masked_inputs(chunks, x_first, points.shape[1:])))
        if kind == "gram":
            auto = gram_of([auto], k, points.shape[-1])
        elif kind == "tangents":
            auto = directional(auto, *tangents)
        auto = auto.to(torch.float64)
        if not torch.isfinite(auto).all():
            return None, ""  # nothing to check against: autograd's rows report it
        error = max_relative_error(closed.to(torch.float64).expand_as(auto), auto)
        if error <= session.tolerances.closed_form:
            return True, ""
        return False, f"it disagrees with autograd (relative error {error:.2e})"

    def _product(self, kind, x, points, rows, weights, tangents):
        if kind == "rows":
            return form_rows(self, x, points, rows, weights, n_rows(x))
        if kind == "gram":
            return form_gram(self, x, points, weights, rows)
        return form_directional(self, x, points, rows, weights, tangents)


def structural_veto(session, section, form=None):
    """Why no form read from the model's code (or ``form``) can apply to ``section``, or None.

    Such forms apply the model's modules to the node layers' activations as
    the model itself does: the node layers must be module inputs, the
    features on the last axis of the model's own layout, the model called
    without extra keyword arguments, and a section to the output must end at
    what the model returns itself.
    """
    if session.capture != "input":
        return "node layers are module outputs"
    if session.forward_kwargs and not getattr(form, "reads_forward_kwargs", False):
        return "the model is called with forward_kwargs"
    if section.to_output and session.output is not None:
        return "the output node is selected from what the model returns"
    if any(session.axis_of(node) not in (None, -1) for node in (section.src, section.dst)):
        return "feature_axis moves the features"
    return None


#: The forms the route table tries, most specific first.
REGISTRY = []


def register(form, *, first=False):
    """Add a :class:`ClosedForm` subclass to :data:`REGISTRY` (at its front with ``first``)."""
    if not (isinstance(form, type) and issubclass(form, ClosedForm)):
        raise TypeError(f"{form!r} is not a ClosedForm subclass")
    if form not in REGISTRY:
        REGISTRY.insert(0, form) if first else REGISTRY.append(form)
    return form


def unregister(form):
    """Remove a form from :data:`REGISTRY` (tests that add their own)."""
    if form in REGISTRY:
        REGISTRY.remove(form)


def applicable_forms(session, section, registry=None, skipped=None, warn=None):
    """Instances of the forms of ``registry`` (default :data:`REGISTRY`) that apply to
    ``section``, in order.

    ``skipped``, a list, gets ``"title: why"`` for each form that does not
    apply: the veto's reason, the form's own (an :class:`Inapplicable`), or
    that its pattern is not the section's.  ``warn``, a list, gets
    ``(title, why)`` of those that the fit should warn of.
    """
    found = []
    for form in REGISTRY if registry is None else registry:
        veto = structural_veto(session, section, form) if form.traced else None
        if veto is not None:
            why = veto
        else:
            instance = _detected(form, session, section)
            if isinstance(instance, ClosedForm):
                found.append(instance)
                continue
            why = "its pattern is not the section's" if form.traced else "it does not apply"
            if isinstance(instance, Inapplicable):
                why = instance.why
                if instance.warn and warn is not None:
                    warn.append((form.title, why))
        if skipped is not None:
            skipped.append(f"{form.title}: {why}")
    return found


def _detected(form, session, section):
    """``form.detect(session, section)``; a detection that raises (it should not: a model
    it cannot read is only not recognised) warns and does not apply."""
    detecting = Exploratory(
        f"Detecting {form.title} on the section {section.src!r} -> {section.dst_title}",
        "it is not used there",
    )
    with detecting:
        return form.detect(session, section)
    return Inapplicable(f"its detection raised {detecting.why}")
