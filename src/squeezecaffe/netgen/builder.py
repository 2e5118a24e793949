"""The one builder: any registry row -> train_val and deploy NetParameters."""

from __future__ import annotations

from squeezecaffe.caffe_rules.checks import check_net
from squeezecaffe.caffe_rules.decoding import forced_decoding
from squeezecaffe.netgen import modules
from squeezecaffe.netgen.config import NetConfig
from squeezecaffe.netgen.dsl import NetBuilder, NetgenError
from squeezecaffe.netgen.modules import ConvStyle
from squeezecaffe.netgen.registry import BasicBlock, Fire, MaxPool, ModelSpec, SqueezeNext
from squeezecaffe.proto import pb


def _features(n: NetBuilder, spec: ModelSpec, style: ConvStyle, data: str) -> tuple[str, int]:
    """Stem and body; returns the last top and its channel count."""
    top = modules.conv(n, "conv1", data, spec.stem.num_output, spec.stem.kernel, style,
                       stride=spec.stem.stride, pad=spec.stem.pad)
    channels = spec.stem.num_output
    if spec.stem.pool:
        top = n.layer("Pooling", top, name="pool1", pool="MAX", kernel_size=3, stride=2)
    fire_index, pool_index, block_index = 2, 2, 0
    stage, stage_width = 2, channels
    for token in spec.body:
        match token:
            case Fire(squeeze=s, expand1x1=e1, expand3x3=e3, bypass=bypass):
                name = f"fire{fire_index}"
                if bypass == "identity" and channels != e1 + e3:
                    raise NetgenError(f"model {spec.name}: identity bypass around {name} needs in == out, "
                                      f"got {channels} -> {e1 + e3}")
                build = {None: modules.fire, "identity": modules.fire_type_b, "conv": modules.fire_type_a}[bypass]
                top = build(n, name, top, s, e1, e3, style)
                channels = e1 + e3
                fire_index += 1
                pool_index = fire_index
            case MaxPool(kernel=k, stride=st):
                # Named after the Fire it follows, as in the SqueezeNet release (pool4, pool8).
                top = n.layer("Pooling", top, name=f"pool{pool_index - 1}", pool="MAX", kernel_size=k, stride=st)
            case BasicBlock(width=width, stride=st, bottleneck=bottleneck):
                if st != 1 or width != stage_width:
                    stage, block_index = stage + (1 if block_index else 0), 0
                name = f"res{stage}{chr(ord('a') + block_index)}"
                top = modules.resnet_basic_block(n, name, top, channels, width, st, style, bottleneck)
                channels, stage_width, block_index = width, width, block_index + 1
            case SqueezeNext(out=out):
                top = modules.squeezenext_block(n, f"fire{fire_index}", top, out, style)
                channels = out
                fire_index += 1
    return top, channels


def _head(n: NetBuilder, spec: ModelSpec, style: ConvStyle, top: str, classes: int) -> str:
    head = spec.head
    if head.kind == "conv":
        if head.dropout:
            top = n.layer("Dropout", top, name="drop9", tops=[top], dropout_ratio=head.dropout)
        filler = dict(head.conv10_filler) if head.conv10_filler else None
        top = modules.conv(n, "conv10", top, classes, 1, style, filler=filler)
        return n.layer("Pooling", top, name="pool10", pool="AVE", global_pooling=True)
    if head.conv:
        top = modules.conv(n, "conv10", top, head.conv, 1, style)
    top = n.layer("Pooling", top, name="pool_global", pool="AVE", global_pooling=True)
    ip_params = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)] if style.emit_params else None
    layers = [*((f"fc{i}", width) for i, width in enumerate(head.hidden, start=1)), ("classifier", classes)]
    for i, (name, width) in enumerate(layers):
        ratio = head.dropouts[i] if i < len(head.dropouts) else 0
        if ratio:
            top = n.layer("Dropout", top, name=f"{name}/drop", tops=[top], dropout_ratio=ratio)
        top = n.layer("InnerProduct", top, name=name, param=ip_params, num_output=width,
                      weight_filler=dict(type=style.weight_filler), bias_filler=dict(type="constant", value=0))
        if name != "classifier":
            n.layer("ReLU", top, name=f"{name}/relu", tops=[top])
    return top


def _transform(cfg: NetConfig, train: bool) -> dict:
    """Caffe's transform_param; an encoded database's nets force their channels (caffe_rules/decoding.py)."""
    t: dict = dict(mirror=cfg.mirror and train)
    if cfg.crop:
        t["crop_size"] = cfg.input_size[0]
    if cfg.mean_file:
        t["mean_file"] = cfg.mean_file
    else:
        t["mean_value"] = list(cfg.mean_value)
    if cfg.encoded:
        t[f"force_{forced_decoding(cfg.channels)}"] = True
    if not t["mirror"]:
        del t["mirror"]
    return t


def build_train_val(spec: ModelSpec, cfg: NetConfig) -> pb.NetParameter:
    """TRAIN/TEST Data layers, the net, SoftmaxWithLoss, and TEST-only top-1/top-5 Accuracy.

    Caffe refuses an Accuracy top_k above the class count (a failed CHECK), so with fewer than 5 classes the
    top-5 layer is left out (whole-database top-5 is still computed from the logits by validation and eval).
    """
    n = NetBuilder(spec.name)
    style = ConvStyle(batchnorm=spec.batchnorm, weight_filler=spec.weight_filler, bn_fraction=cfg.bn_fraction)
    for phase, source, batch in (("TRAIN", cfg.train_source, cfg.batch_size),
                                 ("TEST", cfg.val_source, cfg.test_batch_size)):
        n.layer("Data", name="data", tops=["data", "label"], include=dict(phase=phase),
                transform_param=_transform(cfg, phase == "TRAIN"),
                data_param=dict(source=source, batch_size=batch, backend="LMDB"))
    data = modules.channel_std(n, "data", cfg.std_value) if cfg.std_value else "data"
    logits, _ = _features(n, spec, style, data)
    logits = _head(n, spec, style, logits, cfg.classes)
    n.layer("SoftmaxWithLoss", logits, "label", name="loss")
    n.layer("Accuracy", logits, "label", name="accuracy", include=dict(phase="TEST"))
    if cfg.classes >= 5:
        n.layer("Accuracy", logits, "label", name="accuracy_top5", include=dict(phase="TEST"), top_k=5)
    check_net(n.net, f"{spec.name}/train_val")
    return n.net


def build_deploy(spec: ModelSpec, cfg: NetConfig, batch: int = 1) -> pb.NetParameter:
    """An Input layer of the input shape, the net, and a Softmax named `prob`."""
    n = NetBuilder(spec.name)
    style = ConvStyle(batchnorm=spec.batchnorm, weight_filler=spec.weight_filler, emit_params=False)
    h, w = cfg.input_size
    n.layer("Input", name="data", shape=[dict(dim=[batch, cfg.channels, h, w])])
    data = modules.channel_std(n, "data", cfg.std_value) if cfg.std_value else "data"
    logits, _ = _features(n, spec, style, data)
    logits = _head(n, spec, style, logits, cfg.classes)
    n.layer("Softmax", logits, name="prob")
    check_net(n.net, f"{spec.name}/deploy", phases=("TEST",))
    return n.net
