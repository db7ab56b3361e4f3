"""``caffedata demo``: the whole job on real handwritten digits, offline, in well under a minute.

1. Writes the bundled UCI digits (``caffedata.datasets.load_digits``) as 8x8
   grayscale PNGs plus ``train.txt`` / ``test.txt`` list files (every 5th
   digit is held out for validation).
2. Builds ``digits_train_lmdb`` and ``digits_test_lmdb`` with the convert API,
   exactly as Caffe's ``convert_imageset --gray --resize_height 28
   --resize_width 28 [--shuffle]`` would (MNIST-sized records).
3. Computes ``mean.binaryproto`` of the training DB (``compute_image_mean``).
4. Trains the MXNet FAQ's MLP (InnerProduct 128 -> TanH -> InnerProduct 64 ->
   TanH -> InnerProduct 10 -> softmax) on ``mx.io.CaffeDataIter`` (TRAIN phase,
   ``scale: 0.00390625`` and the mean file) and validates on a TEST-phase
   iterator, printing per-epoch accuracy and the pipeline's images/s.

The layers are ``mx.sym.CaffeOp`` as in the FAQ when caffedata's compiled ops
library is available, else MXNet's own FullyConnected/Activation.
"""
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

__all__ = ["run_demo", "prepare_digits", "DemoResult", "TRAIN_PROTOTXT", "TEST_PROTOTXT"]

TRAIN_PROTOTXT = """layer {{
  name: "digits" type: "Data" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ scale: 0.00390625 mean_file: "{mean}" }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}
}}
"""
TEST_PROTOTXT = TRAIN_PROTOTXT.replace("phase: TRAIN", "phase: TEST")

IMAGE_SIZE = 28


@dataclass
class EpochStats:
    epoch: int
    train_accuracy: float
    val_accuracy: float
    seconds: float
    data_wait: float  # seconds the training loop waited for the iterator


@dataclass
class DemoResult:
    workdir: str
    network: str
    train_count: int
    test_count: int
    epochs: List[EpochStats] = field(default_factory=list)
    pipeline_images_per_second: float = 0.0  # one TRAIN epoch through CaffeDataIter, no model
    seconds: float = 0.0

    @property
    def val_accuracy(self):
        return self.epochs[-1].val_accuracy if self.epochs else float("nan")


def prepare_digits(workdir, progress=False, log=print):
    """Steps 1-3: PNGs, list files, the two LMDBs and the mean. Returns a dict of paths."""
    import cv2

    from .compute_mean import compute_image_mean
    from .convert import convert_imageset
    from ..datasets import load_digits

    images, labels = load_digits()
    img_dir = os.path.join(workdir, "digits")
    os.makedirs(img_dir, exist_ok=True)
    train_lines, test_lines = [], []
    for i, (img, label) in enumerate(zip(images, labels)):
        name = f"{label}/{i:04d}.png"
        os.makedirs(os.path.join(img_dir, str(label)), exist_ok=True)
        cv2.imwrite(os.path.join(img_dir, name), img)
        (test_lines if i % 5 == 0 else train_lines).append(f"{name} {label}\n")
    paths = {"images": img_dir, "train_list": os.path.join(workdir, "train.txt"),
             "test_list": os.path.join(workdir, "test.txt"),
             "train_db": os.path.join(workdir, "digits_train_lmdb"),
             "test_db": os.path.join(workdir, "digits_test_lmdb"),
             "mean": os.path.join(workdir, "mean.binaryproto")}
    with open(paths["train_list"], "w") as f:
        f.writelines(train_lines)
    with open(paths["test_list"], "w") as f:
        f.writelines(test_lines)
    log(f"[1/4] wrote {len(images)} digit PNGs (8x8) and train.txt ({len(train_lines)}) / "
        f"test.txt ({len(test_lines)}) in {workdir}")
    common = dict(gray=True, resize_height=IMAGE_SIZE, resize_width=IMAGE_SIZE, overwrite=True,
                  progress=progress)
    tr = convert_imageset(img_dir, paths["train_list"], paths["train_db"], shuffle=True, seed=0,
                          **common)
    te = convert_imageset(img_dir, paths["test_list"], paths["test_db"], **common)
    log(f"[2/4] convert: {tr.count} + {te.count} records (1x{IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"train shuffled with seed 0) at {tr.images_per_second:.0f} images/s")
    m = compute_image_mean(paths["train_db"], paths["mean"], progress=progress)
    log(f"[3/4] mean: {paths['mean']} ({m.count} records, mean pixel {m.channel_means[0]:.2f})")
    paths["train_count"], paths["test_count"] = tr.count, te.count
    return paths


