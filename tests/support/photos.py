"""Photographed digits, synthesised: MNIST test digits rendered as a phone would see them on paper.

Two generators, written apart so that tuning the digit preparation on one does not tune it to the
quirks of its own renderer:

* `photo_a`: ink composited into paper reflectance, light as a product of a linear gradient, a
  vignette and a soft shadow; table edges as half-planes; Gaussian noise, Gaussian blur, JPEG.
* `photo_b`: ink darkens the paper subtractively (pen pressure as a power of the stroke), paper with
  low-frequency fibre texture, light from a point source (inverse-square falloff) or a 2-D quadratic,
  a slight perspective tilt, the page as a rotated rectangle on a textured table, strokes made a
  little thinner or bolder, salt-and-pepper specks, box blur or motion blur, JPEG or PNG.

Each takes a 28×28 uint8 MNIST digit (white on black), a kind (KINDS) and a NumPy Generator and
returns the encoded file's bytes.  `photo_set(generator, digits, labels, per_kind, seed)` makes a
labelled set across all kinds.  NumPy and Pillow only.

    python tests/support/photos.py CKPT [PER_KIND]   # accuracy per kind, both generators
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

KINDS = ("clean", "dim", "gradient", "shadow", "table", "small", "colour", "degraded", "mixed", "large")


# --------------------------------------------------------------------------- shared pieces
def _frame_size(rng, kind: str) -> tuple[int, int]:
    if kind == "large":
        w, h = (3000, 4000) if rng.random() < 0.5 else (4032, 3024)
    elif kind == "small":
        w, h = [(1600, 1200), (2048, 1536), (1920, 1080), (1200, 1600)][rng.integers(4)]
    else:
        w, h = [(640, 480), (800, 600), (1024, 768), (480, 640), (768, 1024), (1280, 960)][rng.integers(6)]
    return int(w), int(h)


def _digit_mask(digit: np.ndarray, size: int, angle: float, resample) -> np.ndarray:
    """The 28×28 digit scaled to size×size, rotated by angle degrees: ink coverage in [0, 1]."""
    im = Image.fromarray(digit).resize((size, size), resample).rotate(angle, resample=Image.BILINEAR, expand=True)
    return np.clip(np.asarray(im, dtype=np.float32) / 255.0, 0.0, 1.0)


def _encode(rgb: np.ndarray, rng, jpeg_quality: int | None) -> bytes:
    im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if jpeg_quality is None:
        im.save(buf, "PNG", compress_level=1)
    else:
        im.save(buf, "JPEG", quality=int(jpeg_quality))
    return buf.getvalue()


# --------------------------------------------------------------------------- generator A
def photo_a(digit: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    W, H = _frame_size(rng, kind)
    every = kind in ("mixed", "large")
    short = min(W, H)
    frac = rng.uniform(0.03, 0.06) if kind == "small" else rng.uniform(0.03, 0.30) if every else rng.uniform(0.1, 0.3)
    box = frac * short  # the ink's bounding box height, as MNIST's 20 of 28 pixels
    size = max(8, int(round(box * 28 / 20)))
    angle = rng.uniform(-12, 12) if (every or rng.random() < 0.5) else 0.0
    m = _digit_mask(digit, size, angle, Image.BICUBIC)
    mh, mw = m.shape

    # paper and ink reflectance (per channel)
    if kind == "clean":
        paper, ink = np.full(3, rng.uniform(0.85, 0.95)), np.full(3, rng.uniform(0.02, 0.12))
    elif kind == "dim":
        paper = np.full(3, rng.uniform(0.35, 0.6)) * rng.uniform(0.95, 1.05, 3)
        ink = paper * rng.uniform(0.3, 0.6)
    elif kind == "colour" or (every and rng.random() < 0.5):
        paper = rng.uniform(0.6, 0.95) * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.65, 1.0)])
        ink = [np.array([0.1, 0.15, 0.5]), np.array([0.45, 0.08, 0.08]), np.array([0.15, 0.3, 0.15]),
               np.array([0.3, 0.3, 0.3])][rng.integers(4)] * rng.uniform(0.5, 1.2)
    else:
        paper = np.full(3, rng.uniform(0.6, 0.95)) * rng.uniform(0.97, 1.03, 3)
        ink = paper * rng.uniform(0.05, 0.45)

    # where the digit goes: anywhere that keeps it inside the frame, off-centre allowed
    margin = 0.05 * short
    x0 = int(rng.uniform(margin, max(margin + 1, W - mw - margin)))
    y0 = int(rng.uniform(margin, max(margin + 1, H - mh - margin)))
    x0, y0 = min(max(0, x0), max(0, W - mw)), min(max(0, y0), max(0, H - mh))
    if kind not in ("mixed", "large", "small"):  # near the middle, as a user points a phone
        x0 = int(np.clip((W - mw) / 2 + rng.normal(0, 0.08) * W, 0, max(0, W - mw)))
        y0 = int(np.clip((H - mh) / 2 + rng.normal(0, 0.08) * H, 0, max(0, H - mh)))
    mw, mh = min(mw, W - x0), min(mh, H - y0)
    m = m[:mh, :mw]

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    refl = np.empty((H, W, 3), np.float32)
    refl[:] = paper
    cov = m[..., None]
    refl[y0:y0 + mh, x0:x0 + mw] = paper * (1 - cov) + ink * cov

    # table edges: dark half-planes from a side or a corner, kept clear of the digit
    if kind == "table" or (every and rng.random() < 0.4):
        table = np.zeros((H, W), np.float32)
        sides = [int(rng.integers(4))] if rng.random() < 0.5 else [int(s) for s in rng.choice(4, 2, replace=False)]
        for side in sides:
            tilt = math.tan(math.radians(rng.uniform(-8, 8)))
            if side in (0, 1):  # left / right
                room = x0 if side == 0 else W - (x0 + mw)
                d = rng.uniform(0.02, 0.9) * max(0.0, room - 0.02 * W)
                edge = (d if side == 0 else W - d) + tilt * (yy - H / 2)
                t = (edge - xx) if side == 0 else (xx - edge)
            else:  # top / bottom
                room = y0 if side == 2 else H - (y0 + mh)
                d = rng.uniform(0.02, 0.9) * max(0.0, room - 0.02 * H)
                edge = (d if side == 2 else H - d) + tilt * (xx - W / 2)
                t = (edge - yy) if side == 2 else (yy - edge)
            table = np.maximum(table, np.clip(t / 2.0 + 0.5, 0, 1))
        colour = [np.array([0.25, 0.15, 0.08]), np.array([0.06, 0.06, 0.06]), np.array([0.3, 0.3, 0.32]),
                  np.array([0.15, 0.1, 0.05])][rng.integers(4)] * rng.uniform(0.5, 1.3)
        refl = refl * (1 - table[..., None]) + colour * table[..., None]

    # light: gradient × vignette × shadow
    light = np.ones((H, W), np.float32)
    if kind in ("gradient", "dim") or (every and rng.random() < 0.7) or rng.random() < 0.2:
        theta = rng.uniform(0, 2 * math.pi)
        u = ((xx - W / 2) * math.cos(theta) + (yy - H / 2) * math.sin(theta)) / (0.5 * math.hypot(W, H))
        strength = rng.uniform(0.3, 0.75) if kind == "gradient" else rng.uniform(0.1, 0.5)
        light *= 1 - strength * (u + 1) / 2
        if kind == "gradient" or rng.random() < 0.5:
            r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / ((W / 2) ** 2 + (H / 2) ** 2)
            light *= 1 - rng.uniform(0.2, 0.6) * r2
    if kind == "shadow" or (every and rng.random() < 0.3):
        theta = rng.uniform(0, 2 * math.pi)
        u = (xx - W / 2) * math.cos(theta) + (yy - H / 2) * math.sin(theta)
        cut = rng.uniform(-0.3, 0.3) * short
        softness = rng.uniform(0.01, 0.08) * short
        shade = 1 / (1 + np.exp(-(u - cut) / softness))
        light *= 1 - rng.uniform(0.3, 0.6) * shade
    exposure = rng.uniform(0.5, 0.8) if kind == "dim" else rng.uniform(0.85, 1.1)
    cast = rng.uniform(0.85, 1.15, 3) if (kind == "colour" or (every and rng.random() < 0.5)) else np.ones(3)
    rgb = refl * (light * (255 * exposure))[..., None] * cast

    # camera: blur, noise, JPEG
    degraded = kind == "degraded" or every
    if degraded or rng.random() < 0.3:
        radius = rng.uniform(0.3, 2.0) * short / 600
        im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        rgb = np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    sigma = rng.uniform(3, 12) if degraded else rng.uniform(0.5, 4)
    rgb = rgb + rng.normal(0, sigma, (H, W, 1)).astype(np.float32) + rng.normal(0, sigma / 3, (H, W, 3)).astype(
        np.float32)
    quality = int(rng.uniform(25, 60)) if degraded else int(rng.uniform(70, 95))
    return _encode(rgb, rng, quality)


# --------------------------------------------------------------------------- generator B
def _smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bicubic-upsampled."""
    g = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    im = Image.fromarray(g, mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(im, dtype=np.float32), -1, 1)


