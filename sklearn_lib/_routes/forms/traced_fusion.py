"""Chains of elementwise operations as one: their slope made once per batch.

A GELU written out (``0.5 * x * (1 + tanh(c * (x + 0.044715 * x ** 3))))``, as
Hugging Face's GPT-2 has it), a SiLU by hand, a scale and a shift: each is a
chain of elementwise operations of one input.  Sent back one operation at a
time, every row makes a temporary of the hidden width at each of them, and
many rows at once overflow the caches that one row at a time fits in.  As
one operation, the chain's slope ``d out / d z`` is made once per batch (by
autograd on the batch's values: the Jacobian of an elementwise chain is
diagonal), and the rows need one product, ``g * slope``.
"""

import torch

#: Operations that act element by element (binary ones with constants or with
#: other members of the chain, of the chain's shape, checked on the values).
POINTWISE = frozenset({"elementwise", "add", "sub", "mul", "div", "identity", "dropout"})


def chains(steps, graph):
    """The fusable chains of a section: ``{output node: (input node, nodes in order)}``.

    A chain is a set of at least two pointwise steps that all depend on the
    start through one input alone (a gate ``a * b`` of two inputs is no
    member), with one member read outside it (or the section's end).
    """
    dependent = graph.dependent | {graph.start}
    roots = {}  # pointwise node -> the inputs it depends on through pointwise steps
    for node in graph.nodes:
        if node in steps and steps[node].op.name in POINTWISE:
            found = set()
            for i in node.all_input_nodes:
                if i in dependent:
                    found |= roots.get(i, {i})
            roots[node] = found
    members = {}
    for node, found in roots.items():
        if len(found) == 1:
            members.setdefault(next(iter(found)), []).append(node)
    inside = set(graph.nodes)
    found = {}
    for z, nodes in members.items():
        group = set(nodes)
        read = [n for n in nodes if n is graph.end or any(u in inside and u not in group
                                                          for u in n.users)]  # fmt: skip
        if len(nodes) >= 2 and read == nodes[-1:]:  # the last alone read further on
            found[read[0]] = (z, tuple(nodes))
    return found


def slope(run, values, z, order):
    """The value of an elementwise chain's output (``order[-1]``) and ``d out / d z``,
    entrywise, at the batch's ``values``: the chain run once, with autograd.

    ``run(node, values)`` runs one node on the given values.
    """
    with torch.enable_grad():
        leaf = values[z].detach().requires_grad_(True)
        local = {**values, z: leaf}
        for node in order:
            local[node] = run(node, local)
        result = local[order[-1]]
        if result.shape != leaf.shape:
            raise ValueError("an elementwise chain that broadcasts its input")
        (derivative,) = torch.autograd.grad(result.sum(), leaf)
    return result.detach(), derivative
