"""A practitioner's own data and model, written offline from scikit-learn's datasets: the
breast-cancer and wine tables as CSV, the digits as a folder of PNGs, wine as an .npz, and a
model written exactly as the Flax NNX docs write one (tests/test_user_data.py,
tests/test_user_model.py, the README's guide in tests/test_docs.py)."""

import csv
import pathlib

import numpy as np
from flax import nnx
from sklearn import datasets


class Model(nnx.Module):
    """The Flax NNX docs' model (flax.readthedocs.io, "Flax basics"), unchanged."""

    def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, dmid, rngs=rngs)
        self.bn = nnx.BatchNorm(dmid, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.linear_out = nnx.Linear(dmid, dout, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.dropout(self.bn(self.linear(x))))
        return self.linear_out(x)


def write_table(path: pathlib.Path, bunch, label: str = "target") -> pathlib.Path:
    """A scikit-learn Bunch as a CSV table: its feature columns, then the label column."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*bunch.feature_names, label])
        for row, target in zip(bunch.data, bunch.target, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), int(target)])
    return path


def breast_cancer_csv(folder: pathlib.Path) -> pathlib.Path:
    return write_table(folder / "breast_cancer.csv", datasets.load_breast_cancer())


def wine_csv(folder: pathlib.Path) -> pathlib.Path:
    return write_table(folder / "wine.csv", datasets.load_wine())


def wine_npz(folder: pathlib.Path) -> pathlib.Path:
    wine = datasets.load_wine()
    np.savez(folder / "wine.npz", x=wine.data.astype(np.float32), y=wine.target)
    return folder / "wine.npz"


def digits_folder(folder: pathlib.Path) -> pathlib.Path:
    """The 8x8 digits as grayscale PNGs, digit_images/<class>/<index>.png (pixels 0..16 as
    0..255)."""
    from PIL import Image

    digits = datasets.load_digits()
    root = folder / "digit_images"
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        (root / str(target)).mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(root / str(target) / f"{index:04d}.png")
    return root
