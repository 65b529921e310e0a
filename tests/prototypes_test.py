"""ProtoNet and Proto-MAML: prototypes and logits as defined, the head
initialisation's formula and meta-gradient, learning, bad input, and the
round trips (`.keras`, SavedModel without tfmaml)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_test import _central_differences

import tfmaml
from tfmaml import prototype_head
from tfmaml import prototypes
from tfmaml import views
from tfmaml.evaluation import evaluate_adaptation

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _embedding(dim=6, units=4):
    return keras.Sequential(
        [
            keras.Input((dim,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(units),
        ]
    )


def _clusters(rng, tasks, ways, shots, queries, dim=6, noise=3.0):
    """Tasks whose classes differ in the first two input dimensions, drowned
    in noise on the others: an embedding must learn to ignore the noise."""
    x = {"support_x": [], "support_y": [], "query_x": []}
    y = []
    for _ in range(tasks):
        centres = rng.normal(size=(ways, 2)) * 2.0
        for key, count in (("support", shots), ("query", queries)):
            labels = np.repeat(np.arange(ways), count)
            points = rng.normal(size=(len(labels), dim)) * noise
            points[:, :2] = centres[labels] + 0.3 * rng.normal(
                size=(len(labels), 2)
            )
            x[f"{key}_x"].append(points.astype("float32"))
            if key == "support":
                x["support_y"].append(labels.astype("int32"))
            else:
                y.append(labels.astype("int32"))
    return {k: np.stack(v) for k, v in x.items()}, np.stack(y)


def _hand_logits(support, labels, queries, distance="squared_euclidean"):
    ways = labels.max() + 1
    centres = np.stack([support[labels == k].mean(0) for k in range(ways)])
    if distance == "cosine":
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        c = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        return q @ c.T, centres
    return -((queries[:, None] - centres[None]) ** 2).sum(-1), centres


@pytest.mark.parametrize("distance", prototype_head.DISTANCES)
def test_prototypes_and_logits_match_a_hand_computation(distance):
    rng = np.random.default_rng(0)
    support = rng.normal(size=(7, 3))
    labels = np.array([0, 1, 2, 1, 0, 2, 2])
    queries = rng.normal(size=(4, 3))
    expected, centres = _hand_logits(support, labels, queries, distance)
    found = prototypes.class_prototypes(
        tf.constant(support), tf.constant(labels), 3
    )
    np.testing.assert_allclose(found, centres, rtol=1e-12)
    logits = prototypes.prototype_logits(tf.constant(queries), found, distance)
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)


def test_protonet_predicts_the_hand_computed_logits_for_any_ways():
    model = tfmaml.ProtoNet(_embedding())
    model.compile("adam", loss=SCE, metrics=["accuracy"])
    rng = np.random.default_rng(1)
    for ways, shots in ((3, 2), (5, 1)):
        x, y = _clusters(rng, 2, ways, shots, 3)
        predicted = model.predict(x, batch_size=2, verbose=0)
        for task in range(2):
            support = model.base_model(x["support_x"][task]).numpy()
            queries = model.base_model(x["query_x"][task]).numpy()
            expected, _ = _hand_logits(support, x["support_y"][task], queries)
            np.testing.assert_allclose(
                predicted[task], expected, rtol=1e-4, atol=1e-4
            )
        # One task, from its support set alone: the same logits.
        np.testing.assert_allclose(
            model.adapt_and_predict(
                x["support_x"][0], x["support_y"][0], x["query_x"][0]
            ),
            predicted[0],
            rtol=1e-5,
            atol=1e-5,
        )


def test_protonet_learns_to_ignore_the_noise():
    model = tfmaml.ProtoNet(_embedding())
    model.compile(keras.optimizers.Adam(1e-2), loss=SCE, metrics=["accuracy"])
    rng = np.random.default_rng(2)
    test = _clusters(rng, 40, 5, 1, 5)
    before = model.evaluate(*test, batch_size=8, verbose=0, return_dict=True)
    train = _clusters(rng, 400, 5, 1, 5)
    model.fit(*train, batch_size=8, epochs=3, verbose=0)
    after = model.evaluate(*test, batch_size=8, verbose=0, return_dict=True)
    assert after["accuracy"] > before["accuracy"] + 0.25, (before, after)
    # The evaluation tool reports the same accuracy, with a CI.
    [result] = evaluate_adaptation(
        model,
        tf.data.Dataset.from_tensor_slices(test).batch(8),
        step_counts=(0,),
    )
    assert result.num_tasks == 40
    np.testing.assert_allclose(result.accuracy, after["accuracy"], atol=1e-6)


def test_bad_support_sets_are_named():
    model = tfmaml.ProtoNet(_embedding())
    model.compile("adam", loss=SCE)
    x, y = _clusters(np.random.default_rng(3), 1, 3, 2, 2)
    absent = x["support_y"][0].copy()
    absent[absent == 1] = 2  # Class 1 has no support example.
    with pytest.raises(tf.errors.InvalidArgumentError, match="absent"):
        model.adapt_and_predict(x["support_x"][0], absent, x["query_x"][0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="same ways"):
        model.evaluate(
            x, y + 3 * (y == 2), batch_size=1, verbose=0
        )  # A query class 5 the 3-way support set lacks.
    with pytest.raises(ValueError, match="no inner loop, so no `inner_steps`"):
        tfmaml.ProtoNet(_embedding(), inner_steps=1)
    with pytest.raises(ValueError, match="distance"):
        tfmaml.ProtoNet(_embedding(), distance="manhattan")
    with pytest.raises(ValueError, match="sparse cross-entropy"):
        tfmaml.ProtoNet(_embedding()).compile("adam", loss="mse")


def test_a_protonet_over_an_embedding_ensemble_sums_its_members_cosines(
    tmp_path,
):
    members = [_embedding(units=units) for units in (4, 3)]
    model = tfmaml.ProtoNet(tfmaml.networks.embedding_ensemble(members))
    model.compile("adam", loss=SCE)
    x, _ = _clusters(np.random.default_rng(8), 1, 4, 1, 3)
    support, labels, queries = (
        x["support_x"][0],
        x["support_y"][0],
        x["query_x"][0],
    )
    logits = model.adapt_and_predict(support, labels, queries).numpy()
    # One shot: each member's prototype is its support embedding, and the
    # joint squared distance is the sum over members of 2 - 2 cos.
    expected = sum(
        2.0
        * _hand_logits(
            m(support).numpy(), labels, m(queries).numpy(), "cosine"
        )[0]
        - 2.0
        for m in members
    )
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert [
        m.name for m in tfmaml.networks.ensemble_members(model.base_model)
    ] == [m.name for m in members]
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.adapt_and_predict(support, labels, queries), logits, atol=1e-6
    )


def test_an_embedding_ensemble_refuses_members_that_do_not_fit():
    with pytest.raises(ValueError, match="two or more members. Received 1"):
        tfmaml.networks.embedding_ensemble([_embedding()])
    with pytest.raises(
        ValueError, match=r"'wide' takes inputs of shape \(7,\)"
    ):
        wide = keras.Sequential(
            [keras.Input((7,)), keras.layers.Dense(2)], name="wide"
        )
        tfmaml.networks.embedding_ensemble([_embedding(), wide])
    image = tfmaml.networks.conv4((16, 16, 1), None, filters=2, name="flat")
    unflat = keras.Sequential(
        [keras.Input((16, 16, 1)), keras.layers.Conv2D(2, 3)], name="maps"
    )
    with pytest.raises(
        ValueError, match=r"'maps' outputs shape \(None, 14, 14, 2\)"
    ):
        tfmaml.networks.embedding_ensemble([image, unflat])


def _proto_maml(ways=3, **kwargs):
    model = tfmaml.ProtoMAML(
        keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(5, activation="tanh"),
                keras.layers.Dense(ways, name="head"),
            ]
        ),
        **{"inner_lr": 0.3, **kwargs},
    )
    model.compile(keras.optimizers.SGD(0.1), loss=SCE)
    return model


def test_proto_maml_initialises_the_head_from_the_prototypes():
    model = _proto_maml()
    x, _ = _clusters(np.random.default_rng(4), 1, 3, 2, 2)
    support, labels = x["support_x"][0], x["support_y"][0]
    problem = model.inner_problem()
    weights = problem.initialize(
        [tf.convert_to_tensor(w) for w in problem.weights],
        tf.constant(support),
        tf.constant(labels),
        [],
        False,
    )
    body = keras.Model(
        model.base_model.inputs, model.base_model.layers[0].output
    )
    embeddings = body(support).numpy()
    centres = np.stack([embeddings[labels == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(weights[2], 2 * centres.T, rtol=1e-5)
    np.testing.assert_allclose(weights[3], -(centres**2).sum(1), rtol=1e-5)
    # The body's weights are untouched; after 0 steps its logits rank the
    # classes as ProtoNet's do (they differ by |f(x)|^2 per example).
    for new, old in zip(weights[:2], problem.weights[:2], strict=True):
        np.testing.assert_array_equal(new, old)
    logits = model.adapt_and_predict(support, labels, support, steps=0)
    distances, _ = _hand_logits(embeddings, labels, embeddings)
    shift = (logits - distances).numpy()
    np.testing.assert_allclose(shift, shift[:, :1].repeat(3, 1), atol=1e-4)


def test_proto_maml_meta_gradient_matches_finite_differences(float64):
    model = _proto_maml()
    x, y = _clusters(np.random.default_rng(5), 2, 3, 2, 2)
    episode = tfmaml.Episode(
        support_x=tf.constant(x["support_x"], tf.float64),
        support_y=tf.constant(x["support_y"]),
        query_x=tf.constant(x["query_x"], tf.float64),
        query_y=tf.constant(y),
        sample_weight=None,
    )

    def meta_loss():
        results = model.solve_tasks(
            episode, steps=2, first_order=False, training=True
        )
        return tf.reduce_mean(results.loss)

    variables = model.base_model.trainable_variables
    with tf.GradientTape() as tape:
        loss = meta_loss()
    analytic = [
        np.zeros(v.shape) if g is None else g.numpy()
        for v, g in zip(variables, tape.gradient(loss, variables), strict=True)
    ]
    numeric = _central_differences(meta_loss, variables)
    flat = [np.concatenate([a.ravel() for a in g]) for g in (analytic, numeric)]
    error = np.linalg.norm(flat[0] - flat[1]) / np.linalg.norm(flat[1])
    assert error < 1e-6
    # The head's own initial weights are replaced in every task.
    np.testing.assert_allclose(analytic[2], 0.0, atol=1e-12)
    np.testing.assert_allclose(analytic[3], 0.0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["protonet", "proto_maml"])
def test_keras_file_and_export_give_the_models_outputs(
    kind, tmp_path, run_without_tfmaml
):
    model = (
        tfmaml.ProtoNet(_embedding(), distance="cosine")
        if kind == "protonet"
        else _proto_maml(ways=3, eval_inner_steps=2)
    )
    model.compile(keras.optimizers.Adam(1e-2), loss=SCE)
    rng = np.random.default_rng(6)
    model.fit(*_clusters(rng, 8, 3, 2, 2), batch_size=4, verbose=0)
    # ProtoNet serves any ways and shots; Proto-MAML its head's 3 ways.
    shapes = [(3, 2), (5, 1)] if kind == "protonet" else [(3, 2), (3, 1)]
    requests = []
    for ways, shots in shapes:
        x, _ = _clusters(rng, 1, ways, shots, 2)
        task = {k: v[0] for k, v in x.items()}
        task["expected"] = model.adapt_and_predict(
            task["support_x"], task["support_y"], task["query_x"]
        ).numpy()
        requests.append(task)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded) is type(model)
    for task in requests:
        np.testing.assert_allclose(
            loaded.adapt_and_predict(
                task["support_x"], task["support_y"], task["query_x"]
            ),
            task["expected"],
            atol=1e-5,
        )
        np.testing.assert_allclose(
            model.adapt(task["support_x"], task["support_y"])(task["query_x"]),
            task["expected"],
            atol=1e-5,
        )
    model.export(tmp_path / "saved")
    for i, task in enumerate(requests):
        np.savez(tmp_path / f"task{i}.npz", **task)
    result = run_without_tfmaml(
        f"""
        import json
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        for i in range({len(requests)}):
            task = np.load(f"task{{i}}.npz")
            out = served.adapt_and_predict(
                support_x=task["support_x"],
                support_y=task["support_y"],
                query_x=task["query_x"],
            )
            print(json.dumps(out["predictions"].numpy().tolist()))
        """
    )
    for line, task in zip(
        result.stdout.splitlines()[-len(requests) :], requests, strict=True
    ):
        np.testing.assert_allclose(
            np.array(json.loads(line)), task["expected"], atol=1e-5
        )


def _image_embedding():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )


def _image_task(seed):
    """A support set of 4 images of 3 classes and 5 queries, 8x8x1."""
    rng = np.random.default_rng(seed)
    support = rng.uniform(size=(4, 8, 8, 1)).astype("f4")
    queries = rng.uniform(size=(5, 8, 8, 1)).astype("f4")
    return support, np.array([0, 1, 2, 0], "int32"), queries


def _served_logits(model, support, labels, queries, tmp_path, run):
    """The logits of `model`'s export's `adapt_and_predict` on one task, in
    a client without tfmaml (`run`: the `run_without_tfmaml` fixture)."""
    model.export(tmp_path / "saved")
    np.savez(tmp_path / "task.npz", s=support, y=labels, q=queries)
    result = run(
        """
        import json
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("saved")
        task = np.load("task.npz")
        out = served.adapt_and_predict(
            support_x=task["s"], support_y=task["y"], query_x=task["q"]
        )
        print(json.dumps(out["predictions"].numpy().tolist()))
        """
    )
    return np.array(json.loads(result.stdout.splitlines()[-1]))


def _logits_on_every_path(model, support, labels, queries, tmp_path, run):
    """`({path: logits of the queries}, the model loaded from .keras)`:
    `adapt_and_predict`, `predict` on a batch of one task, `adapt` and its
    `.keras` file, the model's `.keras` file, and its export served
    without tfmaml (`run`: the `run_without_tfmaml` fixture)."""
    batch = {
        "support_x": support[None],
        "support_y": labels[None],
        "query_x": queries[None],
    }
    adapted = model.adapt(support, labels)
    adapted.save(tmp_path / "adapted.keras")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    paths = {
        "adapt_and_predict": model.adapt_and_predict(support, labels, queries),
        "predict": model.predict(batch, verbose=0)[0],
        "adapt": adapted(queries),
        "adapted .keras": keras.models.load_model(tmp_path / "adapted.keras")(
            queries
        ),
        ".keras": loaded.adapt_and_predict(support, labels, queries),
        "export without tfmaml": _served_logits(
            model, support, labels, queries, tmp_path, run
        ),
    }
    return paths, loaded


def _viewed(net, images, count, augment):
    """By hand: the mean embedding of `images` and of their `count` copies,
    copy i moving every image by the i-th fixed draw."""
    copies = [
        augment(
            images, tf.constant([views.VIEW_SEED, i], tf.int64), one_draw=True
        )
        for i in range(count)
    ]
    assert not np.allclose(copies[0], images)
    return ((net(images) + sum(net(c) for c in copies)) / (1 + count)).numpy()


def test_support_views_average_each_support_image_with_its_copies(
    tmp_path, run_without_tfmaml
):
    count = 3
    augment = tfmaml.data.AffineAugmentation(20.0, 0.1, 0.1, 0.1)
    model = tfmaml.ProtoNet(
        _image_embedding(), support_views=count, view_augmentation=augment
    )
    model.compile("adam", loss=SCE)
    support, labels, queries = _image_task(3)
    net = model.base_model
    embedded = _viewed(net, support, count, augment)
    expected, _ = _hand_logits(embedded, labels, net(queries).numpy())
    logits = model.adapt_and_predict(support, labels, queries).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # Evaluation's path (every task of a batch) and `adapt` agree.
    batch = {
        "support_x": support[None],
        "support_y": labels[None],
        "query_x": queries[None],
    }
    np.testing.assert_allclose(
        model.predict(batch, verbose=0)[0], expected, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        model.adapt(support, labels)(queries), expected, rtol=1e-5, atol=1e-5
    )
    # The same draw for every image: the support's order changes nothing.
    order = np.array([3, 1, 0, 2])
    np.testing.assert_allclose(
        model.adapt_and_predict(support[order], labels[order], queries),
        logits,
        rtol=1e-5,
        atol=1e-5,
    )
    # Without distortion the copies are the images: plain prototypes.
    still = tfmaml.ProtoNet(
        net,
        support_views=2,
        view_augmentation={"rotation": 0, "shear": 0, "scale": 0, "shift": 0},
    )
    still.compile("adam", loss=SCE)
    plain, _ = _hand_logits(net(support).numpy(), labels, net(queries).numpy())
    np.testing.assert_allclose(
        still.adapt_and_predict(support, labels, queries), plain, atol=1e-5
    )
    # The .keras file and the export (a client without tfmaml) keep them.
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert (loaded.support_views, loaded.view_augmentation) == (count, augment)
    np.testing.assert_allclose(
        loaded.adapt_and_predict(support, labels, queries), logits, atol=1e-6
    )
    served = _served_logits(
        model, support, labels, queries, tmp_path, run_without_tfmaml
    )
    np.testing.assert_allclose(served, logits, atol=1e-5)


def test_query_views_average_each_query_with_its_copies(
    tmp_path, run_without_tfmaml
):
    augment = tfmaml.data.AffineAugmentation(20.0, 0.1, 0.1, 0.1)
    model = tfmaml.ProtoNet(
        _image_embedding(),
        support_views=2,
        query_views=3,
        view_augmentation=augment,
    )
    model.compile("adam", loss=SCE)
    support, labels, queries = _image_task(5)
    net = model.base_model
    expected, _ = _hand_logits(
        _viewed(net, support, 2, augment),
        labels,
        _viewed(net, queries, 3, augment),
    )
    batch = {
        "support_x": support[None],
        "support_y": labels[None],
        "query_x": queries[None],
    }
    adapted = model.adapt(support, labels)
    paths = {
        "adapt_and_predict": model.adapt_and_predict(support, labels, queries),
        "predict": model.predict(batch, verbose=0)[0],
        "adapt": adapted(queries),
        # A query's copies are its own: in a network without batch
        # statistics its batch changes nothing.
        "one query at a time": np.concatenate(
            [model.adapt_and_predict(support, labels, q[None]) for q in queries]
        ),
    }
    for path, logits in paths.items():
        np.testing.assert_allclose(
            logits, expected, rtol=1e-5, atol=1e-5, err_msg=path
        )
    # The adapted model, the .keras file and the export keep the views.
    adapted.save(tmp_path / "adapted.keras")
    np.testing.assert_allclose(
        keras.models.load_model(tmp_path / "adapted.keras")(queries),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.query_views == 3
    np.testing.assert_allclose(
        loaded.adapt_and_predict(support, labels, queries),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    served = _served_logits(
        model, support, labels, queries, tmp_path, run_without_tfmaml
    )
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)


def test_views_a_fitted_head_and_an_assignment_leave_training_as_it_was():
    nets = [_image_embedding(), _image_embedding()]
    nets[1].set_weights(nets[0].get_weights())
    models = [
        tfmaml.ProtoNet(
            nets[0],
            support_views=4,
            query_views=2,
            head_steps=5,
            assignment_steps=10,
        ),
        tfmaml.ProtoNet(nets[1]),
    ]
    rng = np.random.default_rng(4)
    x = {
        "support_x": rng.uniform(size=(2, 3, 8, 8, 1)).astype("f4"),
        "support_y": np.tile(np.arange(3, dtype="int32"), (2, 1)),
        "query_x": rng.uniform(size=(2, 6, 8, 8, 1)).astype("f4"),
    }
    y = np.tile(np.repeat(np.arange(3, dtype="int32"), 2), (2, 1))
    losses = []
    for model in models:
        model.compile(keras.optimizers.SGD(0.1), loss=SCE)
        losses.append([model.train_on_batch(x, y) for _ in range(2)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    # Evaluation uses the views and the head: there the two differ.
    assert not np.allclose(
        models[0].predict(x, verbose=0), models[1].predict(x, verbose=0)
    )


def test_bad_views_are_named():
    with pytest.raises(ValueError, match=r"support_views=-1"):
        tfmaml.ProtoNet(_image_embedding(), support_views=-1)
    with pytest.raises(ValueError, match=r"support_views=2.5"):
        tfmaml.ProtoNet(_image_embedding(), support_views=2.5)
    with pytest.raises(ValueError, match=r"query_views=True"):
        tfmaml.ProtoNet(_image_embedding(), query_views=True)
    with pytest.raises(TypeError, match="view_augmentation.*list"):
        tfmaml.ProtoNet(
            _image_embedding(), support_views=2, view_augmentation=[1.0]
        )
    with pytest.raises(ValueError, match=r"AffineAugmentation.shift"):
        tfmaml.ProtoNet(
            _image_embedding(),
            support_views=2,
            view_augmentation={"shift": -0.1},
        )
    model = tfmaml.ProtoNet(_embedding(), support_views=2)
    model.compile("adam", loss=SCE)
    with pytest.raises(ValueError, match=r"support_views.*shape \(3, 6\)"):
        model.adapt_and_predict(
            np.zeros((3, 6), "f4"), np.arange(3), np.zeros((2, 6), "f4")
        )
    model = tfmaml.ProtoNet(_embedding(), query_views=2)
    model.compile("adam", loss=SCE)
    with pytest.raises(ValueError, match=r"query_views.*shape \(2, 6\)"):
        model.adapt_and_predict(
            np.zeros((3, 6), "f4"), np.arange(3), np.zeros((2, 6), "f4")
        )
