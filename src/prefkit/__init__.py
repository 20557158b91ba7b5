"""prefkit: learning from preferences.

Feedback data (pairs with ties, annotator votes, rankings, ratings, thumbs) ->
reward models -> evaluation -> curation -> aligned policies.

Importing this package is cheap: it loads no torch, transformers or pyarrow.
Import the sub-packages you need (``prefkit.data``, ``prefkit.losses``, ...).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
