"""Independent NumPy re-implementations of Caffe's layer arithmetic (float64), written from Caffe's
formulas with explicit loops, for pinning the torch engine. Nothing here imports the engine."""

from __future__ import annotations

import math

import numpy as np


# ----------------------------------------------------------------------------- convolution
def conv_forward(x, w, b, stride, pad, dilation=(1, 1), group=1):
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        xs = xp[:, g * cg : (g + 1) * cg]
        ws = w[g * og : (g + 1) * og]
        for ky in range(kh):
            for kx in range(kw):
                patch = xs[:, :, ky * dh : ky * dh + sh * (oh - 1) + 1 : sh, kx * dw : kx * dw + sw * (ow - 1) + 1 : sw]
                out[:, g * og : (g + 1) * og] += np.einsum("ncyx,oc->noyx", patch, ws[:, :, ky, kx])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def conv_backward(x, w, dy, stride, pad, dilation=(1, 1), group=1):
    h, wd = x.shape[2:]
    o, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    oh, ow = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dw_ = np.zeros_like(w)
    og = o // group
    for g in range(group):
        xs = xp[:, g * cg : (g + 1) * cg]
        dys = dy[:, g * og : (g + 1) * og]
        for ky in range(kh):
            for kx in range(kw):
                ys = slice(ky * dh, ky * dh + sh * (oh - 1) + 1, sh)
                xs_ = slice(kx * dw, kx * dw + sw * (ow - 1) + 1, sw)
                dw_[g * og : (g + 1) * og, :, ky, kx] = np.einsum("noyx,ncyx->oc", dys, xs[:, :, ys, xs_])
                dxp[:, g * cg : (g + 1) * cg, ys, xs_] += np.einsum("noyx,oc->ncyx", dys, w[g * og : (g + 1) * og, :, ky, kx])
    dx = dxp[:, :, ph : ph + h, pw : pw + wd]
    return dx, dw_, dy.sum(axis=(0, 2, 3))


# ----------------------------------------------------------------------------- pooling
def pool_out(size, k, s, p):
    out = math.ceil((size + 2 * p - k) / s) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_forward(x, kind, k, s, p):
    """Caffe's PoolingLayer::Forward_cpu, window by window. Returns (top, argmax or divisors)."""
    n, c, h, w = x.shape
    oh, ow = pool_out(h, k, s, p), pool_out(w, k, s, p)
    out = np.zeros((n, c, oh, ow))
    aux = {}
    for py in range(oh):
        for px in range(ow):
            hs, ws = py * s - p, px * s - p
            if kind == "MAX":
                he, we = min(hs + k, h), min(ws + k, w)
                hs, ws = max(hs, 0), max(ws, 0)
                best = np.full((n, c), -np.inf)
                arg = np.zeros((n, c, 2), int)
                for yy in range(hs, he):
                    for xx in range(ws, we):
                        v = x[:, :, yy, xx]
                        better = v > best  # strict: the first maximum in scan order wins
                        best = np.where(better, v, best)
                        arg[better] = (yy, xx)
                out[:, :, py, px] = best
                aux[(py, px)] = arg
            else:
                he, we = min(hs + k, h + p), min(ws + k, w + p)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                out[:, :, py, px] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
                aux[(py, px)] = (hs, he, ws, we, size)
    return out, aux


def pool_backward(x, kind, aux, dy):
    dx = np.zeros_like(x)
    n, c = x.shape[:2]
    for (py, px), a in aux.items():
        if kind == "MAX":
            for i in range(n):
                for j in range(c):
                    yy, xx = a[i, j]
                    dx[i, j, yy, xx] += dy[i, j, py, px]
        else:
            hs, he, ws, we, size = a
            dx[:, :, hs:he, ws:we] += dy[:, :, py, px][:, :, None, None] / size
    return dx


# ----------------------------------------------------------------------------- batch norm
def bn_train_forward(x, eps):
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3))
    y = (x - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + eps)
    return y, mean, var


def bn_train_backward(x, dy, eps):
    y, _, var = bn_train_forward(x, eps)
    inv = 1 / np.sqrt(var.reshape(1, -1, 1, 1) + eps)
    mdy = dy.mean(axis=(0, 2, 3), keepdims=True)
    mdyy = (dy * y).mean(axis=(0, 2, 3), keepdims=True)
    return inv * (dy - mdy - y * mdyy)


def bn_running(xs, lam):
    """[mean_sum, var_sum, factor] after TRAIN forwards of each x in xs, from zeros."""
    mean_sum = var_sum = 0.0
    factor = 0.0
    for x in xs:
        _, batch_mean, var = bn_train_forward(x, 1e-5)
        m = x.size / x.shape[1]
        factor = lam * factor + 1
        mean_sum = lam * mean_sum + batch_mean
        var_sum = lam * var_sum + m / (m - 1) * var
    return mean_sum, var_sum, np.array([factor])


# ----------------------------------------------------------------------------- losses
def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_loss(x, labels, ignore=None, mode="VALID"):
    """(loss, dx) of Caffe's SoftmaxWithLoss on N x C x (spatial) logits."""
    p = softmax(x)
    n, c = x.shape[:2]
    inner = int(np.prod(x.shape[2:])) if x.ndim > 2 else 1
    pf = p.reshape(n, c, inner)
    lab = labels.reshape(n, inner).astype(int)
    loss, valid = 0.0, 0
    grad = pf.copy()
    for i in range(n):
        for j in range(inner):
            if ignore is not None and lab[i, j] == ignore:
                grad[i, :, j] = 0
                continue
            loss -= math.log(max(pf[i, lab[i, j], j], 1.17549435e-38))
            grad[i, lab[i, j], j] -= 1
            valid += 1
    norm = {"VALID": valid, "FULL": n * inner, "BATCH_SIZE": n, "NONE": 1}[mode]
    norm = max(1.0, norm)
    return loss / norm, (grad / norm).reshape(x.shape)


def accuracy(x, labels, top_k=1, ignore=None):
    n, c = x.shape
    right = count = 0
    for i in range(n):
        lab = int(labels[i])
        if ignore is not None and lab == ignore:
            continue
        count += 1
        better = sum(1 for k in range(c) if x[i, k] > x[i, lab])
        right += better < top_k
    return right / max(count, 1)
