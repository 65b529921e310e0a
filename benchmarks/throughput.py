"""Meta-training throughput on the speed issue's Conv4 workloads.

For every workload and execution variant, a fresh process builds Conv4
(4 x [3x3 conv 64, batch norm, ReLU, 2x2 max-pool] + dense head, 28x28x1
inputs), meta-trains it with Adam on one synthetic meta-batch, and reports
the median seconds per meta-step after warm-up, tasks/s, the trace time and
the process's peak RSS. Workloads:

  W1  5-way 1-shot, 15 queries/class, meta-batch 32, 1 inner step, 2nd order
  W2  20-way 1-shot, 5 queries/class, meta-batch 16, 5 inner steps, 2nd order
  W3  W1, first order
  W2-10  W2 with 10 inner steps (memory: per-task vs meta-batch backward)

`--compare-torch` runs `../shared/bench/torch_maml.py` (PyTorch's per-task
loop, as learn2learn does) on each workload in the same run and prints the
ratio; it first checks that both frameworks give the same meta-loss and
meta-gradient for the same weights and batch.

`--rounds=N` repeats every workload's rows N times, interleaved, PyTorch
first in odd rounds and last in even ones, and prints each round's ratio to
that round's PyTorch row with their median and lowest: a shared VM's speed
drifts by 10-20% over tens of minutes, more than a single run can separate.

`--isa=native,avx2` runs every row once per instruction-set level, in one
run: `avx2` caps both frameworks' kernels at AVX2 on an AVX-512 machine
(`ONEDNN_MAX_CPU_ISA=AVX2` for oneDNN, used by TensorFlow and PyTorch;
`ATEN_CPU_CAPABILITY=avx2` for PyTorch's own kernels). Code compiled into
TensorFlow itself (Eigen) runs as built whatever the cap.

Every row also prints the FLOP rate its tasks/s stands for and its share
of the machine's FP32 peak. FLOPs are counted once, analytically
(`flops_per_task`): the four convolutions' multiply-adds (x2) for one image
give F; a backward pass costs 2F, so a pass forward and back 3F, and
differentiating an inner step's backward pass (second order) costs twice
that step again: 9F per support image and inner step in second order, 3F
in first order, 3F per query image. W1 is 270F = 5.3 GFLOP a task. The
peak is cores x clock x FP32 FLOP per cycle per core (two FMA units of
8 lanes, x2 for the multiply-add: 32 with AVX2; 64 with AVX-512 on Intel
and on AMD's Zen 5 (cpu family 26), 32 on Zen 4 (family 25), which runs a
512-bit FMA as two 256-bit halves; 16 on Zen and Zen+ (family 23, models
below 0x30), whose FMA units are 128 bits wide and run a 256-bit FMA as
two halves), read from /proc/cpuinfo
(`--flop_per_cycle` overrides it; Zen 5's mobile parts, which also split
512-bit FMAs, need `--flop_per_cycle=32`). The clock is the one
/proc/cpuinfo reports, which in a VM may sit below the boost clock the
cores run at: a share above 100% says so.

Usage:
  python benchmarks/throughput.py [--workloads=W1,W2,W3] [--variants=...]
      [--compare-torch] [--torch_maps=loop] [--isa=native,avx2]
      [--rounds=1] [--steps=6] [--warmup=2]
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import flags  # noqa: E402

TORCH_SCRIPT = (
    pathlib.Path(__file__).resolve().parents[2] / "shared/bench/torch_maml.py"
)
WORKLOADS = {
    "W1": dict(ways=5, queries=15, meta_batch=32, steps=1, first_order=False),
    "W2": dict(ways=20, queries=5, meta_batch=16, steps=5, first_order=False),
    "W3": dict(ways=5, queries=15, meta_batch=32, steps=1, first_order=True),
    "W2-10": dict(
        ways=20, queries=5, meta_batch=16, steps=10, first_order=False
    ),
}
# One op per core and tasks side by side (`inter 2 x intra 1`) is the
# fastest thread layout for the map loop on this 2-core CPU, and what
# importing tfmaml sets (tfmaml.runtime): "map" alone gets it too.
ONE_THREAD_PER_OP = {"intra_op_threads": 1}
VARIANTS = {
    "map": dict(task_loop="map"),
    "map, 1 thread/op": dict(task_loop="map", **ONE_THREAD_PER_OP),
    "map, 1 thread/op, bfloat16": dict(
        task_loop="map", policy="mixed_bfloat16", **ONE_THREAD_PER_OP
    ),
    "vectorized": dict(task_loop="vectorized"),
    "unrolled, 1 thread/op": dict(task_loop="unrolled", **ONE_THREAD_PER_OP),
    "map, 1 thread/op, meta-batch backward": dict(
        task_loop="map", meta_batch_backward=True, **ONE_THREAD_PER_OP
    ),
    "map, XLA": dict(task_loop="map", jit_compile=True),
    "map, 1 thread/op, recompute inner steps": dict(
        task_loop="map", recompute=True, **ONE_THREAD_PER_OP
    ),
    # Before tfmaml set one thread per op at import (tfmaml.runtime).
    "map, TensorFlow's thread default": dict(
        task_loop="map", environment={"TFMAML_INTRA_OP_THREADS": "0"}
    ),
    # Before tfmaml turned oneDNN on at import (tfmaml.runtime): what
    # TensorFlow does by itself on CPUs without AVX-512 VNNI/BF16 or AMX.
    "map, oneDNN off": dict(
        task_loop="map", environment={"TF_ENABLE_ONEDNN_OPTS": "0"}
    ),
    # Before tfmaml held biases that batch norm cancels constant
    # (tfmaml.cancelled_biases): Conv4's four convolution biases are
    # differentiated, as the PyTorch loop does.
    "map, cancelled biases differentiated": dict(
        task_loop="map", environment={"TFMAML_CANCELLED_BIASES": "0"}
    ),
    # Before tfmaml summed bias gradients (tfmaml.bias_gradients): oneDNN
    # merges TensorFlow's BiasAddGrad into the filter gradient.
    "map, TensorFlow's bias gradient": dict(
        task_loop="map", environment={"TFMAML_SUMMED_BIAS_GRADIENTS": "0"}
    ),
    # Before tfmaml folded batch norm into a convolution with few patch
    # entries (tfmaml.folded_batch_norm): Conv4's first batch norm runs on
    # its own, as the PyTorch loop's does.
    "map, batch norm not folded": dict(
        task_loop="map", environment={"TFMAML_FOLDED_BATCH_NORM": "0"}
    ),
}
DEFAULT_VARIANTS = (
    "map",
    "map, TensorFlow's thread default",
    "map, oneDNN off",
    "map, 1 thread/op, bfloat16",
    "unrolled, 1 thread/op",
)

flags.DEFINE_list("workloads", ["W1", "W2", "W3"], "Of " + str(WORKLOADS))
flags.DEFINE_list(
    "variants",
    list(DEFAULT_VARIANTS),
    "Execution variants, by index into " + str(list(VARIANTS)),
)
flags.DEFINE_bool("compare-torch", False, "Run the PyTorch reference too.")
flags.DEFINE_string("torch_script", str(TORCH_SCRIPT), "torch_maml.py path.")
flags.DEFINE_list("torch_maps", ["loop"], "torch_maml.py --map values.")
flags.DEFINE_list("isa", ["native"], "Of " + str(list(common.ISA_LIMITS)))
flags.DEFINE_integer(
    "flop_per_cycle", 0, "FP32 FLOP per cycle per core (0: from the CPU)."
)
flags.DEFINE_integer("steps", 6, "Timed meta-steps per row.")
flags.DEFINE_integer(
    "rounds",
    1,
    "Repeats of every workload's rows, interleaved (PyTorch first in odd "
    "rounds, last in even ones); each ratio is to the same round's PyTorch.",
)
flags.DEFINE_integer("warmup", 2, "Untimed meta-steps first (tracing).")
flags.DEFINE_string("child", None, "Internal: run one row (JSON).")
FLAGS = flags.FLAGS


def conv4_forward_flops(size=28, channels=1, filters=64):
    """FLOPs of Conv4's four 3x3 "same" convolutions on one image (2 per
    multiply-add; bias, batch norm, ReLU, pooling and the head are left
    out: under 2% here)."""
    flops = 0
    for _ in range(4):
        flops += 2 * size * size * filters * 9 * channels
        size, channels = size // 2, filters
    return flops


def flops_per_task(workload):
    """One task's FLOPs in a meta-step (see the module docstring)."""
    support = workload["ways"]  # 1-shot.
    query = workload["ways"] * workload["queries"]
    per_support_step = 3 if workload["first_order"] else 9
    return conv4_forward_flops() * (
        per_support_step * support * workload["steps"] + 3 * query
    )


