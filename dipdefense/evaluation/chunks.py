"""The evaluation's unit of work: a fixed chunk of the sampled dataset indices.

Chunks are cut from the global sample list, so an image always falls in the same chunk
whatever the number of devices; ranks take whole chunks (rank r: chunks r, r+N, ...),
and the attack of a chunk (seeded from the chunk) is the same on every machine.
"""

import torch
from torch.utils.data import Dataset


def sample_indices(dataset_size: int, num_samples: int | None, seed: int) -> list[int]:
    """``num_samples`` dataset indices drawn at random without replacement (seeded); all of
    them, in order, when ``num_samples`` is None or covers the data set."""
    if num_samples is None or num_samples >= dataset_size:
        return list(range(dataset_size))
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed))
    return order[:num_samples].tolist()


class ChunkDataset(Dataset):
    """Item k: (images [B, C, H, W] in [0, 1], labels [B], dataset indices [B])."""

    def __init__(self, dataset: Dataset, indices: list[int], chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.dataset = dataset
        self.chunks = [indices[i : i + chunk_size] for i in range(0, len(indices), chunk_size)]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = [self.dataset[i] for i in self.chunks[k]]
        images = torch.stack([x for x, _ in items])
        labels = torch.tensor([int(y) for _, y in items])
        return images, labels, torch.tensor(self.chunks[k])
