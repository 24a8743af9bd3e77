"""Deprecated: the local-services launcher moved to :mod:`infra.stack`."""

import warnings

from infra.stack import *  # noqa: F403
from infra.stack import __all__  # noqa: F401

warnings.warn(
    "flows.stack moved to infra.stack; import it from there", DeprecationWarning, stacklevel=2
)
