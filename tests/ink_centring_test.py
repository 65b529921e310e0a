"""InkCentring: each image's ink moved to the frame's centre (and scaled to
a radius of gyration, and sheared upright), checked against moments
computed here."""

import keras
import numpy as np
import pytest

from tfmaml import data


def _moments(images):
    """Centre of mass (row, column) and radius of gyration of each image."""
    mass = images.sum(-1)
    rows, columns = np.mgrid[: mass.shape[1], : mass.shape[2]]
    total = mass.sum((1, 2))
    row = (mass * rows).sum((1, 2)) / total
    column = (mass * columns).sum((1, 2)) / total
    spread = (
        mass
        * (
            (rows - row[:, None, None]) ** 2
            + (columns - column[:, None, None]) ** 2
        )
    ).sum((1, 2)) / total
    return row, column, np.sqrt(spread), total


def _strokes(count, size=41, seed=0):
    """Random blobs of ink, off centre, inside the frame."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size, 1), np.float32)
    for image in images:
        for _ in range(3):
            top, left = rng.integers(4, size - 16, size=2)
            height, width = rng.integers(2, 9, size=2)
            image[top : top + height, left : left + width] = rng.uniform(
                0.5, 1.0
            )
    return images


def _smooth_ink(count, size=41, seed=0):
    """Sums of Gaussian spots (sigma 2 pixels), smooth enough that bilinear
    resampling at any step keeps their moments."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size]
    images = np.zeros((count, size, size, 1), np.float32)
    for image in images:
        for _ in range(3):
            row, column = rng.uniform(12, size - 12, size=2)
            image[..., 0] += np.exp(
                -((rows - row) ** 2 + (columns - column) ** 2) / 8.0
            )
    return images


def test_a_square_off_centre_is_moved_exactly_to_the_centre():
    image = np.zeros((1, 21, 21, 1), np.float32)
    image[0, 2:5, 13:16] = 1.0  # Centre of mass (3, 14); the frame's (10, 10).
    expected = np.zeros_like(image)
    expected[0, 9:12, 9:12] = 1.0
    centred = data.InkCentring()(image).numpy()
    np.testing.assert_allclose(centred, expected, atol=1e-6)


def test_centres_of_mass_land_on_the_centre_and_the_ink_is_kept():
    images = _strokes(16)
    centred = data.InkCentring()(images).numpy()
    row, column, gyration, total = _moments(centred)
    np.testing.assert_allclose(row, 20.0, atol=1e-3)
    np.testing.assert_allclose(column, 20.0, atol=1e-3)
    # A translation keeps the ink (none falls outside); bilinear
    # interpolation by a fraction d of a pixel adds d (1 - d) <= 1/4 to the
    # variance along each axis.
    _, _, gyration_before, total_before = _moments(images)
    np.testing.assert_allclose(total, total_before, rtol=1e-5)
    added = gyration**2 - gyration_before**2
    assert np.all(added > -1e-3) and np.all(added < 0.5 + 1e-3)


def test_a_radius_scales_every_image_to_the_same_spread():
    images = _smooth_ink(16, seed=1)
    centred = data.InkCentring(radius=0.2)(images).numpy()
    row, column, gyration, _ = _moments(centred)
    np.testing.assert_allclose(row, 20.0, atol=0.05)
    np.testing.assert_allclose(column, 20.0, atol=0.05)
    np.testing.assert_allclose(gyration, 0.2 * 41, rtol=0.01)
    _, _, before, _ = _moments(images)
    assert np.ptp(before) > 2.0  # The spreads did differ.


