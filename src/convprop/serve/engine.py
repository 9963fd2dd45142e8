"""What the page shows, computed by convprop's own layers: one digit's forward pass, its backward pass
for a chosen class, and a model training in a background thread.

The backward pass is the one `Sequential.backward` runs — every layer's own `backward`, last layer
first — walked here one layer at a time so that the gradient between every two layers can be shown.
One lock serialises everything that uses the model (its layers keep their forward caches).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .. import models, nn, optim
from .._extras import install
from ..data import DataLoader, load_mnist, normalize
from ..explain import EQUATIONS, LAYER_RULES
from ..functional import conv_transpose2d, log_softmax
from ..train import Divergence, evaluate, fit

SIZE = 28  # the models see 28×28 MNIST digits
MAX_IMAGE_PIXELS = 4_000_000


class InputError(ValueError):
    """A request the server cannot use (the message is one line, for HTTP 400)."""


class Busy(RuntimeError):
    """A request the trainer's state forbids now (HTTP 409): start while running, restore while training."""


# --------------------------------------------------------------------------- inputs
def digit_from_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes → a 28×28 uint8 digit, prepared as `convprop predict` prepares an image file."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError(f"image: decoding images needs Pillow ({install('serve')})") from None
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"image: not a PNG or JPEG that can be decoded ({type(e).__name__})") from None
    if w * h > MAX_IMAGE_PIXELS or min(w, h) < 1:
        raise InputError(f"image: expected at most {MAX_IMAGE_PIXELS:,} pixels, got {w}×{h}; send a smaller one")
    from ..data.images import read_digit

    try:
        return read_digit(data, name="image")[0]  # from the bytes: no file, no name of the client's
    except (ValueError, OSError) as e:
        raise InputError(str(e)) from None


