"""Datasets: MNIST, image folders."""
