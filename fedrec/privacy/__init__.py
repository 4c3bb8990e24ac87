"""Privacy: Opacus DP-SGD and persistent accountants.

Opacus calls ``logging.basicConfig`` when imported, which makes every propagating
library logger (Flower's included) print each line twice; the root logger's handlers
are restored right after that import.
"""

import logging as _logging

_root_handlers = list(_logging.getLogger().handlers)
import opacus.utils.module_utils  # noqa: E402, F401

_logging.getLogger().handlers = _root_handlers
