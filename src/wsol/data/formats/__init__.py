"""On-disk format readers, one module per format, each defining a ``DatasetSpec`` (with its
``Options`` model). They are registered lazily by the table in :mod:`wsol.data.registry`:
importing this package imports no reader."""