def machine_peak(isa):
    """`(GFLOP/s, description)`: the FP32 peak of the cores this process
    may use at instruction-set level `isa` (see the module docstring)."""
    info = pathlib.Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in info.splitlines())
    )
    cpu_flags = fields.get("flags", "").split()
    ghz = float(fields.get("cpu MHz", "nan")) / 1000
    cores = len(os.sched_getaffinity(0))
    avx512 = "avx512f" in cpu_flags and isa != "avx2"
    amd = "AuthenticAMD" in fields.get("vendor_id", "")
    # Zen 4 (family 25) splits a 512-bit FMA into two 256-bit halves; Zen 5
    # (family 26) server and desktop cores run it at full width.
    family, model = (
        int(fields.get("cpu family", 0)),
        int(fields.get("model", 0)),
    )
    full_width = not amd or family >= 26
    # Zen and Zen+ (family 23 before Zen 2's model 0x30) have 128-bit FMAs.
    half_width_avx2 = amd and family == 23 and model < 0x30
    per_cycle = FLAGS.flop_per_cycle or (
        64 if avx512 and full_width else 16 if half_width_avx2 else 32
    )
    level = "AVX-512" if avx512 else "AVX2" if "avx2" in cpu_flags else "?"
    description = (
        f"{fields.get('model name')}, {level}: {cores} cores x {ghz:.2f} GHz "
        f"x {per_cycle} FLOP/cycle = {cores * ghz * per_cycle:.0f} GFLOP/s"
    )
    return cores * ghz * per_cycle, description


