"""Episode sampling: layout, the sampling contract, rotations and
reflections, errors."""

import numpy as np
import pytest
import tensorflow as tf

from tfmaml import data
from tfmaml.data import sources

CLASSES, PER_CLASS = 12, 7


def _id_source(classes=CLASSES, per_class=PER_CLASS, size=3):
    """Image `i` is filled with the value `i`, so gathered images say which
    example they are; the class of example `i` is `i // per_class`."""
    ids = np.arange(classes * per_class, dtype=np.float32)
    images = np.broadcast_to(
        ids[:, None, None, None], (len(ids), size, size, 1)
    )
    return sources.from_arrays(
        images.copy(), ids.astype(int) // per_class, name="ids"
    )


def _ids(images):
    return images[..., 0, 0, 0].numpy().astype(int)


def test_batches_have_the_maml_layout():
    x, y = next(iter(data.episodes(_id_source(), 4, 2, 3, 5)))
    assert x["support_x"].shape == (5, 8, 3, 3, 1)
    assert x["support_y"].shape == (5, 8)
    assert x["query_x"].shape == (5, 12, 3, 3, 1)
    assert y.shape == (5, 12)
    assert x["support_y"].dtype == tf.int32
    np.testing.assert_array_equal(x["support_y"][0], np.repeat(np.arange(4), 2))


def test_episodes_keep_the_sampling_contract():
    dataset = data.episodes(_id_source(), 5, 2, 3, 8, seed=3, num_batches=20)
    mappings = set()
    for x, y in dataset:
        support, query = _ids(x["support_x"]), _ids(x["query_x"])
        for task in range(8):
            s, q = support[task], query[task]
            # No example is twice in a task, nor in both support and query.
            assert len(set(s) | set(q)) == len(s) + len(q)
            # One class per label, distinct classes per task.
            classes = {}
            for ids, labels in ((s, x["support_y"][task]), (q, y[task])):
                for example, label in zip(ids, labels.numpy(), strict=True):
                    classes.setdefault(int(label), set()).add(
                        example // PER_CLASS
                    )
            assert all(len(c) == 1 for c in classes.values())
            assert len({next(iter(c)) for c in classes.values()}) == 5
            mappings.add(tuple(next(iter(classes[k])) for k in range(5)))
    # Labels are assigned in a random order: many class orders appear.
    assert len(mappings) > 100


def test_every_class_and_example_is_drawn():
    dataset = data.episodes(_id_source(), 3, 1, 1, 16, num_batches=40)
    seen = set()
    for x, _ in dataset:
        seen |= set(_ids(x["support_x"]).ravel()) | set(
            _ids(x["query_x"]).ravel()
        )
    assert seen == set(range(CLASSES * PER_CLASS))


