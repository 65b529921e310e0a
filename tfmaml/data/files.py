"""Reading published data files: checksums and image decoding that name
the file when they fail (shared by the sources in `tfmaml.data.sources`)."""

import hashlib

import tensorflow as tf


def check_sha256(path, expected: str) -> None:
    """Refuses an archive whose SHA-256 differs from its published sum.

    Raises:
        ValueError: Naming the file and both sums.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"Archive {path!r} has SHA-256 {digest.hexdigest()}, but the "
            f"published sum is {expected}: the file is corrupt or not the "
            "official archive. Download it again."
        )


def decode_image(data: bytes, where: str, *, channels: int) -> tf.Tensor:
    """Decodes a PNG or JPEG, naming `where` (the file) if it cannot.

    Raises:
        ValueError: If the bytes are not a decodable image.
    """
    try:
        return tf.io.decode_image(
            data, channels=channels, expand_animations=False
        )
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        message = getattr(error, "message", str(error))
        raise ValueError(
            f"Cannot decode the image {where}: {message}"
        ) from None
