"""Built-in encoder entries, one module per vendor / model family.

Importing this package registers every entry; vendor libraries (timm, efficientnet package) are
imported only inside the builders, so this stays cheap.
"""

from __future__ import annotations

from mixmag.encoders.zoo import bioptimus, imagenet, mahmood, microsoft, owkin, paige, tiny

__all__ = ["bioptimus", "imagenet", "mahmood", "microsoft", "owkin", "paige", "tiny"]
