"""Test-wide settings: one torch thread. The models in the tests are tiny, where intra-op threads cost more
than they give, and several tests run subprocesses beside the main one on a 2-core machine."""

import torch

from hopelab.malloc import keep_freed_memory

torch.set_num_threads(1)
keep_freed_memory()  # as the CLI does: the suite runs faster, and CLI tests see what users get
