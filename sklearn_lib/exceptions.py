"""Warnings and errors specific to sklearn-lib."""


class StaleBasisWarning(UserWarning):
    """A fitted estimator is used after its model's parameters or buffers changed.

    The fitted bases describe the model as it was at ``fit``: after an
    optimiser step or a weight edit, ``transform``, ``score``,
    ``interaction_graph`` and the ablations would silently analyse another
    model with them.  Refit, or silence the warning with
    ``warnings.simplefilter("ignore", StaleBasisWarning)`` when the change is
    meant (e.g. a deliberate perturbation of the weights).
    """
