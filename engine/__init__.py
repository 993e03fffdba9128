"""raybalance: training classifiers on class-imbalanced data on Ray.

The import package is ``engine``; the ``raybalance`` command lives in ``jobs.cli``.
"""

__version__ = "0.1.0"
