"""The lba engine: data, models, regularizers, Lipschitz monitoring, attacks, training, store.

Importing this package imports no torch; the submodules that train (``data``, ``models``,
``regularizers``, ``lipschitz``, ``attacks``, ``train``) do. ``engine.store`` and
``engine.study`` are the torch-free contract that the terminal app reads.
"""

__version__ = "0.1.0"
