"""`python -m pipeline` is `fcos-exp` (so `torchrun --nproc_per_node=N -m pipeline train` runs DDP)."""
from .cli import main

main()