def _batch(workload, seed=0):
    """A synthetic meta-batch of 1-shot tasks in tfmaml's layout."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tasks, ways = workload["meta_batch"], workload["ways"]
    x = {
        "support_x": rng.normal(size=(tasks, ways, 28, 28, 1)).astype("f4"),
        "support_y": np.tile(np.arange(ways, dtype="i4"), (tasks, 1)),
        "query_x": rng.normal(
            size=(tasks, ways * workload["queries"], 28, 28, 1)
        ).astype("f4"),
    }
    y = np.tile(
        np.repeat(np.arange(ways, dtype="i4"), workload["queries"]),
        (tasks, 1),
    )
    return x, y


def _build(workload, variant, epsilon=None):
    """The compiled tfmaml model of one row."""
    import keras

    import tfmaml

    keras.config.set_dtype_policy(variant.get("policy", "float32"))
    keras.utils.set_random_seed(0)
    net = tfmaml.networks.conv4((28, 28, 1), workload["ways"])
    if epsilon is not None:  # PyTorch's BatchNorm2d uses 1e-5.
        for layer in net.layers:
            if isinstance(layer, tfmaml.BatchNormalization):
                layer.epsilon = epsilon
    model_class = (
        _meta_batch_backward_class()
        if variant.get("meta_batch_backward")
        else tfmaml.MAML
    )
    model = model_class(
        net,
        inner_lr=0.4,
        inner_steps=workload["steps"],
        first_order=workload["first_order"],
        task_loop=variant["task_loop"],
        recompute_inner_steps=variant.get("recompute", False),
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=variant.get("jit_compile", False),
    )
    return model


def _meta_batch_backward_class():
    """MAML differentiated by one outer tape around the whole task loop
    (tfmaml's own `train_step` differentiates each task inside the loop):
    kept here only to measure what that costs in memory and time."""
    import tensorflow as tf

    import tfmaml

    class MetaBatchBackward(tfmaml.MAML):
        def compute_meta_gradients(self, episode):
            with tf.GradientTape() as tape:
                results = self.solve_tasks(
                    episode,
                    steps=self.inner_steps,
                    first_order=self.first_order,
                    training=True,
                    with_pre_predictions=False,
                )
                loss = tf.reduce_mean(results.loss)
            return tape.gradient(loss, self.trainable_variables), results

    return MetaBatchBackward


def _run_row(spec):
    """Times one (workload, variant) row in this process; returns a dict."""
    import tensorflow as tf

    variant = VARIANTS[spec["variant"]]
    if variant.get("intra_op_threads"):
        tf.config.threading.set_intra_op_parallelism_threads(
            variant["intra_op_threads"]
        )
    workload = WORKLOADS[spec["workload"]]
    model = _build(workload, variant)
    x, y = _batch(workload)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    trace = time.perf_counter() - start
    for _ in range(spec["warmup"] - 1):
        model.train_on_batch(x, y)
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        loss = model.train_on_batch(x, y, return_dict=True)["loss"]
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "seconds": median,
        "tasks_per_second": workload["meta_batch"] / median,
        "trace": trace,
        "peak_rss_mib": common.peak_rss_mib(),
        "loss": float(loss),
    }


def _meta_results(workload, dtype):
    """Meta-loss and meta-gradient (flat) of tfmaml and of PyTorch (the
    reference's network and inner loop) for the same weights and batch,
    computed in `dtype`: `((loss, gradient), (loss, gradient))`."""
    import numpy as np
    import tensorflow as tf

    # The float32 network's initial weights, in `dtype` (initialisers draw
    # different values in different dtypes).
    initial = _build(workload, {"task_loop": "map"}).get_weights()
    variant = {"task_loop": "map", "policy": dtype}
    model = _build(workload, variant, epsilon=1e-5)
    model.set_weights([w.astype(dtype) for w in initial])
    x, y = _batch(workload, seed=1)
    x = {k: v.astype(dtype) if k.endswith("_x") else v for k, v in x.items()}
    episode = model.episode_from_batch((x, y))
    results = model.solve_tasks(
        episode,
        steps=workload["steps"],
        first_order=workload["first_order"],
        training=True,
        gradients_of=model.trainable_variables,
        with_pre_predictions=False,
    )
    loss = float(tf.reduce_mean(results.loss))
    grads = [g.numpy() / workload["meta_batch"] for g in results.gradients]
    weights = [v.numpy() for v in model.trainable_variables]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check.npz")
        np.savez(path, *weights, **x, query_y=y)
        output = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps({"torch": path})],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TFMAML_WORKLOAD": json.dumps(workload)},
        ).stdout
    reference = json.loads(output.strip().splitlines()[-1])
    flat = np.concatenate([g.ravel() for g in grads]).astype("f8")
    other = np.asarray(reference["gradient"], dtype="f8")
    return (loss, flat), (reference["loss"], other)


def _check_against_torch(name, workload):
    """Prints how far tfmaml and PyTorch are apart in float64 (the same
    math: rounding only), and how far each one's float32 result is from
    that float64 value."""
    import numpy as np

    def differences(result, reference):
        (loss, gradient), (loss_ref, gradient_ref) = result, reference
        return (
            abs(loss - loss_ref) / abs(loss_ref),
            np.linalg.norm(gradient - gradient_ref)
            / np.linalg.norm(gradient_ref),
        )

    ours64, theirs64 = _meta_results(workload, "float64")
    ours32, theirs32 = _meta_results(workload, "float32")
    lines = [
        ("tfmaml vs PyTorch, both float64", differences(ours64, theirs64)),
        ("tfmaml float32 vs float64", differences(ours32, ours64)),
        ("PyTorch float32 vs float64", differences(theirs32, ours64)),
    ]
    for label, (loss, gradient) in lines:
        print(
            f"{name}: {label}, same weights and batch: meta-loss differs by "
            f"{loss:.1e}, meta-gradient by {gradient:.1e} (relative)",
            flush=True,
        )


def _torch_meta_loss(path):
    """The reference's meta-loss and meta-gradient (torch_maml.py's network
    and `task_loss`), on tfmaml's weights (NHWC kernels transposed)."""
    import numpy as np
    import torch
    from torch import nn
    from torch.func import functional_call
    from torch.func import grad

    workload = json.loads(os.environ["TFMAML_WORKLOAD"])
    data = np.load(path)
    weights = [data[f"arr_{i}"] for i in range(18)]

    def block(channels):
        return [
            nn.Conv2d(channels, 64, 3, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    net = nn.Sequential(
        *block(1), *block(64), *block(64), *block(64), nn.Flatten(),
        nn.Linear(64, workload["ways"]),
    )  # fmt: skip
    # tfmaml's order per block: kernel, bias, gamma, beta; then dense.
    converted = []
    for i in range(4):
        kernel, bias, gamma, beta = weights[4 * i : 4 * i + 4]
        converted += [kernel.transpose(3, 2, 0, 1), bias, gamma, beta]
    converted += [weights[16].T, weights[17]]
    params = {
        name: torch.tensor(np.ascontiguousarray(value), requires_grad=True)
        for (name, _), value in zip(
            net.named_parameters(), converted, strict=True
        )
    }

    def loss_of(p, x, y):
        return nn.functional.cross_entropy(functional_call(net, p, (x,)), y)

    def task_loss(p, xs, ys, xq, yq):
        fast = p
        for _ in range(workload["steps"]):
            g = grad(loss_of)(fast, xs, ys)
            fast = {
                k: fast[k]
                - 0.4 * (g[k].detach() if workload["first_order"] else g[k])
                for k in fast
            }
        return loss_of(fast, xq, yq)

    def nchw(array):
        return torch.tensor(array).permute(0, 3, 1, 2).contiguous()

    tasks = data["support_x"].shape[0]
    loss = (
        sum(
            task_loss(
                params,
                nchw(data["support_x"][t]),
                torch.tensor(data["support_y"][t]).long(),
                nchw(data["query_x"][t]),
                torch.tensor(data["query_y"][t]).long(),
            )
            for t in range(tasks)
        )
        / tasks
    )
    loss.backward()
    gradient = []
    for name, param in params.items():
        g = param.grad.numpy()
        if name.endswith("weight") and g.ndim == 4:
            g = g.transpose(2, 3, 1, 0)
        elif g.ndim == 2:
            g = g.T
        gradient.append(g.ravel())
    return {
        "loss": float(loss),
        "gradient": np.concatenate(gradient).tolist(),
    }


def _spawn(arguments, isa="native", environment=None):
    """Runs a child process with `isa`'s kernel cap (and `environment`);
    returns its stdout lines."""
    env = {**os.environ, **common.ISA_LIMITS[isa], **(environment or {})}
    result = subprocess.run(arguments, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{arguments} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()


def _torch_row(workload, mapping, isa):
    arguments = [
        sys.executable,
        FLAGS.torch_script,
        "--ways", str(workload["ways"]),
        "--shots", "1",
        "--query", str(workload["queries"]),
        "--meta-batch", str(workload["meta_batch"]),
        "--steps", str(workload["steps"]),
        "--map", mapping,
        "--iters", str(FLAGS.steps),
        "--warmup", str(FLAGS.warmup),
    ]  # fmt: skip
    if workload["first_order"]:
        arguments.append("--first-order")
    # Run the script in a child that then reports its own peak RSS.
    lines = _spawn(
        [
            sys.executable,
            "-c",
            "import runpy, sys; sys.path.insert(0, sys.argv[1]); "
            "import common; sys.argv = sys.argv[2:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__'); "
            "print(common.peak_rss_mib())",
            os.path.dirname(os.path.abspath(__file__)),
            *arguments[1:],
        ],
        isa,
    )
    rate = float(lines[-2].split("tasks/s")[1].split()[0])
    return {
        "tasks_per_second": rate,
        "peak_rss_mib": float(lines[-1]),
    }


def _workload_rows(isa, peak, name, variants, compare, round_, ratios):
    """One round of a workload: PyTorch's rows (first in odd rounds, last
    in even ones, so drift of the machine does not favour either side) and
    tfmaml's; each tfmaml/PyTorch ratio goes to `ratios`."""
    workload, rows, results = WORKLOADS[name], [], {}
    mappings = FLAGS.torch_maps if compare else []
    order = [("torch", m) for m in mappings] + [("tfmaml", v) for v in variants]
    if round_ % 2:
        order.reverse()
    for kind, which in order:
        if kind == "torch":
            results[which] = _torch_row(workload, which, isa)
            continue
        spec = {
            "workload": name,
            "variant": which,
            "steps": FLAGS.steps,
            "warmup": FLAGS.warmup,
        }
        arguments = [sys.executable, __file__, "--child", json.dumps(spec)]
        try:
            environment = VARIANTS[which].get("environment")
            results[which] = json.loads(_spawn(arguments, isa, environment)[-1])
        except RuntimeError as error:
            print(f"{name} {which}: failed: {error}", flush=True)
    torch_rate = results.get("loop", {}).get("tasks_per_second")
    for mapping in mappings:
        label = f"PyTorch torch_maml.py --map {mapping}"
        ratio = "1.00x" if mapping == "loop" else ""
        rows.append(
            _row(isa, round_, name, peak, label, results[mapping], ratio)
        )
    for variant in variants:
        if variant not in results:
            continue
        result, ratio = results[variant], ""
        if torch_rate:
            value = result["tasks_per_second"] / torch_rate
            ratios.setdefault((isa, name, variant), []).append(value)
            ratio = f"{value:.2f}x"
        rows.append(
            _row(
                isa,
                round_,
                name,
                peak,
                f"tfmaml {variant}",
                result,
                ratio,
                f"{result['seconds']:.3f}",
                f"{result['trace']:.0f}",
            )
        )
    for row in rows:
        print(row, flush=True)
    return rows


def _row(
    isa, round_, name, peak, implementation, result, ratio, seconds="", trace=""
):
    """A table row: the rate, and the FLOP rate it stands for."""
    rate = result["tasks_per_second"]
    gflops = rate * flops_per_task(WORKLOADS[name]) / 1e9
    return (
        isa,
        str(round_ + 1),
        name,
        implementation,
        seconds,
        f"{rate:.1f}",
        f"{gflops:.0f} ({100 * gflops / peak:.0f}%)",
        trace,
        f"{result['peak_rss_mib']:.0f}",
        ratio,
    )


def main(argv):
    del argv
    if FLAGS.child:
        spec = json.loads(FLAGS.child)
        if "torch" in spec:
            print(json.dumps(_torch_meta_loss(spec["torch"])))
        else:
            print(json.dumps(_run_row(spec)))
        return
    unknown = [w for w in FLAGS.workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"Unknown --workloads {unknown}: use {WORKLOADS}")
    unknown = [i for i in FLAGS.isa if i not in common.ISA_LIMITS]
    if unknown:
        raise ValueError(
            f"Unknown --isa {unknown}: use {list(common.ISA_LIMITS)}"
        )
    variants = [
        list(VARIANTS)[int(v)] if v.isdigit() else v for v in FLAGS.variants
    ]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown --variants {unknown}: use {list(VARIANTS)}")
    compare = FLAGS["compare-torch"].value
    if FLAGS.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {FLAGS.rounds}")
    rows, peaks, ratios = [], {}, {}
    for isa in FLAGS.isa:
        peak, peaks[isa] = machine_peak(isa)
        for round_ in range(FLAGS.rounds):
            for name in FLAGS.workloads:
                if compare and isa == FLAGS.isa[0] and round_ == 0:
                    _check_against_torch(name, WORKLOADS[name])
                rows += _workload_rows(
                    isa, peak, name, variants, compare, round_, ratios
                )
    common.print_report(
        (
            "ISA",
            "round",
            "workload",
            "implementation",
            "s / meta-step (median)",
            "tasks/s",
            "GFLOP/s (% of FP32 peak)",
            "first step (trace) s",
            "peak RSS MiB",
            "vs PyTorch loop",
        ),
        rows,
    )
    if ratios and FLAGS.rounds > 1:
        print()
        common.print_report(
            ("ISA", "workload", "implementation", "vs PyTorch, by round",
             "median", "lowest"),
            [
                (isa, name, f"tfmaml {variant}",
                 " / ".join(f"{r:.2f}x" for r in values),
                 f"{statistics.median(values):.2f}x", f"{min(values):.2f}x")
                for (isa, name, variant), values in ratios.items()
            ],
        )  # fmt: skip
    for isa, description in peaks.items():
        print(f"FP32 peak at {isa}: {description}")
    for name in FLAGS.workloads:
        gflop = flops_per_task(WORKLOADS[name]) / 1e9
        print(f"{name}: {gflop:.2f} GFLOP per task")


if __name__ == "__main__":
    common.run(main)