def photo_b(digit: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    W, H = _frame_size(rng, kind)
    if rng.random() < 0.5:
        W, H = H, W
    every = kind in ("mixed", "large")
    long_side, short = max(W, H), min(W, H)

    # the pen: strokes a little thinner or bolder, pressure as a power of coverage
    d = Image.fromarray(digit)
    pen = rng.random() if every or kind == "degraded" else 0.5
    if pen < 0.15:
        d = d.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(0.6))  # felt tip
    elif pen > 0.85:
        d = Image.fromarray(np.clip(np.asarray(d, np.float32) * 1.6 - 120, 0, 255).astype(np.uint8))  # fine pen
    frac = rng.uniform(0.025, 0.05) if kind == "small" else rng.uniform(0.04, 0.28)
    box = frac * (long_side if rng.random() < 0.5 else short)
    size = max(8, int(round(box * 28 / 20)))
    cov = _digit_mask(np.asarray(d), size, rng.uniform(-10, 10), Image.LANCZOS) ** rng.uniform(0.7, 1.4)
    ch, cw = cov.shape

    # the page: a rotated rectangle, possibly smaller than the frame (the table shows around it)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx = W / 2 + rng.uniform(-0.25, 0.25) * (W - cw)
    cy = H / 2 + rng.uniform(-0.25, 0.25) * (H - ch)
    on_table = kind == "table" or (every and rng.random() < 0.5)
    if on_table:
        a = math.radians(rng.uniform(-15, 15))
        half_w = rng.uniform(0.6, 0.9) * W / 2 + cw / 2
        half_h = rng.uniform(0.6, 0.9) * H / 2 + ch / 2
        pcx = cx + rng.uniform(-0.3, 0.3) * W * 0.5
        pcy = cy + rng.uniform(-0.3, 0.3) * H * 0.5
        u = (xx - pcx) * math.cos(a) + (yy - pcy) * math.sin(a)
        v = -(xx - pcx) * math.sin(a) + (yy - pcy) * math.cos(a)
        inside = np.minimum(half_w - np.abs(u), half_h - np.abs(v))
        # keep the digit on the page
        du = (cx - pcx) * math.cos(a) + (cy - pcy) * math.sin(a)
        dv = -(cx - pcx) * math.sin(a) + (cy - pcy) * math.cos(a)
        reach = math.hypot(cw, ch) / 2 + 0.02 * short
        inside += max(0.0, max(abs(du) + reach - half_w, abs(dv) + reach - half_h))
        page = np.clip(inside / 1.5 + 0.5, 0, 1)
    else:
        page = np.ones((H, W), np.float32)

    tone = rng.uniform(0.55, 0.97) if kind != "dim" else rng.uniform(0.3, 0.55)
    tint = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.7, 1.0)]) if (kind == "colour" or every) \
        else np.ones(3)
    fibre = 1 + 0.04 * _smooth_noise(rng, H, W, 24)
    paper = tone * fibre[..., None] * tint
    darkness = rng.uniform(0.4, 0.7) if kind == "dim" else rng.uniform(0.55, 0.97)
    pigment = np.array([1.0, 1.0, 1.0]) if rng.random() < 0.6 else \
        [np.array([0.9, 0.85, 0.4]), np.array([0.3, 0.9, 0.9]), np.array([0.6, 0.3, 0.9])][rng.integers(3)]
    absorb = np.zeros((H, W), np.float32)
    x0, y0 = int(round(cx - cw / 2)), int(round(cy - ch / 2))
    x0, y0 = int(np.clip(x0, 0, max(0, W - cw))), int(np.clip(y0, 0, max(0, H - ch)))
    absorb[y0:y0 + ch, x0:x0 + cw] = cov[:H - y0, :W - x0]
    refl = paper * (1 - darkness * absorb[..., None] * pigment)
    if on_table:
        wood = np.array([rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.3), rng.uniform(0.03, 0.25)])
        grain = 1 + 0.25 * _smooth_noise(rng, H, W, 40)
        refl = refl * page[..., None] + (wood * grain[..., None]) * (1 - page[..., None])

    # light: a point source (inverse square) or a quadratic surface, times a soft blob of shade
    if kind == "gradient" or every or rng.random() < 0.3:
        if rng.random() < 0.5:
            lx, ly = rng.uniform(-0.5, 1.5) * W, rng.uniform(-0.5, 1.5) * H
            height = rng.uniform(0.4, 1.2) * long_side
            light = height ** 2 / ((xx - lx) ** 2 + (yy - ly) ** 2 + height ** 2)
            light = light / light.max()
        else:
            c = rng.uniform(-0.5, 0.5, 5)
            x, y = xx / W - 0.5, yy / H - 0.5
            light = 1 + c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y
            light = np.clip(light / light.max(), 0.25, 1)
    else:
        light = np.ones((H, W), np.float32)
    if kind == "shadow" or (every and rng.random() < 0.4):
        sx, sy = rng.uniform(0, W), rng.uniform(0, H)
        rad = rng.uniform(0.2, 0.6) * long_side
        blob = np.exp(-(((xx - sx) ** 2 + (yy - sy) ** 2) / rad ** 2) ** 2)
        light = light * (1 - rng.uniform(0.25, 0.55) * blob)
    level = rng.uniform(110, 250) if kind != "dim" else rng.uniform(90, 160)
    cast = np.array([rng.uniform(0.8, 1.1), 1.0, rng.uniform(0.8, 1.2)]) if (kind == "colour" or every) else np.ones(3)
    rgb = refl * (light * level)[..., None] * cast

    # a slight perspective tilt (the phone not quite parallel to the page)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if every or rng.random() < 0.3:
        k = rng.uniform(-0.00012, 0.00012, 2) * 1000 / long_side
        img = img.transform((W, H), Image.PERSPECTIVE, (1, 0, 0, 0, 1, 0, k[0], k[1]), Image.BILINEAR,
                            fillcolor=tuple(int(v) for v in rgb[H // 2, 0]))

    # camera
    degraded = kind == "degraded" or every
    if degraded or rng.random() < 0.3:
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.BoxBlur(max(1, int(rng.uniform(0.5, 2.5) * short / 700))))
        else:  # a little motion blur: the average of shifted copies
            n = max(2, int(rng.uniform(2, 6) * short / 700))
            a = np.asarray(img, np.float32)
            dx, dy = rng.integers(-1, 2, 2)
            a = sum(np.roll(a, (i * dy, i * dx), axis=(0, 1)) for i in range(n)) / n
            img = Image.fromarray(a.astype(np.uint8))
    a = np.asarray(img, np.float32)
    sigma = rng.uniform(2, 10) if degraded else rng.uniform(0, 3)
    a = a + rng.normal(0, sigma, a.shape[:2] + (1,)).astype(np.float32)
    if degraded:
        specks = rng.random(a.shape[:2]) < rng.uniform(0, 0.002)
        a[specks] = rng.choice([0, 255], (int(specks.sum()), 1))
    quality = None if rng.random() < 0.2 else int(rng.uniform(20, 55) if degraded else rng.uniform(60, 97))
    return _encode(a, rng, quality)


GENERATORS = {"a": photo_a, "b": photo_b}


def photo_set(generator: str, digits: np.ndarray, labels: np.ndarray, per_kind: int, seed: int,
              kinds=KINDS, large: int | None = None):
    """[(file bytes, label, kind)], per_kind photos of each kind (`large` of the large kind), the digits
    drawn at random from `digits`."""
    rng = np.random.default_rng(seed)
    make = GENERATORS[generator]
    out = []
    for kind in kinds:
        for _ in range(per_kind if kind != "large" or large is None else large):
            i = int(rng.integers(len(digits)))
            out.append((make(digits[i], kind, rng), int(labels[i]), kind))
    return out


def accuracy_by_kind(results) -> dict[str, tuple[int, int]]:
    """{kind: (correct, total)} from [(kind, correct)]; 'all' for the whole set."""
    table: dict[str, list[int]] = {}
    for kind, ok in results:
        for k in (kind, "all"):
            table.setdefault(k, [0, 0])
            table[k][0] += int(ok)
            table[k][1] += 1
    return {k: (c, t) for k, (c, t) in table.items()}


def format_table(tables: dict[str, dict[str, tuple[int, int]]]) -> str:
    """Per-kind accuracy, one column per set."""
    kinds = [k for k in (*KINDS, "all") if any(k in t for t in tables.values())]
    lines = ["kind      " + "".join(f"{name:>16}" for name in tables)]
    for k in kinds:
        cells = []
        for t in tables.values():
            c, n = t.get(k, (0, 0))
            cells.append(f"{100 * c / max(n, 1):6.1f} % ({c}/{n})".rjust(16))
        lines.append(f"{k:<10}" + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":  # accuracy per kind with a checkpoint, both generators
    import sys
    import time

    from convprop import checkpoint
    from convprop.data import load_mnist, normalize
    from convprop.data.images import read_digit
    from convprop.train import predict

    ckpt = sys.argv[1]
    per_kind = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    seeds = {"a": int(sys.argv[3]) if len(sys.argv) > 3 else 1, "b": int(sys.argv[4]) if len(sys.argv) > 4 else 2}
    model = checkpoint.restore_model(checkpoint.load(ckpt), ckpt)
    x, y = load_mnist(train=False)
    tables = {}
    for gen in ("a", "b"):
        t0 = time.perf_counter()
        photos = photo_set(gen, x, y, per_kind, seeds[gen], large=max(2, per_kind // 5))
        t1 = time.perf_counter()
        digits = np.stack([read_digit(data)[0] for data, _, _ in photos])
        t2 = time.perf_counter()
        pred = predict(model, normalize(digits)).argmax(1)
        tables[f"generator {gen}"] = accuracy_by_kind([(k, p == lab) for (_, lab, k), p in zip(photos, pred)])
        print(f"generator {gen}: {len(photos)} photos, made in {t1 - t0:.1f} s, prepared in {t2 - t1:.1f} s",
              file=sys.stderr)
    print(format_table(tables))
