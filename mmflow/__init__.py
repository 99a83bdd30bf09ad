"""mmflow: one flow-matching core shared by every modality.

Convention (fixed everywhere, see ``docs/design.md``): time ``t`` runs over [0, 1],
``t = 0`` is noise and ``t = 1`` is data; paths are ``x_t = alpha(t) x1 + sigma(t) x0`` and
networks predict the velocity ``u(x_t, t) = E[d x_t / dt | x_t]``.
"""

__version__ = "0.1.0"
