"""Deep Compression: Huffman and sparse coding, k-means, the density plan against the paper's table, constraints
held through the solver's updates, the .sqz container (round trip, corruption), and the whole `compress` verb."""

from __future__ import annotations

import numpy as np
import pytest

from squeezecaffe.caffe_rules.blobs import blob_values
from squeezecaffe.compress import huffman
from squeezecaffe.compress.codec import CodedBlob, decode_model, encode_model
from squeezecaffe.compress.container import Container
from squeezecaffe.compress.kmeans import KMeansNotConverged, kmeans_1d
from squeezecaffe.compress.plan import PAPER_KEPT, make_plan
from squeezecaffe.compress.prune import magnitude_mask
from squeezecaffe.compress.sparse import from_relative, to_relative
from squeezecaffe.compress.stages import prune, quantize
from squeezecaffe.compress.table import build_rows, paper_comparison
from squeezecaffe.engines.torchcaffe.constraints import BlobConstraint, Constraints, load_constraints, save_constraints
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

# ------------------------------------------------------------------ entropy coding


@pytest.mark.parametrize(("alphabet", "count", "concentration"), [(1, 50, 1.0), (2, 7, 1.0), (65, 20000, 0.3),
                                                                   (256, 50000, 0.05), (257, 3000, 5.0)])
def test_huffman_decodes_random_streams_to_the_input(alphabet, count, concentration):
    rng = np.random.default_rng(alphabet)
    p = rng.dirichlet(np.full(alphabet, concentration))
    symbols = rng.choice(alphabet, size=count, p=p)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    data, nbits = huffman.encode(symbols, lengths)
    assert np.array_equal(huffman.decode(data, nbits, lengths, count), symbols)
    kraft = sum(2.0 ** -int(n) for n in lengths if n)
    assert kraft <= 1.0
    used = np.bincount(symbols, minlength=alphabet) > 0
    assert np.array_equal(lengths > 0, used)


def test_huffman_is_near_the_entropy_and_limits_code_lengths():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(64, 0.3))
    symbols = rng.choice(64, size=100000, p=p)
    freqs = np.bincount(symbols, minlength=64)
    q = freqs[freqs > 0] / freqs.sum()
    entropy = float(-(q * np.log2(q)).sum())
    _, nbits = huffman.encode(symbols, huffman.code_lengths(freqs))
    assert entropy <= nbits / symbols.size < entropy + 0.1
    skewed = np.array([2**i for i in range(40)])  # a Fibonacci-like tree would need 39-bit codes
    lengths = huffman.code_lengths(skewed)
    assert lengths.max() <= huffman.MAX_LENGTH and sum(2.0 ** -int(n) for n in lengths) <= 1.0


def test_huffman_refuses_a_short_stream():
    symbols = np.arange(10) % 3
    lengths = huffman.code_lengths(np.bincount(symbols))
    data, nbits = huffman.encode(symbols, lengths)
    with pytest.raises(huffman.HuffmanError, match="ends after"):
        huffman.decode(data, nbits - 3, lengths, 10)


def test_relative_positions_bridge_long_gaps_with_fillers():
    positions = np.array([0, 3, 4, 40, 41, 300])
    codes, filler = to_relative(positions, 4)  # steps of at most 16
    assert codes.max() <= 15
    assert filler.sum() == (36 - 1) // 16 + (259 - 1) // 16
    assert np.array_equal(from_relative(codes)[~filler], positions)
    rng = np.random.default_rng(1)
    many = np.sort(rng.choice(10**5, size=2000, replace=False))
    codes, filler = to_relative(many, 3)
    assert np.array_equal(from_relative(codes)[~filler], many)


# ------------------------------------------------------------------ pruning and k-means


def test_magnitude_mask_keeps_the_largest_and_breaks_ties_by_position():
    w = np.array([[0.5, -2.0, 0.1], [0.5, 3.0, -0.5]], np.float32)
    assert magnitude_mask(w, 3).tolist() == [[True, True, False], [False, True, False]]
    assert magnitude_mask(w, 6).all() and magnitude_mask(w, 0).sum() == 0


def test_kmeans_starts_linear_and_converges_to_cluster_means():
    values = np.concatenate([np.full(50, -1.0), np.full(30, 0.2), np.full(20, 2.0)])
    centroids, labels = kmeans_1d(values, 4)
    assert centroids.dtype == np.float32 and len(centroids) == 4
    assert np.all(np.diff(centroids) > 0)
    for k in np.unique(labels):
        assert np.isclose(values[labels == k].mean(), centroids[k])
    assert len(np.unique(centroids[labels])) == 3  # three distinct values, three clusters used