def digit_from_pixels(pixels) -> np.ndarray:
    """A 28×28 nested list of numbers in [0, 255] (white ink on black, as MNIST) → uint8."""
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"pixels: expected a {SIZE}×{SIZE} array of numbers, got a ragged or non-numeric value") \
            from None
    if a.shape != (SIZE, SIZE):
        raise InputError(f"pixels: expected shape ({SIZE}, {SIZE}), got {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise InputError("pixels: expected finite values in [0, 255]")
    return np.round(a).astype(np.uint8)


def digit_from_request(body) -> np.ndarray:
    """The digit of a JSON request: {"image": base64 PNG/JPEG (a data: URL is fine)} or {"pixels": 28×28}."""
    import base64
    import binascii

    if not isinstance(body, dict):
        raise InputError(f"body: expected a JSON object, got {type(body).__name__}")
    if ("image" in body) == ("pixels" in body):
        raise InputError('body: expected exactly one of "image" (base64 PNG/JPEG) or "pixels" (28×28 numbers)')
    if "pixels" in body:
        return digit_from_pixels(body["pixels"])
    text = body["image"]
    if not isinstance(text, str):
        raise InputError(f"image: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("image: not valid base64") from None
    return digit_from_image(data)


# --------------------------------------------------------------------------- the model's passes
def describe_layer(k: int, layer: nn.Module) -> str:
    """'3: Conv2d 6→16, 5×5' — the label the page prints above a layer's pictures."""
    name = type(layer).__name__
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        extra = "".join(f", {a} {v}" for a, v in (("stride", layer.stride), ("pad", layer.padding)) if v not in (1, 0))
        return f"{k}: {name} {layer.in_channels}→{layer.out_channels}, {kh}×{kw}{extra}"
    if isinstance(layer, nn.Linear):
        return f"{k}: {name} {layer.in_features}→{layer.out_features}"
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"{k}: {name} {layer.kernel_size}×{layer.kernel_size}"
    return f"{k}: {name}"


class Engine:
    """A Sequential model and the passes the page draws.  All model use holds `lock`."""

    def __init__(self, model: nn.Sequential, source: str, meta: dict | None = None) -> None:
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
        self.model, self.source, self.meta = model, source, dict(meta or {})
        self.lock = threading.Lock()
        self.waiting = 0  # requests queued for the lock (training yields to them between steps)
        self._count = threading.Lock()
        self.initial = {k: v.copy() for k, v in model.state_dict().items()}
        self.model.eval()
        self.dtype = model.dtype.type  # np.float32 or np.float64
        self.trainer = Trainer(self)

    def _acquire(self):
        with self._count:
            self.waiting += 1
        self.lock.acquire()
        with self._count:
            self.waiting -= 1

    def input(self, digit: np.ndarray) -> np.ndarray:
        """uint8 (28, 28) → the model's (1, 1, 28, 28) input, normalised as in training."""
        return normalize(digit[None], dtype=self.dtype)

    def describe(self) -> dict:
        x = np.zeros((1, 1, SIZE, SIZE), self.dtype)
        layers = []
        self._acquire()
        try:
            h = x
            for k, layer in enumerate(self.model):
                h = layer(h)
                layers.append({"index": k, "type": type(layer).__name__, "label": describe_layer(k, layer),
                               "output_shape": list(h.shape[1:]),
                               "parameters": {n: list(p.shape) for n, p in layer.named_parameters()},
                               "equation": LAYER_RULES.get(type(layer).__name__)})
        finally:
            self.lock.release()
        return {"source": self.source, **self.meta, "input_shape": [1, SIZE, SIZE], "classes": int(h.shape[1]),
                "layers": layers, "equations": {"loss": EQUATIONS["loss"]}}

    def _run(self, fn):
        """fn() under the lock, in eval mode, the model's mode (training may be running) restored after."""
        self._acquire()
        was = self.model.training
        try:
            self.model.eval()
            return fn()
        finally:
            self.model.train(was)
            self.lock.release()

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Every layer's output for one input (1, 1, 28, 28), and the class probabilities."""
        def run():
            outs, h = [], x
            for layer in self.model:
                h = layer(h)
                outs.append(h)
            return outs

        outs = self._run(run)
        return outs, np.exp(log_softmax(outs[-1].astype(np.float64), 1)[0])[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[1]

    def backward(self, x: np.ndarray, target: int | None = None) -> dict:
        """The backward pass of L = cross-entropy(model(x), target) (default: the predicted class), layer
        by layer through each layer's own backward.  Returns the loss, the probabilities, ∂L/∂x and for
        every layer k: ∂L/∂(output of k), ∂L/∂(input of k), its parameters' gradients, and the pieces of
        its rule (pooling: where the gradient goes; conv: K ⋆ᵀ ∂Z by channel and patch ⊙ ∂Z_ij)."""
        return self._run(lambda: self._backward(x, target))

    def _backward(self, x: np.ndarray, target: int | None) -> dict:
        model = self.model
        layers = list(model)
        acts, h = [x], x
        for layer in layers:
            h = layer(h)
            acts.append(h)
        logits = h
        probs = np.exp(log_softmax(logits.astype(np.float64), 1)[0])[0]
        classes = logits.shape[1]
        if target is None:
            target = int(probs.argmax())
        elif isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < classes:
            raise InputError(f"class: expected an integer class in 0..{classes - 1}, got {target!r}")
        loss, d = nn.CrossEntropyLoss()(logits, np.array([target]))  # L and ∂L/∂z
        model.zero_grad()
        out = []
        for k in range(len(layers) - 1, -1, -1):
            layer = layers[k]
            entry = {"index": k, "type": type(layer).__name__, "label": describe_layer(k, layer),
                     "equation": LAYER_RULES.get(type(layer).__name__), "grad_output": d}
            pieces = _conv_pieces(layer, acts[k], d) if isinstance(layer, nn.Conv2d) else None
            d = layer.backward(d)  # the layer's own backward: ∂L/∂(its input), parameter gradients into .grad
            entry["grad_input"] = d
            entry["parameters"] = {n: {"value": p.data.copy(), "grad": p.grad.copy()}
                                   for n, p in layer.named_parameters()}
            if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
                layer(acts[k])  # the same forward again, then its backward of ones: where each ∂ goes
                entry["routing"] = layer.backward(np.ones_like(acts[k + 1]))
                key = "maxpool.unpool" if isinstance(layer, nn.MaxPool2d) else "avgpool.spread"
                entry["routing_equation"] = EQUATIONS[key]
            if pieces is not None:
                pieces["sum_check"] = float(np.abs(pieces.pop("patch_sum") - entry["parameters"]["weight"]["grad"]
                                                   [pieces["channel"]]).max())
                entry["pieces"] = pieces
            out.append(entry)
        model.zero_grad()
        return {"class": target, "loss": float(loss), "probs": probs, "predicted": int(probs.argmax()),
                "input_grad": d, "layers": out[::-1]}


def _conv_pieces(layer: nn.Conv2d, a: np.ndarray, dz: np.ndarray, top: int = 4) -> dict | None:
    """A conv layer's two sums of docs/math.md, on this input: ∂A = Σ_o ∂Z_o ⋆ᵀ K_o (the largest of the
    per-channel transposed convolutions, by convprop's conv_transpose2d) and, for the output channel o
    with the largest Σ|∂Z_o|, the patches A_patch_ij ⊙ ∂Z_ij of the `top` largest |∂Z_ij|, whose sum over all
    ij is ∂W_o.  None for grouped or dilated convolutions (the pictures assume neither)."""
    if layer.groups != 1 or layer.dilation not in (1, (1, 1)):
        return None
    (kh, kw), s, p = layer.kernel_size, _pair(layer.stride), _pair(layer.padding)
    K, Z = layer.weight.data, dz[0]  # (O, I, kh, kw), (O, OH, OW)
    h, w = a.shape[2:]
    extra = (h + 2 * p[0] - ((Z.shape[1] - 1) * s[0] + kh), w + 2 * p[1] - ((Z.shape[2] - 1) * s[1] + kw))
    energy = np.abs(Z).sum(axis=(1, 2))
    channels = [int(o) for o in np.argsort(-energy, kind="stable")[:top]]
    transposed = [{"channel": o, "dz": Z[o], "kernel": K[o],
                   "contribution": conv_transpose2d(dz[:, o:o + 1], K[o:o + 1], stride=s, padding=p,
                                                    output_padding=extra)[0][0]} for o in channels]
    ap = np.pad(a[0], ((0, 0), (p[0], p[0]), (p[1], p[1])))
    patches = np.lib.stride_tricks.sliding_window_view(ap, (kh, kw), axis=(1, 2))[:, ::s[0], ::s[1]]
    patches = patches[:, : Z.shape[1], : Z.shape[2]]  # (I, OH, OW, kh, kw)
    o = channels[0]
    flat = np.argsort(-np.abs(Z[o]).ravel(), kind="stable")[:top]
    products = []
    for f in flat:
        i, j = divmod(int(f), Z.shape[2])
        products.append({"position": [i, j], "dz": float(Z[o, i, j]), "patch": patches[:, i, j],
                         "product": patches[:, i, j] * Z[o, i, j]})
    return {"transposed": transposed, "transposed_equation": EQUATIONS["conv.dA"], "channel": o,
            "patches": products, "patch_equation": EQUATIONS["conv.dW"], "bias_equation": EQUATIONS["conv.dB"],
            "patch_sum": np.einsum("iyxab,yx->iab", patches, Z[o])}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------- training
class Trainer:
    """Trains the engine's model on the bundled MNIST sample in a background thread, with `train.fit`
    one epoch at a time; each step holds the engine's lock, and a stop ends the epoch after the step."""

    BATCH, TEST_IMAGES, MAX_POINTS = 64, 1000, 20000

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.points: list[list[float]] = []  # [step, loss, batch accuracy]
        self.epochs: list[dict] = []
        self.error: str | None = None
        self.step = 0
        self.run = 0  # counts resets: the curves start again
        self.started = 0.0
        self._data = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, lr: float = 1e-3, reset: bool = False, seed: int = 0) -> None:
        if self.running:
            raise Busy("training is already running: stop it first")
        if reset:
            import convprop.random as R

            R.manual_seed(seed)
            fresh = models.lenet5() if not self.engine.meta.get("model") else \
                models.build(self.engine.meta["model"], **self.engine.meta.get("config", {}))
            self.engine._acquire()
            try:
                self.engine.model.load_state_dict(fresh.state_dict())
            finally:
                self.engine.lock.release()
            self.points, self.epochs, self.step = [], [], 0
            self.run += 1
        self.error = None
        self.stop_event.clear()
        self.started = time.time()
        self.thread = threading.Thread(target=self._train, args=(lr, seed), name="convprop-serve-train", daemon=True)
        self.thread.start()

    def stop(self, wait: float = 10.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(wait)

    def restore(self) -> None:
        """The weights the server started with."""
        if self.running:
            raise Busy("training is running: stop it first")
        self.engine._acquire()
        try:
            self.engine.model.load_state_dict(self.engine.initial)
        finally:
            self.engine.lock.release()

    def data(self):
        if self._data is None:
            images, labels = load_mnist(None, train=True)
            test_x, test_y = load_mnist(None, train=False)
            self._data = (images, labels, test_x[: self.TEST_IMAGES], test_y[: self.TEST_IMAGES])
        return self._data

    def _train(self, lr: float, seed: int) -> None:
        engine, model = self.engine, self.engine.model
        try:
            images, labels, test_x, test_y = self.data()
            loader = DataLoader(images, labels, self.BATCH, shuffle=True, seed=seed, max_shift=2, dtype=engine.dtype)
            loader.epoch = len(self.epochs)
            test_loader = DataLoader(test_x, test_y, 500, dtype=engine.dtype)
            optimizer = optim.Adam(model.parameters(), lr=lr)
            loss_fn = _Recording(nn.CrossEntropyLoss(), self)
            while not self.stop_event.is_set():
                epoch = len(self.epochs)
                rows = fit(model, loss_fn, optimizer, _Locked(loader, engine, self.stop_event), epoch + 1,
                           start_epoch=epoch, progress=False, log=None)
                row = rows[-1]
                engine._acquire()
                try:
                    row["test_loss"], row["test_acc"] = evaluate(model, test_loader, nn.CrossEntropyLoss())
                    model.eval()
                finally:
                    engine.lock.release()
                row["step"], row["partial"] = self.step, self.stop_event.is_set()
                self.epochs.append(row)
        except Divergence as e:
            self.error = str(e)
        except Exception as e:  # shown on the page, never kills the server
            self.error = f"{type(e).__name__}: {e}"
        finally:
            model.eval()

    def state(self, since: int = 0) -> dict:
        return {"running": self.running, "run": self.run, "step": self.step, "epoch": len(self.epochs),
                "error": self.error, "points": self.points[since:], "next": len(self.points),
                "epochs": list(self.epochs), "seconds": (time.time() - self.started) if self.started else 0.0}


class _Recording:
    """The loss function, recording each training step's loss and batch accuracy for the curves."""

    def __init__(self, loss_fn, trainer: Trainer) -> None:
        self.loss_fn, self.trainer = loss_fn, trainer

    def __call__(self, logits: np.ndarray, y: np.ndarray):
        loss, dlogits = self.loss_fn(logits, y)
        t = self.trainer
        if self.trainer.engine.model.training:
            t.step += 1
            if len(t.points) < t.MAX_POINTS:
                t.points.append([t.step, float(loss), float((logits.argmax(axis=1) == y).mean())])
        return loss, dlogits


class _Locked:
    """A loader whose batches are handed out with the engine's lock held until the next one is asked for
    (fit runs the step in between); it ends early, after at least one batch, when stop is set."""

    def __init__(self, loader: DataLoader, engine: Engine, stop: threading.Event) -> None:
        self.loader, self.engine, self.stop = loader, engine, stop

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for k, batch in enumerate(self.loader):
            if k and self.stop.is_set():
                return
            self.engine._acquire()
            try:
                self.engine.model.train()
                yield batch
            finally:
                self.engine.lock.release()
            if self.engine.waiting:
                time.sleep(0.002)  # let a waiting request have the model between two steps
