"""Test helpers: a section's Jacobian products by its decided routes, and by autograd alone."""

from dataclasses import replace

import torch

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.capture import inspect_node_layers
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.jacobian import SectionJacobian
from sklearn_lib._routes.products import KINDS
from sklearn_lib._routes.table import autograd_route, decide_routes

PLAIN = ((1.0,), (1.0,))


def section_of(session, x, src, dst=OUTPUT_NODE):
    """``Section(src, dst)`` with the shapes the model gives on ``x``."""
    names = [src] if dst == OUTPUT_NODE else [src, dst]
    with torch.no_grad():
        shapes, output_shape = inspect_node_layers(session, x, names)
    return Section(src, dst, shapes[src], output_shape if dst == OUTPUT_NODE else shapes[dst])


def route_of(session, x, src, dst=OUTPUT_NODE, rule=PLAIN, kinds=KINDS):
    """The section's route, decided on ``x`` as a fit decides it, for every kind in ``kinds``.

    A fit decides rows only where a Gram or directional derivative falls back
    to them; here they are decided on their own too, so that every product's
    closed form is known.
    """
    section = section_of(session, x, src, dst)
    rule = rule_tensors(rule, session.device)
    route = decide_routes(session, x, [section], rule, kinds)[section]
    if "rows" in kinds and route.rows is None:
        rows = decide_routes(session, x, [section], rule, ("rows",))[section]
        route = replace(route, rows=rows.rows, verdicts=route.verdicts + rows.verdicts)
    return route


def jacobians(session, x, src, dst=OUTPUT_NODE, rule=PLAIN, kinds=KINDS, **kwargs):
    """``(fast, slow)``: the section's products by its decided routes, and by autograd."""
    route = route_of(session, x, src, dst, rule, kinds)
    return (
        SectionJacobian(session, route, **kwargs),
        SectionJacobian(session, autograd_route(route.section), **kwargs),
    )
