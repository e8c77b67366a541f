"""One torch thread: two threads on a shared 2-core machine are slower, often by 10x (threads contend with the
other jobs on the host; measured while building the engine)."""
import torch

torch.set_num_threads(1)
