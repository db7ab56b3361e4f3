"""A worker of test_dist.py's distributed jobs, started by ``caffedata launch``.

``train``: the MXNet FAQ's MLP (CaffeOp InnerProduct/TanH, CaffeLoss
SoftmaxWithLoss) trained by ``Module.fit(kvstore='dist_sync')`` on this
worker's shard of a digits LMDB (``CaffeDataIter(shard=kv, shuffle=True)``).
The training LMDB's labels carry the record ids: ``label = digit + 10 * id``,
and the net trains on ``label % 10``.  A batch-end callback logs, per epoch,
the ids of the non-padding items of every batch Module.fit trained on, so the
test sees exactly which records each worker consumed.  At the end the worker
writes ``rank<R>.json`` (ids, batch counts, validation accuracy) and
``rank<R>.npz`` (its final weights) into OUT.

``spin``: a dist_sync push/pull loop that never ends (the launcher's kill test).
"""
import argparse
import json
import os
import time

import numpy as np

import mxnet as mx

import caffedata  # noqa: F401  (registers mx.io.CaffeDataIter, mx.sym.CaffeOp)

PROTOTXT = ('layer {{ name: "digits" type: "Data" top: "data" top: "label" include {{ phase: {phase} }} '
            'transform_param {{ scale: 0.00390625 }} '
            'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}')


def faq_mlp():
    def ip(n):
        return 'layer{type:"InnerProduct" inner_product_param{num_output:%d}}' % n

    data = mx.sym.Variable("data")
    fc1 = mx.sym.CaffeOp(data_0=data, num_weight=2, name="fc1", prototxt=ip(128))
    act1 = mx.sym.CaffeOp(data_0=fc1, name="tanh1", prototxt='layer{type:"TanH"}')
    fc2 = mx.sym.CaffeOp(data_0=act1, num_weight=2, name="fc2", prototxt=ip(64))
    act2 = mx.sym.CaffeOp(data_0=fc2, name="tanh2", prototxt='layer{type:"TanH"}')
    fc3 = mx.sym.CaffeOp(data_0=act2, num_weight=2, name="fc3", prototxt=ip(10))
    digit = mx.sym.Variable("softmax_label") % 10  # the label's low decimal digit
    return mx.sym.CaffeLoss(data=fc3, label=digit, grad_scale=1, name="softmax",
                            prototxt='layer{type:"SoftmaxWithLoss"}')


def train(args):
    kv = mx.kv.create("dist_sync")
    print(f"rank {kv.rank} of {kv.num_workers}, pid {os.getpid()}", flush=True)
    it = mx.io.CaffeDataIter(prototxt=PROTOTXT.format(phase="TRAIN", source=args.train, batch=args.batch),
                             flat=True, shuffle=True, seed=3, shard=kv,
                             preprocess_threads=args.threads)
    ids = {}

    def log_ids(param):
        batch = param.locals["data_batch"]
        labels = batch.label[0].asnumpy()
        keep = len(labels) - batch.pad
        ids.setdefault(param.epoch, []).append((labels[:keep] // 10).astype(int).tolist())

    net = faq_mlp()
    mx.random.seed(3)
    mod = mx.mod.Module(net, context=mx.cpu())
    mod.fit(it, num_epoch=args.epochs, kvstore=kv, optimizer="sgd",
            optimizer_params={"learning_rate": args.lr, "momentum": 0.9, "wd": 0.00001},
            initializer=mx.init.Xavier(factor_type="in", magnitude=2.34),
            eval_metric=mx.metric.Caffe(), batch_end_callback=log_ids)
    arg_params, aux_params = mod.get_params()
    np.savez(os.path.join(args.out, f"rank{kv.rank}.npz"),
             **{k: v.asnumpy() for k, v in sorted(arg_params.items())})

    val = mx.io.CaffeDataIter(prototxt=PROTOTXT.format(phase="TEST", source=args.val, batch=50), flat=True)
    feat = mx.mod.Module(net.get_internals()["fc3_output"], label_names=None, context=mx.cpu())
    feat.bind(data_shapes=val.provide_data, for_training=False)
    feat.set_params(arg_params, aux_params)
    predicted = feat.predict(val).asnumpy().argmax(axis=1)  # predict drops the padding
    val.reset()
    truth = np.concatenate([b.label[0].asnumpy()[:50 - b.pad] for b in val]) % 10
    it.close(), val.close()
    result = {"rank": kv.rank, "num_workers": kv.num_workers,
              "ids": [sum(ids[e], []) for e in range(args.epochs)],
              "batches": [len(ids[e]) for e in range(args.epochs)],
              "accuracy": float((predicted == truth).mean())}
    with open(os.path.join(args.out, f"rank{kv.rank}.json"), "w") as f:
        json.dump(result, f)
    print(f"rank {kv.rank}: validation accuracy {result['accuracy']:.4f}", flush=True)


def spin(args):
    kv = mx.kv.create("dist_sync")
    kv.init(0, mx.nd.zeros((4,)))
    print(f"spinning rank {kv.rank} pid {os.getpid()}", flush=True)
    out = mx.nd.zeros((4,))
    while True:  # each push/pull waits for every worker: a dead one blocks the rest
        kv.push(0, mx.nd.ones((4,)))
        kv.pull(0, out=out)
        out.wait_to_read()
        time.sleep(0.05)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("train", "spin"))
    parser.add_argument("--train")
    parser.add_argument("--val")
    parser.add_argument("--out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    train(args) if args.mode == "train" else spin(args)
