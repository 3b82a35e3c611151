"""Datasets and tasks. DATASETS is the one list of datasets: the CLI's --dataset choices, the task checks and
`load_task` read it.

    base.py           DatasetSource (what a dataset provides) and Split
    fashion_mnist.py  Fashion-MNIST (IDX files)
    cifar100.py       CIFAR-100 (torchvision's folder)
    imagefolder.py    a folder of class folders
    catalog.py        torch-free checks of a task request: names, class ids, image sizes, generated tasks
    tasks.py          Task: a class subset with seeded train/val splits in memory (`load_task`)

A new dataset is one file here (a `DatasetSource` subclass) and one line in DATASETS.
"""

from __future__ import annotations

from functools import cache

from edge_smsp.core.errors import DataError
from edge_smsp.core.registry import load_registered
from edge_smsp.data.base import DatasetSource

__all__ = ["DATASETS", "DatasetSource", "dataset_source"]

# name -> "module:class", in the order --dataset lists them.
DATASETS: dict[str, str] = {
    "fashion-mnist": "edge_smsp.data.fashion_mnist:FashionMnist",
    "imagefolder": "edge_smsp.data.imagefolder:ImageFolder",
    "cifar100": "edge_smsp.data.cifar100:Cifar100",
}


@cache
def dataset_source(name: str) -> DatasetSource:
    """The registered dataset called `name` (canonical spelling); DataError naming the choices otherwise."""
    return load_registered(DATASETS, name, "dataset", DataError)