def _slanted_ink(slant, count=4, size=41, seed=3):
    """Gaussian spots (sigma 2 pixels) whose columns are shifted by `slant`
    times their row's distance from the middle: the same drawings for every
    `slant`, sheared exactly (the shear is applied to the function, not
    resampled)."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size].astype(np.float64)
    middle = (size - 1) / 2
    images = np.zeros((count, size, size, 1), np.float32)
    for image in images:
        for _ in range(4):
            row, column = rng.uniform(13, size - 13, size=2)
            sheared = columns - slant * (rows - middle)
            image[..., 0] += np.exp(
                -((rows - row) ** 2 + (sheared - column) ** 2) / 8.0
            )
    return images


def _slant(images):
    """Each image's covariance of column and row over its row variance."""
    mass = images.sum(-1)
    rows, columns = np.mgrid[: mass.shape[1], : mass.shape[2]]
    total = mass.sum((1, 2))
    row = ((mass * rows).sum((1, 2)) / total)[:, None, None]
    column = ((mass * columns).sum((1, 2)) / total)[:, None, None]
    covariance = (mass * (rows - row) * (columns - column)).sum((1, 2))
    return covariance / (mass * (rows - row) ** 2).sum((1, 2))


def test_deslanting_removes_the_slant_and_undoes_a_known_shear():
    upright = _slanted_ink(0.0)
    leaning = _slanted_ink(0.4)
    assert np.all(np.abs(_slant(leaning) - _slant(upright)) > 0.3)
    layer = data.InkCentring(radius=0.2, deslant=True)
    from_upright = layer(upright).numpy()
    from_leaning = layer(leaning).numpy()
    np.testing.assert_allclose(_slant(from_leaning), 0.0, atol=0.01)
    row, column, gyration, _ = _moments(from_leaning)
    np.testing.assert_allclose(row, 20.0, atol=0.05)
    np.testing.assert_allclose(column, 20.0, atol=0.05)
    np.testing.assert_allclose(gyration, 0.2 * 41, rtol=0.01)
    # Both drawings of the same ink end up as one image (to within
    # bilinear resampling, 3% of the peak of about 1.7).
    np.testing.assert_allclose(from_leaning, from_upright, atol=0.05)
    # Without deslanting the lean stays.
    kept = data.InkCentring(radius=0.2)(leaning).numpy()
    np.testing.assert_allclose(_slant(kept), _slant(leaning), atol=0.02)


def test_a_blank_image_is_left_as_it_is_beside_others():
    images = _strokes(3)
    images[1] = 0.0
    centred = data.InkCentring(radius=0.2)(images).numpy()
    assert np.all(np.isfinite(centred))
    np.testing.assert_array_equal(centred[1], 0.0)
    assert centred[0].sum() > 0


def test_preprocessing_centres_raw_omniglot_like_images_before_resizing():
    raw = np.full((2, 105, 105, 1), 255, np.uint8)
    raw[0, 10:30, 60:90] = 0  # Dark ink, top right.
    raw[1, 70:100, 5:20] = 0  # Bottom left.
    prepared = data.preprocessing((28, 28), invert=True, centre_ink=True)(
        raw
    ).numpy()
    row, column, _, _ = _moments(prepared)
    np.testing.assert_allclose(row, 13.5, atol=0.05)
    np.testing.assert_allclose(column, 13.5, atol=0.05)
    plain = data.preprocessing((28, 28), invert=True)(raw).numpy()
    plain_row, _, _, _ = _moments(plain)
    assert abs(plain_row[0] - 13.5) > 5  # Not centred without it.


def test_the_layer_survives_a_keras_round_trip(tmp_path):
    inputs = keras.Input((41, 41, 1))
    model = keras.Model(
        inputs, data.InkCentring(radius=0.25, deslant=True)(inputs)
    )
    path = tmp_path / "centring.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    images = _strokes(4, seed=2)
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)
    assert loaded.layers[-1].radius == 0.25
    assert loaded.layers[-1].deslant is True


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="radius=1.5"):
        data.InkCentring(radius=1.5)
    with pytest.raises(ValueError, match=r"shape=\(41, 41\)"):
        data.InkCentring()(np.zeros((41, 41), np.float32))
    with pytest.raises(ValueError, match="needs `centre_ink=True`"):
        data.preprocessing((28, 28), ink_radius=0.2)
    with pytest.raises(TypeError, match="deslant='yes'"):
        data.InkCentring(deslant="yes")
    with pytest.raises(ValueError, match="deslant_ink=True"):
        data.preprocessing((28, 28), deslant_ink=True)
