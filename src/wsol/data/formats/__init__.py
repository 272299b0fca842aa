"""On-disk format readers; importing this package registers every dataset (one line per reader)."""

from wsol.data.formats import wsoleval  # noqa: F401
from wsol.data import synthetic  # noqa: F401
from wsol.data.formats import glas  # noqa: F401
from wsol.data.formats import cub  # noqa: F401
from wsol.data.formats import flowers  # noqa: F401
from wsol.data.formats import cars  # noqa: F401
from wsol.data.formats import tinyimagenet  # noqa: F401
from wsol.data.formats import folder  # noqa: F401
from wsol.data.formats import camelyon16  # noqa: F401
from wsol.data import ihc  # noqa: F401
