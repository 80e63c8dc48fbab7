"""lenet-lightning: LeNet-5 on MNIST with PyTorch Lightning, configured by Hydra."""
