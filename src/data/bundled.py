"""The MNIST files bundled with the repository (data/MNIST/raw/*.gz), unpacked on first use.

torchvision's MNIST reads the uncompressed IDX files from `<root>/MNIST/raw/`. Its own
download step would not accept the bundled `.gz` files (it checks the md5s of the
original archives, and these are compressed again, reproducibly), so the files are
decompressed here, before the dataset class is built, and checked against the md5s of
the original uncompressed files.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import IO

from src.utils.errors import UserError
from src.utils.io import atomic_write

# The dataset classes that read the bundled files: ours (configs/data/mnist.yaml) and
# torchvision's, which the configs of older checkpoints name.
MNIST_TARGETS = ("src.data.mnist.MNIST", "torchvision.datasets.MNIST")

# md5 of each original, uncompressed MNIST file (data/MNIST/README.md lists the same).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def unpack_mnist(root: Path) -> None:
    """Decompress each `<root>/MNIST/raw/<name>.gz` whose uncompressed file is missing.

    Each file is written to a temporary file beside it and renamed into place once its
    md5 is checked, so two processes unpacking at once both end with whole, correct
    files, and a damaged archive leaves nothing behind. A folder it cannot write to (a
    read-only checkout) is an error naming it, rather than unpacking to a cache
    elsewhere: the data then stays where `data.root` says it is.
    """
    raw = root / "MNIST" / "raw"
    for name, md5 in MNIST_MD5.items():
        archive, target = raw / f"{name}.gz", raw / name
        if target.exists() or not archive.is_file():
            continue
        try:
            atomic_write(target, lambda f: _decompress_checked(archive, f, md5))
        except OSError as err:  # a read-only checkout, a full disk
            raise UserError(
                f"Could not unpack the bundled {archive.name} into {raw}/: {err.strerror or err}. The first run needs "
                f"that folder writable, with about 55 MB free; or unpack the files there once yourself "
                f"(`gunzip -k {raw}/*.gz`), or point data.root at a folder whose MNIST/raw/ holds the uncompressed files."
            ) from None


def _decompress_checked(archive: Path, out: IO[bytes], md5: str) -> None:
    """Copy the decompressed bytes of `archive` to `out`; raise if their md5 is not `md5`."""
    digest = hashlib.md5()
    with gzip.open(archive, "rb") as f:
        while True:
            try:
                chunk = f.read(1 << 20)
            except (OSError, EOFError) as err:  # not gzip, or cut short
                raise UserError(f"{archive} is damaged ({err}): restore it, e.g. `git checkout -- {archive}`.") from None
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != md5:
        raise UserError(
            f"{archive} unpacks to a file whose md5 is {digest.hexdigest()}, not MNIST's {md5}: restore it, "
            f"e.g. `git checkout -- {archive}`."
        )