def _network(use_caffe_ops=True):
    """The FAQ's MLP; CaffeOp layers when available. Returns (symbol, description)."""
    import mxnet as mx

    data = mx.sym.Variable("data")
    if use_caffe_ops:
        try:
            if not hasattr(mx.sym, "CaffeOp"):
                raise AttributeError("mx.sym.CaffeOp is not installed")
            fc1 = mx.sym.CaffeOp(data_0=data, num_weight=2, name="fc1",
                                 prototxt='layer{type:"InnerProduct" inner_product_param{num_output: 128}}')
            act1 = mx.sym.CaffeOp(data_0=fc1, prototxt='layer{type:"TanH"}', name="tanh1")
            fc2 = mx.sym.CaffeOp(data_0=act1, num_weight=2, name="fc2",
                                 prototxt='layer{type:"InnerProduct" inner_product_param{num_output: 64}}')
            act2 = mx.sym.CaffeOp(data_0=fc2, prototxt='layer{type:"TanH"}', name="tanh2")
            fc3 = mx.sym.CaffeOp(data_0=act2, num_weight=2, name="fc3",
                                 prototxt='layer{type:"InnerProduct" inner_product_param{num_output: 10}}')
            net = mx.sym.SoftmaxOutput(data=fc3, name="softmax")
            net.infer_shape(data=(2, 1, IMAGE_SIZE, IMAGE_SIZE), softmax_label=(2,))
            return net, "CaffeOp InnerProduct/TanH + SoftmaxOutput"
        except Exception as exc:  # the ops library is optional: fall back, say why
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            print(f"caffedata demo: CaffeOp unavailable ({reason}); using MXNet's own layers",
                  file=sys.stderr)
    flat = mx.sym.Flatten(data)
    fc1 = mx.sym.FullyConnected(flat, num_hidden=128, name="fc1")
    act1 = mx.sym.Activation(fc1, act_type="tanh", name="tanh1")
    fc2 = mx.sym.FullyConnected(act1, num_hidden=64, name="fc2")
    act2 = mx.sym.Activation(fc2, act_type="tanh", name="tanh2")
    fc3 = mx.sym.FullyConnected(act2, num_hidden=10, name="fc3")
    return mx.sym.SoftmaxOutput(data=fc3, name="softmax"), "FullyConnected/tanh + SoftmaxOutput"


def _batches(it, wait=None):
    """One epoch of ``it`` (reset first); adds the time spent in ``next()`` to ``wait[0]``."""
    it.reset()
    while True:
        t = time.perf_counter()
        try:
            batch = it.next()
        except StopIteration:
            return
        if wait is not None:
            wait[0] += time.perf_counter() - t
        yield batch


def _accuracy(mod, it):
    """Validation accuracy over exactly the epoch's records (padding excluded)."""
    correct = total = 0
    for batch in _batches(it):
        mod.forward(batch, is_train=False)
        n = batch.data[0].shape[0] - (batch.pad or 0)
        pred = mod.get_outputs()[0].asnumpy()[:n].argmax(axis=1)
        correct += int((pred == batch.label[0].asnumpy()[:n].astype(np.int64)).sum())
        total += n
    return correct / total if total else float("nan")


def run_demo(workdir=None, epochs=10, keep=False, batch_size=64, lr=0.1, threads=2,
             use_caffe_ops=True, progress=False, log=print):
    """Run the demo; returns a DemoResult.  ``workdir=None`` uses a temporary folder that is
    removed at the end unless ``keep``; a given ``workdir`` is always kept."""
    import mxnet as mx

    from .. import CaffeDataIter

    start = time.perf_counter()
    own = workdir is None
    workdir = tempfile.mkdtemp(prefix="caffedata-demo-") if own else os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        paths = prepare_digits(workdir, progress=progress, log=log)
        train_txt = TRAIN_PROTOTXT.format(mean=paths["mean"], source=paths["train_db"],
                                          batch=batch_size)
        test_txt = TEST_PROTOTXT.format(mean=paths["mean"], source=paths["test_db"], batch=100)
        for name, text in (("train.prototxt", train_txt), ("test.prototxt", test_txt)):
            with open(os.path.join(workdir, name), "w") as f:
                f.write(text)
        train = mx.io.CaffeDataIter(prototxt=train_txt, flat=False, preprocess_threads=threads,
                                    shuffle=True, seed=1, data_name="data",
                                    label_name="softmax_label")
        val = mx.io.CaffeDataIter(prototxt=test_txt, flat=False, preprocess_threads=threads,
                                  data_name="data", label_name="softmax_label")
        net, desc = _network(use_caffe_ops)
        result = DemoResult(workdir=workdir, network=desc, train_count=paths["train_count"],
                            test_count=paths["test_count"])
        log(f"[4/4] training the FAQ MLP ({desc}) on mx.io.CaffeDataIter: "
            f"data {train.provide_data[0].shape}, label {train.provide_label[0].shape}; "
            f"validation {val.provide_data[0].shape}")
        # the pipeline on its own: one TRAIN epoch, no model
        t = time.perf_counter()
        n = sum(b.data[0].shape[0] - (b.pad or 0) for b in _batches(train))
        result.pipeline_images_per_second = n / (time.perf_counter() - t)
        log(f"      pipeline alone: {result.pipeline_images_per_second:,.0f} images/s "
            f"({threads} threads)")
        mx.random.seed(0)
        np.random.seed(0)
        mod = mx.mod.Module(net, data_names=["data"], label_names=["softmax_label"],
                            context=mx.cpu())
        mod.bind(data_shapes=train.provide_data, label_shapes=train.provide_label)
        mod.init_params(initializer=mx.init.Xavier(factor_type="in", magnitude=2.34))
        mod.init_optimizer(optimizer="sgd", optimizer_params={
            "learning_rate": lr, "momentum": 0.9, "wd": 0.00001})
        for epoch in range(epochs):
            t0 = time.perf_counter()
            metric = mx.metric.Accuracy()
            wait = [0.0]
            for batch in _batches(train, wait):
                mod.forward_backward(batch)
                mod.update()
                mod.update_metric(metric, batch.label)
            stats = EpochStats(epoch + 1, metric.get()[1], _accuracy(mod, val),
                               time.perf_counter() - t0, wait[0])
            result.epochs.append(stats)
            log(f"  epoch {stats.epoch:2d}: train accuracy {stats.train_accuracy:.4f}, "
                f"validation accuracy {stats.val_accuracy:.4f}, {stats.seconds:.2f} s "
                f"({stats.data_wait:.3f} s waiting for data)")
        train.close()
        val.close()
        result.seconds = time.perf_counter() - start
        return result
    finally:
        if own and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