def _assert_fixed_point(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> None:
    """A converged codebook: every value on its nearest centroid, every used centroid its members' mean."""
    v = values.astype(np.float64)
    c = centroids.astype(np.float64)
    scale = float(np.abs(v).max())
    nearest = np.abs(v[:, None] - c[None, :]).min(axis=1)
    off = np.abs(v - c[labels]) - nearest
    assert (off <= 1e-6 * scale).all(), f"{int((off > 1e-6 * scale).sum())} values not on their nearest centroid"
    for k in np.unique(labels):
        assert c[k] == pytest.approx(v[labels == k].mean(), rel=1e-6, abs=1e-7 * scale), f"centroid {k}"


def _heavy_tailed() -> np.ndarray:
    return np.random.default_rng(0).standard_t(3, 20_000)


def _pruned_normal() -> np.ndarray:
    w = np.random.default_rng(1).normal(size=50_000)
    return w[np.abs(w) > 0.5]  # what survives magnitude pruning: two tails, nothing near zero


@pytest.mark.parametrize("make", [_heavy_tailed, _pruned_normal])
def test_kmeans_runs_to_a_fixed_point(make) -> None:
    values = make()
    centroids, labels = kmeans_1d(values, 64)
    _assert_fixed_point(values, centroids, labels)
    # the check has teeth: stopped after 100 iterations (the old fixed count), these sets are not converged
    with pytest.warns(KMeansNotConverged, match="stopped at its cap of 100 iterations"):
        early_c, early_l = kmeans_1d(values, 64, iterations=100)
    with pytest.raises(AssertionError):
        _assert_fixed_point(values, early_c, early_l)


def test_kmeans_equals_plain_lloyd_iterations() -> None:
    """The sorted, prefix-sum iteration is Lloyd's algorithm: the same codebook as the textbook loop."""
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.laplace(size=3000), [0.0] * 50])
    c = np.linspace(values.min(), values.max(), 16)
    labels = None
    while True:
        new = np.argmin(np.abs(values[:, None] - c[None, :]), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        c = np.array([values[labels == k].mean() if (labels == k).any() else c[k] for k in range(16)])
    ours, our_labels = kmeans_1d(values, 16)
    np.testing.assert_allclose(ours, c.astype(np.float32), rtol=1e-6, atol=1e-7)
    assert np.array_equal(our_labels, labels)


# ------------------------------------------------------------------ the plan and the paper's Table 1


@pytest.fixture(scope="module")
def squeezenet_shapes() -> pb.NetParameter:
    """SqueezeNet v1.0's weight and bias blobs (zeros: the plan and the accounting only need shapes)."""
    from squeezecaffe.caffe_rules.shapes import infer_net
    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.netgen.registry import get_model
    from squeezecaffe.solvers.settings import resolve

    spec = get_model("squeezenet_v1_0")
    net = build_deploy(spec, resolve(spec)[0])
    model = pb.NetParameter(name=net.name)
    for info, lp in zip(infer_net(net, "TEST"), net.layer, strict=True):
        if info.params:
            layer = model.layer.add(name=lp.name, type=lp.type)
            for p in info.params:
                blob = layer.blobs.add()
                blob.shape.dim.extend(p.shape)
    return model


def test_paper_density_reproduces_table_1_except_its_repeated_fire8_row(squeezenet_shapes):
    plans, notes = make_plan(squeezenet_shapes, "paper", "6")
    assert not notes and len(plans) == 26
    kept = {p.layer: p.kept for p in plans}
    rows = build_rows(squeezenet_shapes, plans, kept, {}, 0)
    assert rows[-1].parameters == 1_248_424  # the paper's "before pruning" total
    _, ours, paper = paper_comparison(rows)
    module = {}
    for r in rows:
        name = r.layer.split("/")[0]
        if name in PAPER_KEPT:
            module[name] = module.get(name, 0) + r.nonzeros
    # every module as the paper prints it, but fire8: its printed 77,581 repeats fire9's; 100/50/33% of
    # fire8's 24,576 / 16,384 / 147,456 weights + 576 biases keeps 82,005
    assert {m: v for m, v in module.items() if m != "fire8"} == {m: v for m, v in PAPER_KEPT.items() if m != "fire8"}
    assert module["fire8"] == 82_005
    assert (ours, paper) == (425_522, 421_098)


def test_width_and_density_specs(squeezenet_shapes, tmp_path):
    auto = {p.layer: p.density for p in make_plan(squeezenet_shapes, "auto")[0]}
    assert (auto["conv1"], auto["conv10"], auto["fire2/squeeze1x1"], auto["fire9/expand3x3"]) == (1.0, 0.2, 0.33, 0.33)
    plans, _ = make_plan(squeezenet_shapes, "conv1=1,*/expand3x3=0.25,*=0.5", "conv=8,conv10=5", "4")
    by = {p.layer: p for p in plans}
    assert by["conv1"].density == 1.0 and by["fire2/expand3x3"].density == 0.25 and by["conv10"].density == 0.5
    assert by["conv10"].bits == 8  # "conv" names the kind and comes first: first match wins
    table = tmp_path / "density.txt"
    table.write_text("# my table\nconv1 1\nfire*/expand3x3 0.3\n")
    plans, notes = make_plan(squeezenet_shapes, str(table), "6")
    assert {p.layer: p.density for p in plans}["fire9/expand3x3"] == 0.3
    assert notes and "no rule for fire2/squeeze1x1" in notes[0]
    with pytest.raises(UserError, match="--bits 9: 9 must be an integer between 1 and 8"):
        make_plan(squeezenet_shapes, "auto", "9")
    with pytest.raises(UserError, match="'half' is not a number"):
        make_plan(squeezenet_shapes, "*=half")


# ------------------------------------------------------------------ constraints held by the solver


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "Adam"])
def test_pruned_weights_stay_zero_and_shared_weights_stay_tied_through_updates(kind):
    from tests.test_engine_solver import mlp_solver

    solver = mlp_solver(kind)
    w = solver.params[0][2].detach().numpy().copy()
    mask = np.abs(w) > np.median(np.abs(w))
    solver.set_constraints(Constraints([BlobConstraint("ip1", 0, mask=mask),
                                        BlobConstraint("ip2", 0, clusters=np.arange(18).reshape(3, 6) % 3)]))
    start2 = solver.params[2][2].detach().numpy().copy()
    assert len(np.unique(start2)) == 3  # bound: each cluster starts at its mean
    solver.step(10)  # momentum and weight decay (0.01) would move any free weight
    w1 = solver.params[0][2].detach().numpy()
    assert np.all(w1[~mask].view(np.uint64) == 0) and np.all(w1[mask] != w[mask])  # +0.0, never -0.0
    w2 = solver.params[2][2].detach().numpy()
    assert len(np.unique(w2)) == 3 and not np.array_equal(w2, start2)


