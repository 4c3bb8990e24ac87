"""The parts of Opacus fedrec uses, imported without Opacus's logging side effect.

``opacus.utils.module_utils`` calls ``logging.basicConfig`` when imported, which makes
every propagating library logger (Flower's included) print each line twice; the root
logger's handlers are restored right after the import. Import Opacus only from here.
"""

import logging

_root_handlers = list(logging.getLogger().handlers)
from opacus import PrivacyEngine  # noqa: E402
from opacus.accountants import RDPAccountant, create_accountant  # noqa: E402
from opacus.accountants.accountant import IAccountant  # noqa: E402
from opacus.accountants.analysis import rdp as rdp_analysis  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402
from opacus.utils.batch_memory_manager import BatchMemoryManager  # noqa: E402

logging.getLogger().handlers = _root_handlers

__all__ = [
    "BatchMemoryManager",
    "DPOptimizer",
    "IAccountant",
    "PrivacyEngine",
    "RDPAccountant",
    "create_accountant",
    "get_noise_multiplier",
    "rdp_analysis",
]
