import os

import pytest
import torch

# 2-core machines run the suite with `-n 2`: one torch thread per worker avoids oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
