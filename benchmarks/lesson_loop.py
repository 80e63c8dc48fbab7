"""A: the lesson's plain PyTorch training loop, kept as it is taught - the reference to beat.

The network, the loss, Adam(lr=1e-3), batch 100, a numpy permutation every epoch, tensor
indexing, and after each epoch the whole test set in one forward pass (as the lesson does it,
outside ``no_grad``). Only the "10000 epochs, stopped by hand" became a function for one epoch,
and ``lesson_tensors`` gives MNIST as the lesson holds it.

Run as a script, it is the lesson's whole program (imports, torchvision's MNIST, the seeds,
the loop, an accuracy printed per epoch), the process a user would time against
``lenet-train`` (``whole_command.py``)::

    python benchmarks/lesson_loop.py --epochs 5 --data-dir ~/.cache/lenet-lightning
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np
import torch


def lesson_tensors(data_dir: str) -> tuple[torch.Tensor, ...]:
    """MNIST as the lesson holds it: float (N, 1, 28, 28) images of raw 0-255 pixels, labels."""
    import torchvision.datasets

    train = torchvision.datasets.MNIST(data_dir, train=True, download=False)
    test = torchvision.datasets.MNIST(data_dir, train=False, download=False)
    return (
        train.data.unsqueeze(1).float(),
        train.targets,
        test.data.unsqueeze(1).float(),
        test.targets,
    )


class LeNet5(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5, padding=2)
        self.act1 = torch.nn.Tanh()
        self.pool1 = torch.nn.AvgPool2d(kernel_size=2, stride=2)

        self.conv2 = torch.nn.Conv2d(in_channels=6, out_channels=16, kernel_size=5, padding=0)
        self.act2 = torch.nn.Tanh()
        self.pool2 = torch.nn.AvgPool2d(kernel_size=2, stride=2)

        self.fc1 = torch.nn.Linear(5 * 5 * 16, 120)
        self.act3 = torch.nn.Tanh()

        self.fc2 = torch.nn.Linear(120, 84)
        self.act4 = torch.nn.Tanh()

        self.fc3 = torch.nn.Linear(84, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.act1(x)
        x = self.pool1(x)

        x = self.conv2(x)
        x = self.act2(x)
        x = self.pool2(x)

        x = x.view(x.size(0), x.size(1) * x.size(2) * x.size(3))

        x = self.fc1(x)
        x = self.act3(x)
        x = self.fc2(x)
        x = self.act4(x)
        x = self.fc3(x)

        return x


class LessonLoop:
    """The lesson's set-up (model, loss, optimiser on ``device``); ``epoch()`` runs one epoch."""

    def __init__(self, X_train, y_train, X_test, y_test, device, batch_size=100):
        self.lenet5 = LeNet5().to(device)
        self.loss = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.lenet5.parameters(), lr=1.0e-3)
        self.X_train, self.y_train = X_train, y_train
        self.X_test, self.y_test = X_test.to(device), y_test.to(device)
        self.device, self.batch_size = device, batch_size
        self.test_accuracy_history, self.test_loss_history = [], []

    def epoch(self) -> float:
        lenet5, loss, optimizer = self.lenet5, self.loss, self.optimizer
        X_train, y_train, X_test, y_test = self.X_train, self.y_train, self.X_test, self.y_test
        device, batch_size = self.device, self.batch_size

        order = np.random.permutation(len(X_train))
        for start_index in range(0, len(X_train), batch_size):
            optimizer.zero_grad()

            batch_indexes = order[start_index : start_index + batch_size]

            X_batch = X_train[batch_indexes].to(device)
            y_batch = y_train[batch_indexes].to(device)

            preds = lenet5.forward(X_batch)

            loss_value = loss(preds, y_batch)
            loss_value.backward()

            optimizer.step()

        test_preds = lenet5.forward(X_test)
        self.test_loss_history.append(loss(test_preds, y_test).data.cpu())

        accuracy = (test_preds.argmax(dim=1) == y_test).float().mean().data.cpu()
        self.test_accuracy_history.append(accuracy)
        return float(accuracy)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data-dir", required=True, help="the folder holding MNIST/raw")
    args = p.parse_args(argv)
    random.seed(0)  # the lesson's seeds
    np.random.seed(0)
    torch.manual_seed(0)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    loop = LessonLoop(*lesson_tensors(args.data_dir), device)
    for epoch in range(args.epochs):
        print(f"epoch {epoch + 1}: test accuracy {loop.epoch():.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
