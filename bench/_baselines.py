"""The loops lba is measured against, written the way a user would write them without lba.

``MinimalMLP`` and ``minimal_epoch``: the residual MLP and one epoch over tensors already on
the device (a permutation and slices, forward, cross-entropy, backward, SGD step, test
accuracy at the end): the limit an engine epoch is held to. ``dataloader_epoch``: the same
epoch fed through torchvision's FashionMNIST dataset and a DataLoader, the usual port.
``minimal_study``: the 15 runs of studies/paper-fmnist.toml one after another, regularizers
and the paper's attacks included, hand-written in the same plain style. None of this uses the
engine, so nothing the engine does to be fast leaks into its baseline.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from engine.data import Dataset

SOURCE = "/usr/share/datasets/fashion-mnist"


class MinimalMLP(nn.Module):
    """h = relu(W_in x); h += relu(W_r h) for each block; logits = W_out h (Keras init)."""

    def __init__(self, width: int = 20, depth: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.first = nn.Linear(784, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.last = nn.Linear(width, 10)
        self.drop = nn.Dropout(dropout)
        for layer in [self.first, *self.blocks, self.last]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(torch.relu(self.first(x.flatten(1))))
        for block in self.blocks:
            h = h + self.drop(torch.relu(block(h)))
        return self.last(h)

    def kernels(self) -> list[Tensor]:
        return [layer.weight for layer in [self.first, *self.blocks, self.last]]


def test_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum())
            for i in range(0, len(x), 2000)
        )
    model.train()
    return correct / len(x)


def minimal_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    penalty: Callable[[nn.Module], Tensor] | None = None,
    batch: int = 100,
) -> float:
    """One epoch over on-device tensors; returns the test accuracy."""
    model.train()
    order = torch.randperm(len(x), device=x.device)
    for start in range(0, len(x), batch):
        index = order[start : start + batch]
        loss = F.cross_entropy(model(x[index]), y[index])
        if penalty is not None:
            loss = loss + penalty(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return test_accuracy(model, x_test, y_test)


def torchvision_root(folder: Path) -> Path:
    """A torchvision-layout copy of the local Fashion-MNIST (``FashionMNIST/raw``, unzipped)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        with gzip.open(f"{SOURCE}/{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


def dataloaders(root: Path, train_subset: int = 10000) -> tuple[DataLoader, DataLoader]:
    """The usual port: torchvision dataset, ToTensor, a Subset and DataLoaders."""
    from torchvision import datasets, transforms

    to_tensor = transforms.ToTensor()
    train = datasets.FashionMNIST(root, train=True, transform=to_tensor, download=False)
    test = datasets.FashionMNIST(root, train=False, transform=to_tensor, download=False)
    train = Subset(train, range(train_subset))
    return (
        DataLoader(train, batch_size=100, shuffle=True),
        DataLoader(test, batch_size=2000, shuffle=False),
    )


def dataloader_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device,
) -> float:
    """The same epoch fed by DataLoaders; returns the test accuracy."""
    model.train()
    for images, labels in train_loader:
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    model.train()
    return correct / total


# -- the whole paper study, one run after another ----------------------------------------------


def lba_penalty(generator: torch.Generator) -> Callable[[MinimalMLP], Tensor]:
    """sigma(W_a) * ||W_a||_F for one kernel drawn per batch; sigma by SVD, detached."""

    def penalty(model: MinimalMLP) -> Tensor:
        kernels = model.kernels()
        weight = kernels[int(torch.randint(len(kernels), (1,), generator=generator))]
        sigma = torch.linalg.matrix_norm(weight.detach(), ord=2)
        return sigma * weight.norm()

    return penalty


def paper_attacks(model: nn.Module, x: Tensor, y: Tensor, n: int = 1000) -> list[float]:
    """The paper's attacks on the first 1,000 test images: FGSM .01/.02/.03 and PGD-10 at .02,
    a softmax-probability loss, no clipping, each attacked image min-max rescaled."""
    model.eval()
    x, y = x[:n].flatten(1), y[:n]

    def gradient(inputs: Tensor) -> Tensor:
        inputs = inputs.clone().requires_grad_(True)
        prob = model(inputs).softmax(1).gather(1, y[:, None]).clamp(1e-7, 1 - 1e-7)
        (grad,) = torch.autograd.grad(-prob.log().sum(), inputs)
        return grad

    def accuracy(inputs: Tensor) -> float:
        low = inputs.min(1, keepdim=True).values
        high = inputs.max(1, keepdim=True).values
        with torch.no_grad():
            rescaled = (inputs - low) / (high - low).clamp_min(1e-12)
            return float((model(rescaled).argmax(1) == y).float().mean())

    sign = gradient(x).sign()
    results = [accuracy(x + eps * sign) for eps in (0.01, 0.02, 0.03)]
    adv = x.clone()
    for _ in range(10):
        adv = adv + 0.005 * gradient(adv).sign()
        adv = torch.min(torch.max(adv, x - 0.02), x + 0.02)
    results.append(accuracy(adv))
    model.train()
    return results


def minimal_run(
    method: str, depth: int, lam: float, data: Dataset, epochs: int, n: int = 1000, seed: int = 0
) -> dict:
    """One cell of the paper study: train, test every epoch, attack at the end."""
    torch.manual_seed(seed)
    model = MinimalMLP(20, depth, dropout=0.2 if method == "dropout" else 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if method == "l2":

        def penalty(m: MinimalMLP) -> Tensor:
            return lam * sum(w.pow(2).sum() for w in m.kernels())
    elif method == "l1":

        def penalty(m: MinimalMLP) -> Tensor:
            return lam * sum(w.abs().sum() for w in m.kernels())
    elif method == "lba":
        penalty = lba_penalty(torch.Generator().manual_seed(seed))
    else:
        penalty = None
    x, y = data.x_train.flatten(1), data.y_train
    x_test, y_test = data.x_test.flatten(1), data.y_test
    accuracies = [
        minimal_epoch(model, optimizer, x, y, x_test, y_test, penalty) for _ in range(epochs)
    ]
    return {"test_acc": accuracies[-1], "attacks": paper_attacks(model, x_test, y_test, n)}


def minimal_study(data: Dataset, epochs: int, n: int = 1000) -> list[dict]:
    """The 15 runs of studies/paper-fmnist.toml, one after another."""
    lams = {
        ("l2", 3): 1e-3,
        ("l2", 5): 1e-3,
        ("l2", 7): 1e-3,
        ("l1", 3): 1e-4,
        ("l1", 5): 1e-3,
        ("l1", 7): 1e-4,
    }
    return [
        minimal_run(method, depth, lams.get((method, depth), 0.0), data, epochs, n)
        for depth in (3, 5, 7)
        for method in ("none", "lba", "l2", "l1", "dropout")
    ]
