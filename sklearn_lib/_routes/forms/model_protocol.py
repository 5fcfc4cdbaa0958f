"""A model's own closed forms: the optional ``lib_section_vjp`` / ``lib_section_gram`` protocol.

A model may define either or both methods (see the README's "Closed-form
sections"); they receive the parameters of the session's private copy by
``state_dict`` name, the section's node names (``dst`` None for the model
output, as the protocol is documented), the capture convention, and the
points.  Either returns ``NotImplemented`` for sections it does not cover.
"""

from .base import ClosedForm

_METHODS = ("lib_section_vjp", "lib_section_gram")


class ModelProtocol(ClosedForm):
    """A model's own ``lib_section_vjp`` / ``lib_section_gram`` for one section.

    Parameters
    ----------
    session : ModelSession
    section : Section
    """

    title = "The model's lib_section_vjp / lib_section_gram"
    traced = False  # the model decides for itself where its methods apply

    def __init__(self, session, section):
        self.session, self.section = session, section

    @classmethod
    def detect(cls, session, section):
        """The protocol where the session's model defines either method, else None."""
        if any(hasattr(session.model, method) for method in _METHODS):
            return cls(session, section)
        return None

    def describe(self, kind):
        method = "lib_section_gram" if kind == "gram" else "lib_section_vjp"
        return f"{type(self.session.model).__name__}.{method}"

    def _call(self, method, *args, **kwargs):
        function = getattr(self.session.model, method, None)
        if function is None:
            return NotImplemented
        session, section = self.session, self.section
        # The protocol's own encoding of the output node: None.
        dst = None if section.to_output else section.dst
        return function(session.params, section.src, dst, session.capture, *args, **kwargs)

    def vjp(self, x, points, cotangents, tangents=None):
        return self._call("lib_section_vjp", points, cotangents, tangents=tangents)

    def gram(self, x, points, weights, cotangents):
        return self._call("lib_section_gram", points, weights, cotangents)
