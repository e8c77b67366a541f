"""One torch thread: two threads on a shared 2-core machine are slower, often by 10x (see NOTES.md)."""
import torch

torch.set_num_threads(1)