def test_the_stream_is_reproducible_from_its_seed():
    def batches(seed):
        dataset = data.episodes(
            _id_source(), 3, 1, 2, 4, seed=seed, num_batches=3
        )
        return [_ids(x["query_x"]) for x, _ in dataset]

    for a, b in zip(batches(5), batches(5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batches(5)[0], batches(6)[0])


def test_rotations_make_rotated_classes():
    rng = np.random.default_rng(0)
    images = rng.random((3 * 4, 5, 5, 1)).astype(np.float32)
    source = sources.from_arrays(images, np.repeat(np.arange(3), 4))
    x, _ = next(iter(data.episodes(source, 6, 2, 2, 16, rotations=True)))
    rotations = [
        [tf.image.rot90(images[i], k).numpy() for k in range(4)]
        for i in range(len(images))
    ]
    turns_seen = set()
    for task in range(16):
        for way in range(6):
            block = x["support_x"][task, 2 * way : 2 * way + 2].numpy()
            matches = [
                (i, k)
                for image in block
                for i in range(len(images))
                for k in range(4)
                if np.array_equal(image, rotations[i][k])
            ]
            assert len(matches) == 2
            # Both support images of a class share its rotation.
            assert matches[0][1] == matches[1][1]
            turns_seen.add(matches[0][1])
    assert turns_seen == {0, 1, 2, 3}


def _dihedral(image):
    """The eight orientations of `image` in `episodes`' order: quarter
    turns of the image, then quarter turns of its mirror image."""
    return [
        tf.image.rot90(base, k).numpy()
        for base in (image, image[:, ::-1])
        for k in range(4)
    ]


@pytest.mark.parametrize("rotations", [False, True])
def test_reflections_make_mirrored_classes(rotations):
    rng = np.random.default_rng(1)
    images = rng.random((3 * 4, 5, 5, 1)).astype(np.float32)
    source = sources.from_arrays(images, np.repeat(np.arange(3), 4))
    orientations = 8 if rotations else 2
    ways = 3 * orientations
    host = data.episodes(
        source, ways, 1, 2, 8, seed=3, rotations=rotations, reflections=True
    )
    x, y = next(iter(host))
    choices = [_dihedral(image)[:: 1 if rotations else 4] for image in images]
    seen = set()
    for task in range(8):
        classes = set()
        for way in range(ways):
            support = x["support_x"][task, way].numpy()
            query = x["query_x"][task, 2 * way : 2 * way + 2].numpy()
            (match,) = [
                (i, k)
                for i in range(len(images))
                for k in range(orientations)
                if np.array_equal(support, choices[i][k])
            ]
            # The queries of a class are other examples in its orientation.
            for image in query:
                assert any(
                    np.array_equal(image, choices[j][match[1]])
                    for j in range(len(images))
                    if j // 4 == match[0] // 4 and j != match[0]
                )
            seen.add(match[1])
            classes.add((match[0] // 4, match[1]))
        # Every orientation of every class is one class of the task.
        assert len(classes) == ways
    assert seen == set(range(orientations))
    device = data.DeviceEpisodes(
        source, ways, 1, 2, 8, seed=3, rotations=rotations, reflections=True
    )
    gathered_x, gathered_y = device.gather(next(iter(device.indices())))
    np.testing.assert_array_equal(gathered_x["support_x"], x["support_x"])
    np.testing.assert_array_equal(gathered_y, y)


def test_preprocessing_resizes_scales_and_inverts():
    image = np.full((1, 105, 105, 1), 255, np.uint8)
    image[0, :53] = 0  # Top half ink.
    prepared = data.preprocessing((28, 28), invert=True)(image).numpy()
    assert prepared.shape == (1, 28, 28, 1)
    assert prepared[0, :13].min() == pytest.approx(1.0)
    assert prepared[0, 15:].max() == pytest.approx(0.0)
    plain = data.preprocessing()(image.astype(np.float32)).numpy()
    np.testing.assert_allclose(plain, image / 255.0)


def test_too_many_ways_names_the_split():
    with pytest.raises(ValueError, match="'ids' has 12 classes.*num_ways=13"):
        data.episodes(_id_source(), 13, 1, 1, 2)
    data.episodes(_id_source(), 13, 1, 1, 2, rotations=True)  # 48 classes.
    vectors = sources.from_arrays(
        np.zeros((8, 5), np.float32), np.arange(8) % 2
    )
    with pytest.raises(ValueError, match=r"reflections.*shape \(5,\)"):
        data.episodes(vectors, 2, 1, 1, 2, reflections=True)
    with pytest.raises(ValueError, match=r"24 classes \(with reflections\)"):
        data.episodes(_id_source(), 25, 1, 1, 2, reflections=True)
    with pytest.raises(
        ValueError, match=r"96 classes \(with rotations and reflections\)"
    ):
        data.episodes(
            _id_source(), 97, 1, 1, 2, rotations=True, reflections=True
        )


def test_too_many_examples_names_the_class():
    source = sources.from_arrays(
        np.zeros((9, 2, 2, 1)), ["a"] * 5 + ["b"] * 4, name="tiny"
    )
    with pytest.raises(
        ValueError, match="Class 'b' of split 'tiny' has 4.*= 5"
    ):
        data.episodes(source, 2, 2, 3, 1)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("num_ways", 0),
        ("num_shots", -1),
        ("num_queries", 1.5),
        ("meta_batch_size", 0),
    ],
)
def test_bad_counts_are_named(argument, value):
    counts = {
        "num_ways": 2,
        "num_shots": 1,
        "num_queries": 1,
        "meta_batch_size": 2,
    }
    counts[argument] = value
    with pytest.raises(ValueError, match=f"{argument}={value}"):
        data.episodes(_id_source(), **counts)


def test_datasets_and_arrays_are_sources_too():
    images = np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1)
    labels = np.arange(20) % 4
    from_arrays = data.episodes((images, labels), 2, 2, 2, 3, num_batches=1)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    from_dataset = data.episodes(dataset, 2, 2, 2, 3, num_batches=1)
    for x, y in (next(iter(from_arrays)), next(iter(from_dataset))):
        ids = _ids(x["support_x"])
        labels_of = {int(i) % 4 for i in ids[0]}
        assert len(labels_of) == 2 and y.shape == (3, 4)
    with pytest.raises(TypeError, match="Received: list"):
        data.episodes([images, labels], 2, 1, 1, 1)