def test_sum_and_mean_centroid_gradients_differ_by_the_member_count():
    from tests.test_engine_solver import mlp_solver

    moved = {}
    for rule in ("mean", "sum"):
        solver = mlp_solver("SGD")
        solver.set_constraints(Constraints([BlobConstraint("ip2", 0, clusters=np.zeros((3, 6), np.int32))], rule))
        before = float(solver.params[2][2].detach()[0, 0])
        solver.step(1)  # SGD's first step: rate x gradient, no history yet
        moved[rule] = float(solver.params[2][2].detach()[0, 0]) - before
    assert moved["sum"] == pytest.approx(18 * moved["mean"], rel=1e-9)


def test_constraint_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    items = [BlobConstraint("a/b", 0, mask=rng.random((3, 5, 2)) > 0.5),
             BlobConstraint("c", 0, clusters=rng.integers(-1, 64, (7, 3)).astype(np.int32))]
    back = load_constraints(save_constraints(tmp_path / "c.npz", items))
    assert np.array_equal(back[0].mask, items[0].mask) and np.array_equal(back[1].clusters, items[1].clusters)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"bad\.npz: not a readable constraints file"):
        load_constraints(tmp_path / "bad.npz")


# ------------------------------------------------------------------ the container


def small_model(seed: int = 0) -> pb.NetParameter:
    rng = np.random.default_rng(seed)
    model = pb.NetParameter(name="tiny")
    for name, ltype, shapes in [("conv1", "Convolution", [(8, 3, 3, 3), (8,)]), ("conv1/bn", "BatchNorm",
                                [(8,), (8,), (1,)]), ("fc", "InnerProduct", [(10, 200), (10,)])]:
        lp = model.layer.add(name=name, type=ltype)
        for shape in shapes:
            blob = lp.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(rng.normal(size=shape).astype(np.float32).ravel().tolist())
    return model


