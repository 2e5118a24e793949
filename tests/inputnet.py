"""A deploy net made trainable from Input blobs, for benchmarks and engine-against-engine checks.

The deploy net (Input `data` -> ... -> Softmax `prob`) gets batch N, a `label` Input and a SoftmaxWithLoss on
the logits beside the Softmax, and BatchNorm's statistics the `lr_mult: 0` specs train_val has (deploy nets
omit them). No Data layer: every engine is fed the same arrays.
"""

from __future__ import annotations

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb


def input_training_net(deploy: pb.NetParameter, batch: int, dropout: bool = True) -> pb.NetParameter:
    """`dropout=False` leaves out Dropout layers (random masks no two engines share)."""
    net = pb.NetParameter()
    net.CopyFrom(deploy)
    if not dropout:
        kept = [lp for lp in net.layer if lp.type != "Dropout"]
        del net.layer[:]
        net.layer.extend(kept)
    softmax = next((lp for lp in net.layer if lp.type == "Softmax"), None)
    data = next((lp for lp in net.layer if lp.type == "Input"), None)
    if softmax is None or data is None:
        raise UserError(f"net {deploy.name!r}: expected a deploy net with an Input and a final Softmax")
    data.input_param.shape[0].dim[0] = batch
    for lp in net.layer:
        if lp.type == "BatchNorm" and not lp.param:
            for _ in range(3):
                lp.param.add(lr_mult=0, decay_mult=0)
    label = net.layer.add(name="label", type="Input", top=["label"])
    label.input_param.shape.add(dim=[batch])
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[softmax.bottom[0], "label"], top=["loss"])
    return net
