"""The plain-PyTorch peer of the multi-arm U-Net (benchmarks/torch_unet.py, timed beside the
pipeline's Keras model): the same parameters as the Keras model for the same widths, and, with
the Keras weights copied in, the same probabilities."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from t2lesion.unet.model import ModelConfig, build_model
from tests.conftest import REPO

torch = pytest.importorskip("torch")  # the CPU build is in requirements.lock

spec = importlib.util.spec_from_file_location("torch_unet", REPO / "benchmarks" / "torch_unet.py")
T = importlib.util.module_from_spec(spec)
spec.loader.exec_module(T)

CONFIGS = [
    {"patch_size": (8, 32, 32), "widths": (4, 8, 8, 8), "seed": 3},  # the paper's layout, tiny widths
    {"patch_size": (8, 16, 16), "widths": (6, 10), "strides": ((1, 2, 2),), "supervision_levels": 1,
     "block_kernels": (((1, 3, 3), (3, 3, 3)),) * 2, "dense_skip": False, "down_kernel": "stride", "seed": 4},
]


def _keras_counts(model):
    def n(ws):
        return sum(int(np.prod(w.shape)) for w in ws)

    bn_stats = [w for w in model.non_trainable_weights if w.path.endswith(("moving_mean", "moving_variance"))]
    return n(model.trainable_weights), n(bn_stats)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_torch_peer_has_the_keras_parameters_and_gives_its_probabilities(cfg):
    cfg = ModelConfig.from_dict(cfg)
    keras_model = build_model(cfg)
    peer = T.MultiArmUNet(cfg)
    assert T.count_parameters(peer) == _keras_counts(keras_model)
    assert T.load_keras_weights(peer, keras_model) == len(peer.layers)
    # trained-looking BN statistics, so that inference-mode BN is not the identity
    rng = np.random.default_rng(0)
    for layer in keras_model.get_layer("encoder").layers + keras_model.get_layer("decoder").layers:
        if layer.__class__.__name__ == "BatchNormalization":
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    T.load_keras_weights(peer, keras_model)
    x = rng.normal(0, 1, (2, *cfg.patch_size, 3)).astype("float32")
    out = keras_model(x, training=False)
    want = [np.asarray(p) for p in (out if isinstance(out, (list, tuple)) else [out])]
    peer.eval()
    with torch.no_grad():
        got = [p.numpy() for p in peer(torch.from_numpy(x).permute(0, 4, 1, 2, 3))]
    assert len(got) == len(want) == cfg.supervision_levels
    for g, w in zip(got, want, strict=True):
        assert w.std() > 1e-3
        np.testing.assert_allclose(np.moveaxis(g, 1, -1), w, atol=2e-5, rtol=0)
