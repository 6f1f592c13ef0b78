"""Warnings attributed to the user's line of code, not to the library frame that raised them.

A warning raised from inside ``MCMC.run`` (the end-of-warm-up health check runs in a
``jax.debug.callback``) would otherwise point at ``jax/_src/debugging.py``, and one raised a few
calls deep in this package at this package: neither tells a user which of their calls it is
about, and filters by module would not match. :func:`warn_user` skips every frame of JAX,
NumPyro, Equinox, flowjax and this package (Python ≥ 3.12's ``skip_file_prefixes``), so the
warning names the first frame outside them. Where there is none (a callback that XLA runs on its
own thread, a command-line run), the warning names the package's function that raised it, so
``warnings.filterwarnings(..., module="numpyro_ebm")`` still selects it.
"""

from __future__ import annotations

import os
import sys
import warnings

import equinox
import flowjax
import jax
import jaxlib
import numpyro

__all__ = ["warn_user"]

#: Directories whose frames a warning skips: the libraries a run goes through, and this package.
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (*(m.__file__ for m in (jax, jaxlib, numpyro, equinox, flowjax)), __file__)
)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Emit ``message`` as a warning attributed to the caller outside these libraries.

    Args:
        message: The warning's text.
        category: Its class.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_user("the step size collapsed")
        >>> caught[0].message.args[0], caught[0].filename  # this example's code, the caller
        ('the step size collapsed', '<doctest numpyro_ebm._warnings.warn_user[1]>')
    """
    if _called_from_outside():
        warnings.warn(message, category, skip_file_prefixes=_LIBRARY_DIRS)
    else:
        warnings.warn(message, category, stacklevel=3)  # warn_user's caller's caller


def _called_from_outside() -> bool:
    """Whether the stack of this thread holds a frame outside the libraries (user code)."""
    frame = sys._getframe(2)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
            return True
        frame = frame.f_back
    return False