def encoded_small(density: str = "conv1=1,fc=0.1") -> tuple[pb.NetParameter, bytes]:
    model = small_model()
    plans, _ = make_plan(model, density, "4", "conv=8,fc=3")
    pruned, masks = prune(model, plans)
    quantized, coded = quantize(pruned, plans, masks)
    data, _ = encode_model(quantized, coded, {"deploy": None})
    return quantized, data


def values(model: pb.NetParameter) -> dict:
    return {(lp.name, i): blob_values(b).astype(np.float32).view(np.uint32) for lp in model.layer
            for i, b in enumerate(lp.blobs)}


def test_container_gives_back_the_quantized_weights_bit_for_bit():
    quantized, data = encoded_small()
    decoded = decode_model(Container(data, "x.sqz"))
    a, b = values(quantized), values(decoded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    fc = blob_values(decoded.layer[2].blobs[0])
    assert (fc != 0).sum() == 200 and len(np.unique(fc[fc != 0])) <= 16  # 10% of 2000 kept, 4-bit codebook
    assert [lp.type for lp in decoded.layer] == ["Convolution", "BatchNorm", "InnerProduct"]


@pytest.mark.parametrize("density", ["conv1=0,fc=1", "0.5", "conv1=0.01,fc=0.001"])
def test_container_round_trips_empty_dense_and_nearly_empty_blobs(density):
    quantized, data = encoded_small(density)
    a, b = values(quantized), values(decode_model(Container(data, "x.sqz")))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_container_with_a_dense_only_blob():
    model = small_model()
    clusters = np.random.default_rng(0).integers(0, 4, (8, 3, 3, 3)).astype(np.int32)
    coded = {"conv1": CodedBlob(np.array([-1, 0, 0.5, 2], np.float32), clusters, 2, 8)}
    data, sizes = encode_model(model, coded, {})
    decoded = decode_model(Container(data, "x.sqz"))
    assert np.array_equal(blob_values(decoded.layer[0].blobs[0]).reshape(clusters.shape),
                          coded["conv1"].values())
    assert sizes["conv1"] > 0


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def test_corrupted_or_truncated_containers_name_the_bad_section():
    _, data = encoded_small()
    box = Container(data, "m.sqz")
    entry = box.header["layers"][2]["blobs"][0]["gaps"]
    start = len(data) - len(box.payload) + entry["offset"]
    with pytest.raises(UserError, match=r"m.sqz: section fc/blob0/gaps is corrupted \(CRC-32 mismatch\)"):
        decode_model(Container(_flip(data, start + 1), "m.sqz"))
    with pytest.raises(UserError, match=r"m\.sqz: truncated: the payload holds"):
        Container(data[:-5], "m.sqz")
    with pytest.raises(UserError, match=r"m\.sqz: truncated in the header"):
        Container(data[:20], "m.sqz")
    with pytest.raises(UserError, match=r"m\.sqz: the header is corrupted"):
        Container(_flip(data, 10), "m.sqz")
    with pytest.raises(UserError, match=r"not a \.sqz file"):
        Container(b"\x08\x01" + data[2:], "m.sqz")


def test_decompress_cli_writes_a_caffemodel_and_refuses_bad_files(tmp_path, capsys):
    from squeezecaffe.cli import main

    quantized, data = encoded_small()
    (tmp_path / "m.sqz").write_bytes(data)
    assert main(["decompress", str(tmp_path / "m.sqz"), "-o", str(tmp_path / "m.caffemodel")]) == 0
    from squeezecaffe.caffe_rules.blobs import read_caffemodel

    a, b = values(quantized), values(read_caffemodel(tmp_path / "m.caffemodel"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    (tmp_path / "bad.sqz").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["decompress", str(tmp_path / "bad.sqz"), "-o", str(tmp_path / "bad.caffemodel")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.sqz: truncated" in err
    assert not (tmp_path / "bad.caffemodel").exists()
    for argv, message in [(["decompress", str(tmp_path / "m.sqz"), "-o", "/proc/no-such/m.caffemodel"],
                           "/proc/no-such: cannot write the output there"),
                          (["compress", str(tmp_path / "m.caffemodel"), "--net", "x.prototxt", "--retrain-lr", "-1"],
                           "--retrain-lr -1: must be positive"),
                          (["compress", str(tmp_path / "m.caffemodel"), "--net", "x.prototxt", "--batch-size", "0"],
                           "--batch-size 0: must be positive")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


# ------------------------------------------------------------------ the verb, end to end


@pytest.fixture(scope="module")
def compressed(finished_run, tmp_path_factory):
    from squeezecaffe.cli import main

    out = tmp_path_factory.mktemp("compressed")
    assert main(["compress", str(finished_run), "--out", str(out), "--retrain-epochs", "1", "--quiet",
                 "--density", "auto", "--bits", "5"]) == 0
    return out


@pytest.mark.slow
def test_compress_writes_every_stage_holds_masks_and_decodes_to_the_fine_tuned_weights(compressed):
    import json

    from squeezecaffe.caffe_rules.blobs import read_caffemodel
    from squeezecaffe.engines.torchcaffe.constraints import load_constraints

    for path in ("pruned/masks.npz", "pruned/retrain/log.csv", "pruned/model.caffemodel", "quantized/clusters.npz",
                 "quantized/retrain/log.csv", "final/model.sqz", "final/model.caffemodel", "final/table.md"):
        assert (compressed / path).is_file(), path
    pruned = {lp.name: lp for lp in read_caffemodel(compressed / "pruned/model.caffemodel").layer}
    for item in load_constraints(compressed / "pruned/masks.npz"):
        w = blob_values(pruned[item.layer].blobs[0]).reshape(item.mask.shape)
        assert np.all(w[~item.mask] == 0) and np.count_nonzero(w[item.mask]) > 0.9 * item.mask.sum()
    quantized = read_caffemodel(compressed / "quantized/model.caffemodel")
    final = read_caffemodel(compressed / "final/model.caffemodel")
    a, b = values(quantized), values(final)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for item in load_constraints(compressed / "quantized/clusters.npz"):
        w = blob_values(next(lp for lp in final.layer if lp.name == item.layer).blobs[0])
        assert len(np.unique(w[item.clusters.reshape(-1) >= 0])) <= 32  # 5 bits
    # retraining did something: the kept weights moved away from their pruned values (the masked ones stayed 0)
    before, after = values(read_caffemodel(compressed / "pruned/pruned.caffemodel")), values(
        read_caffemodel(compressed / "pruned/model.caffemodel"))
    moved = [k for k in before if before[k].shape == after[k].shape and not np.array_equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, f"retraining changed only {moved}"
    report = json.loads((compressed / "final/report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["dense", "pruned", "pruned + retrained", "quantized",
                                                     "final (.sqz decoded)"]
    assert report["ratio"] > 10 and report["sqz_bytes"] == (compressed / "final/model.sqz").stat().st_size
    # on this learnable set the compressed model keeps its accuracy: within 10 points of the dense one (4 classes,
    # 40 validation images, 1 retraining epoch a stage; chance is 25%)
    dense, final_top1 = report["stages"][0]["top1"], report["stages"][-1]["top1"]
    assert final_top1 is not None and final_top1 >= dense - 0.10, (dense, final_top1)


@pytest.mark.slow
def test_eval_takes_a_sqz_and_opencv_gives_the_same_logits_as_for_the_quantized_model(compressed, capsys):
    import json

    from squeezecaffe.cli import main
    from squeezecaffe.evaluation.artifacts import resolve_artifacts
    from squeezecaffe.evaluation.runtimes import make_runtime

    rng = np.random.default_rng(0)
    art_q = resolve_artifacts(str(compressed / "quantized/retrain/best.caffemodel"))
    batch = rng.normal(0, 50, (4, *art_q.input_shape)).astype(np.float32)
    art_f = resolve_artifacts(str(compressed / "final/model.caffemodel"), net=str(art_q.deploy_path))
    for engine in ("torch", "opencv"):
        q = make_runtime(engine, art_q).logits(batch)
        f = make_runtime(engine, art_f).logits(batch)
        assert np.abs(q - f).max() <= 1e-6 * max(1.0, np.abs(q).max()), engine
    out = compressed / "eval-sqz"
    assert main(["eval", str(compressed / "final/model.sqz"), "--out", str(out), "--quiet"]) == 0
    report = json.loads((compressed / "final/report.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["top1"] == report["stages"][-1]["top1"]
    # the class names and stored size travel in the file: used where its data directory is not there
    from squeezecaffe.compress.sqz import open_sqz

    _, carried = open_sqz(str(compressed / "final/model.sqz"))
    assert [(c.id, c.name) for c in carried.labels] == [(c.id, c.name) for c in art_q.labels]
    assert carried.stored_size == art_q.stored_size is not None


@pytest.mark.caffe
def test_the_caffe_engine_refuses_constrained_training_in_one_line(data, tmp_path):
    import json

    from squeezecaffe.train.config import TrainConfig
    from squeezecaffe.train.prepare import prepare_run
    from squeezecaffe.train.runner import Trainer

    masks = save_constraints(tmp_path / "m.npz", [BlobConstraint("conv1", 0, mask=np.ones((64, 3, 3, 3), bool))])
    run_dir = tmp_path / "run"
    prepare_run(TrainConfig(model="cifar_resnet_1111", data=str(data), epochs=1, engine="torch", workers=0,
                            constraints=str(masks)), run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "engine": "caffe"}))
    with pytest.raises(UserError, match=r"m\.npz: training with pruning masks or shared weights runs on the torch"):
        Trainer(run_dir, progress=False)


@pytest.mark.slow
@pytest.mark.caffe
def test_real_caffe_loads_the_decompressed_caffemodel(compressed):
    from squeezecaffe.evaluation.artifacts import resolve_artifacts
    from squeezecaffe.evaluation.runtimes import make_runtime

    art_q = resolve_artifacts(str(compressed / "quantized/retrain/best.caffemodel"))
    art_f = resolve_artifacts(str(compressed / "final/model.caffemodel"), net=str(art_q.deploy_path))
    batch = np.random.default_rng(1).normal(0, 50, (3, *art_q.input_shape)).astype(np.float32)
    q, f = make_runtime("caffe", art_q).logits(batch), make_runtime("caffe", art_f).logits(batch)
    ours = make_runtime("torch", art_f).logits(batch)
    assert np.array_equal(q, f)  # the same weights, bit for bit, give the same logits
    assert np.abs(ours - f).max() <= 1e-4 * max(1.0, np.abs(f).max())


def _blobs(path) -> dict[str, list[np.ndarray]]:
    from squeezecaffe.caffe_rules.blobs import read_caffemodel

    return {lp.name: [blob_values(b) for b in lp.blobs] for lp in read_caffemodel(path).layer if len(lp.blobs)}


@pytest.mark.slow
def test_without_retraining_batchnorm_statistics_are_re_estimated_at_the_compressed_weights(finished_run, tmp_path,
                                                                                         capsys):
    """--retrain-epochs 0: the pruned and the quantized model get BatchNorm statistics measured at their own weights
    (the 120 training records in 8 batches of 16, folded into cleared sums); every other blob is the stage's
    own, and --bn-images 0 keeps the dense model's statistics."""
    from squeezecaffe.cli import main
    from squeezecaffe.proto import read_text

    out = tmp_path / "c"
    assert main(["compress", str(finished_run), "--out", str(out), "--retrain-epochs", "0", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "pruned + BatchNorm re-estimated" in said and "over 128 training images" in said
    dense = _blobs(finished_run / "best.caffemodel")
    pruned_convs = {c.layer for c in load_constraints(out / "pruned" / "masks.npz") if not c.mask.all()}
    net = read_text(out / "pruned" / "recalibrate" / "train_val.prototxt", pb.NetParameter)
    norms = {lp.name: lp.batch_norm_param.moving_average_fraction for lp in net.layer if lp.type == "BatchNorm"}
    for stage in ("pruned", "quantized"):
        before, after = _blobs(out / stage / f"{stage}.caffemodel"), _blobs(out / stage / "model.caffemodel")
        assert before.keys() == after.keys() and norms.keys() < after.keys()
        for name, blobs in after.items():
            if name in norms:
                f = norms[name]
                assert blobs[2][0] == pytest.approx(sum(f ** i for i in range(8)), rel=1e-6), name
                if name.removesuffix("/bn") in pruned_convs:  # measured anew at the thinned convolution
                    assert not np.array_equal(blobs[0], dense[name][0]), name
            else:
                assert all(np.array_equal(a, b) for a, b in zip(blobs, before[name], strict=True)), name
    final = _blobs(out / "final" / "model.caffemodel")  # what the .sqz decodes to carries the new statistics
    assert all(np.array_equal(final[n][0], _blobs(out / "quantized" / "model.caffemodel")[n][0]) for n in norms)

    kept = tmp_path / "k"
    assert main(["compress", str(finished_run), "--out", str(kept), "--retrain-epochs", "0", "--bn-images", "0",
                 "--quiet"]) == 0
    assert "re-estimated" not in capsys.readouterr().out
    stats = _blobs(kept / "final" / "model.caffemodel")
    assert all(np.array_equal(stats[n][0], dense[n][0]) for n in norms)
    assert main(["compress", str(finished_run), "--out", str(tmp_path / "x"), "--bn-images", "-2"]) == 2
    assert "--bn-images -2" in capsys.readouterr().err


def test_the_default_retraining_runs_one_epoch_raised_to_a_floor_of_iterations(finished_run, data):
    """A small set's epoch is a handful of updates: by default each stage runs one epoch, or as many as reach
    RETRAIN_MIN_ITERATIONS; an explicit --retrain-epochs is kept as given."""
    import math
    from dataclasses import replace

    from squeezecaffe.compress.options import RETRAIN_MIN_ITERATIONS, CompressOptions
    from squeezecaffe.compress.retrain import retrain_context, retraining_epochs
    from squeezecaffe.evaluation.artifacts import resolve_artifacts

    ctx = retrain_context(resolve_artifacts(str(finished_run)), None, CompressOptions())
    assert ctx is not None and ctx.base.batch_size == 16
    epochs, epoch = retraining_epochs(ctx, CompressOptions())
    assert epoch == math.ceil(120 / 16)  # 120 training records in batches of 16
    assert epochs == math.ceil(RETRAIN_MIN_ITERATIONS / epoch) and (epochs - 1) * epoch < RETRAIN_MIN_ITERATIONS
    assert retraining_epochs(ctx, CompressOptions(retrain_epochs=2)) == (2, epoch)
    one_by_one = replace(ctx, base=replace(ctx.base, batch_size=1))  # 120 iterations an epoch: 5 epochs
    assert retraining_epochs(one_by_one, CompressOptions()) == (math.ceil(RETRAIN_MIN_ITERATIONS / 120), 120)


def test_a_stage_takes_over_the_source_runs_model_settings_and_decides_its_own_run():
    """stage_config: what carries from the source run's config.json into a retraining stage, and what the stage
    decides for itself (a field added to TrainConfig must be placed in one of the two lists below)."""
    import dataclasses

    from squeezecaffe.compress.options import CompressOptions
    from squeezecaffe.compress.retrain import Retrain, stage_config
    from squeezecaffe.engines.device import DeviceOptions
    from squeezecaffe.train.config import TrainConfig
    from squeezecaffe.train.guard import GuardOptions
    from squeezecaffe.train.plateau import PlateauOptions

    source = TrainConfig(
        model="fullbypass8", solver="own_solver.prototxt", data="/d", epochs=30, batch_size=16, test_batch_size=50,
        input="56x56", classes=10, solver_set={"momentum": "0.8"}, engine="caffe",
        device_options=DeviceOptions(device="cuda", channels_last=True, amp="bf16", gpu_transform=True,
                                     data_in_memory=True),
        workers=5, seed=7, keep=9, weights="/w.caffemodel", plateau=PlateauOptions(patience=7),
        allow_sorted=True, recipe="paper", guard=GuardOptions(retries=0), tensorboard=True, constraints="/c.npz",
        centroid_gradient="sum", normalize="std", freeze=["conv1"], bn_images=0)
    cfg = stage_config(Retrain(source, 0.04), CompressOptions(device="cpu", seed=3), epochs=2)
    carried = {"model", "data", "batch_size", "test_batch_size", "input", "workers", "allow_sorted", "recipe",
               "normalize", "centroid_gradient"}
    decided = {"solver": None, "epochs": 2, "classes": None, "solver_set": {}, "engine": "torch",
               "device_options": DeviceOptions(device="cpu", channels_last=True), "seed": 3, "keep": 3,
               "weights": None, "plateau": PlateauOptions(early_stop=False), "guard": GuardOptions(),
               "tensorboard": False, "constraints": None, "freeze": [], "bn_images": TrainConfig().bn_images}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert carried | set(decided) == names, f"placed nowhere: {names - carried - set(decided)}"
    for name in carried:
        assert getattr(cfg, name) == getattr(source, name), name
    for name, value in decided.items():
        assert getattr(cfg, name) == value, name