def test_preprocessing_normalises_per_channel():
    image = np.full((1, 4, 4, 2), 51, np.uint8)  # 0.2 after scaling.
    prepared = data.preprocessing(mean=[0.1, 0.2], std=[0.5, 0.25])(image)
    np.testing.assert_allclose(prepared[0, 0, 0], [0.2, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="both `mean` and `std`"):
        data.preprocessing(mean=0.5)


# Device-resident episodes.


def test_device_episodes_gather_the_episodes_of_the_host_pipeline():
    source = _id_source(size=4)
    args = (source, 4, 2, 3, 5)
    host = data.episodes(*args, seed=7, rotations=True, num_batches=3)
    device = data.DeviceEpisodes(*args, seed=7, rotations=True, device="/CPU:0")
    assert device.images.device.endswith("CPU:0")
    indices = device.indices(num_batches=3)
    # The pipeline carries only indices, never images.
    assert set(indices.element_spec) == {"episode_rows", "episode_turns"}
    for (x, y), batch in zip(host, indices, strict=True):
        gathered_x, gathered_y = device.gather(batch)
        for key in x:
            np.testing.assert_array_equal(gathered_x[key], x[key])
        np.testing.assert_array_equal(gathered_y, y)


def test_fit_on_device_episodes_equals_fit_on_host_episodes():
    import keras

    import tfmaml

    images = np.random.default_rng(0).normal(size=(60, 16, 16, 1))
    split = sources.from_arrays(images.astype("float32"), np.arange(60) % 6)
    weights = []
    for mode in ("host", "device"):
        keras.utils.set_random_seed(0)
        net = tfmaml.networks.conv4((16, 16, 1), 3, filters=4)
        model = tfmaml.MAML(net, 0.1)
        model.compile(
            keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        if mode == "host":
            dataset = data.episodes(split, 3, 1, 2, 4, seed=1)
        else:
            device = data.DeviceEpisodes(split, 3, 1, 2, 4, seed=1)
            model.gather_episodes_from(device)
            dataset = device.indices()
        model.fit(dataset, steps_per_epoch=3, verbose=0)
        weights.append([v.numpy() for v in model.trainable_variables])
    for host, device in zip(*weights, strict=True):
        np.testing.assert_allclose(device, host, rtol=1e-6, atol=1e-7)


def test_index_batches_without_their_source_are_refused():
    import keras

    import tfmaml

    device = data.DeviceEpisodes(_id_source(), 3, 1, 2, 4)
    model = tfmaml.MAML(tfmaml.networks.mlp((4,), 3))
    model.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy())
    with pytest.raises(ValueError, match="gather_episodes_from"):
        model.fit(device.indices(), steps_per_epoch=1, verbose=0)


def _grouped_source(rotations_square=3):
    """Three groups: "a" with 5 classes, "b" with 4, "c" with 2; image `i`
    is filled with `i` as in `_id_source`."""
    groups = ["a"] * 5 + ["b"] * 4 + ["c"] * 2
    ids = np.arange(len(groups) * PER_CLASS, dtype=np.float32)
    images = np.broadcast_to(
        ids[:, None, None, None],
        (len(ids), rotations_square, rotations_square, 1),
    )
    classes = ids.astype(int) // PER_CLASS
    return sources.from_arrays(
        images.copy(),
        classes,
        metadata={"alphabet": np.array(groups)[classes]},
        name="grouped",
    ), np.array(groups)


def test_within_group_episodes_draw_every_task_from_one_group():
    source, group_of = _grouped_source()
    assert data.grouped_classes(source, "alphabet", 4) == {
        "a": (0, 1, 2, 3, 4),
        "b": (5, 6, 7, 8),
    }
    dataset = data.episodes(
        source, 4, 1, 2, 16, group_by="alphabet", seed=5, num_batches=8
    )
    seen = set()
    for x, _ in dataset:
        classes = _ids(x["support_x"]) // PER_CLASS  # [B, N]
        for task in classes:
            (group,) = set(group_of[task])  # One group per task...
            assert group != "c"  # ...never one with too few classes...
            assert len(set(task)) == 4  # ...and distinct classes.
            seen.add(group)
        # Queries are of the support's classes, label for label.
        query = _ids(x["query_x"]).reshape(16, 4, 2) // PER_CLASS
        np.testing.assert_array_equal(
            query, np.repeat(classes[..., None], 2, 2)
        )
    assert seen == {"a", "b"}
    again = next(
        iter(data.episodes(source, 4, 1, 2, 16, group_by="alphabet", seed=5))
    )
    first = next(iter(dataset))
    np.testing.assert_array_equal(again[0]["support_x"], first[0]["support_x"])


def test_within_group_episodes_count_rotated_classes():
    source, group_of = _grouped_source()
    # With rotations, "c" has 2 x 4 = 8 classes: enough for 6 ways.
    assert set(data.grouped_classes(source, "alphabet", 6, rotations=True)) == {
        "a",
        "b",
        "c",
    }
    x, _ = next(
        iter(
            data.episodes(
                source, 6, 1, 1, 32, rotations=True, group_by="alphabet"
            )
        )
    )
    for task in _ids(x["support_x"]) // PER_CLASS:
        assert len(set(group_of[task])) == 1


def test_within_group_episodes_count_mirrored_classes():
    source, _ = _grouped_source()
    # "c" has 2 classes, 4 with their mirror images, 16 with rotations too.
    assert set(data.grouped_classes(source, "alphabet", 4)) == {"a", "b"}
    assert set(
        data.grouped_classes(source, "alphabet", 4, reflections=True)
    ) == {"a", "b", "c"}
    assert set(
        data.grouped_classes(
            source, "alphabet", 16, rotations=True, reflections=True
        )
    ) == {"a", "b", "c"}


def test_within_group_errors_name_the_problem():
    source, _ = _grouped_source()
    with pytest.raises(ValueError, match=r"'script'.*fields: \['alphabet'\]"):
        data.episodes(source, 4, 1, 1, 2, group_by="script")
    with pytest.raises(ValueError, match=r"num_ways=6.*'a': 5, 'b': 4, 'c': 2"):
        data.episodes(source, 6, 1, 1, 2, group_by="alphabet")
    mixed = source._replace(
        metadata={
            "alphabet": np.where(np.arange(len(source.images)) == 3, "b", "a")
        }
    )
    with pytest.raises(ValueError, match=r"Class '0'.*several 'alphabet'"):
        data.grouped_classes(mixed, "alphabet", 2)


def _blob_source(classes=4, per_class=4, size=28):
    """Every image a bright 6x6 square at the centre of a dark image."""
    images = np.zeros((classes * per_class, size, size, 1), np.float32)
    images[:, 11:17, 11:17] = 1.0
    return sources.from_arrays(
        images, np.arange(len(images)) // per_class, name="blobs"
    )


def _ink_and_centre(images):
    """Total ink and its centre of mass (row, column) of each image."""
    images = np.asarray(images)[..., 0].reshape(-1, *images.shape[-3:-1])
    ink = images.sum(axis=(1, 2))
    rows, cols = np.indices(images.shape[1:])
    centre = np.stack(
        [
            (images * rows).sum(axis=(1, 2)) / ink,
            (images * cols).sum(axis=(1, 2)) / ink,
        ],
        axis=1,
    )
    return ink, centre


def test_augmentation_distorts_each_image_as_its_ranges_allow():
    source = _blob_source()
    plain, plain_y = next(iter(data.episodes(source, 3, 1, 2, 4, seed=5)))

    def augmented(**ranges):
        zero = dict(rotation=0.0, shear=0.0, scale=0.0, shift=0.0)
        augment = data.AffineAugmentation(**{**zero, **ranges})
        x, y = next(
            iter(data.episodes(source, 3, 1, 2, 4, seed=5, augment=augment))
        )
        np.testing.assert_array_equal(y, plain_y)  # Classes untouched.
        return np.concatenate(
            [x["support_x"].numpy(), x["query_x"].numpy()], axis=1
        )

    np.testing.assert_array_equal(
        augmented(), np.concatenate([plain["support_x"], plain["query_x"]], 1)
    )
    centre = (27 - 1) / 2 + 0.5  # The square's centre, pixels 11..16.
    # Rotation and shear keep area and centre; each image its own draw.
    images = augmented(rotation=30.0, shear=0.3)
    ink, centres = _ink_and_centre(images)
    np.testing.assert_allclose(ink, 36.0, rtol=0.03)
    np.testing.assert_allclose(centres, centre, atol=0.05)
    assert len({round(float(i), 3) for i in ink}) > len(ink) // 2
    # Scaling by s multiplies the area by s^2, within the range.
    ink, centres = _ink_and_centre(augmented(scale=0.2))
    assert 36 * 0.8**2 * 0.97 < ink.min() and ink.max() < 36 * 1.2**2 * 1.03
    assert ink.max() / ink.min() > 1.2
    np.testing.assert_allclose(centres, centre, atol=0.05)
    # A shift of at most 10% of 28 pixels moves the centre by at most 2.8.
    ink, centres = _ink_and_centre(augmented(shift=0.1))
    np.testing.assert_allclose(ink, 36.0, rtol=1e-4)
    moved = np.abs(centres - centre)
    assert moved.max() <= 2.8 + 1e-4 and moved.max() > 1.0


def test_augmented_streams_resume_exactly():
    augment = data.AffineAugmentation()
    stream = data.episodes(
        _blob_source(), 3, 1, 2, 4, seed=2, augment=augment, num_batches=3
    )
    resumed = data.episodes(
        _blob_source(), 3, 1, 2, 4, seed=2, augment=augment, start=2
    )
    third = list(stream)[2][0]["query_x"]
    np.testing.assert_array_equal(next(iter(resumed))[0]["query_x"], third)


def test_augmentation_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"AffineAugmentation.shear .*-0.1"):
        data.episodes(
            _blob_source(),
            3,
            1,
            2,
            4,
            augment=data.AffineAugmentation(shear=-0.1),
        )
    with pytest.raises(ValueError, match=r"scale must be below 1"):
        data.episodes(
            _blob_source(),
            3,
            1,
            2,
            4,
            augment=data.AffineAugmentation(scale=1.0),
        )
    with pytest.raises(TypeError, match=r"`augment` must be .* dict"):
        data.episodes(_blob_source(), 3, 1, 2, 4, augment={"shift": 0.1})
    with pytest.raises(TypeError, match=r"DeviceEpisodes .*`augment`"):
        data.DeviceEpisodes(
            _blob_source(), 3, 1, 2, 4, augment=data.AffineAugmentation()
        )
    flat = sources.from_arrays(
        np.zeros((16, 5), np.float32), np.arange(16) // 4
    )
    with pytest.raises(ValueError, match=r"split .* shape \(5,\)"):
        data.episodes(flat, 3, 1, 2, 4, augment=data.AffineAugmentation())
