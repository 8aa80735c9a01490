"""The shapes world: procedural scenes of textured, rotated, overlapping shapes with captions.

Later chapters share it (ViT, hierarchical ViTs, segmentation, multimodal, diffusion,
interpretability), so every scene carries everything they need: the image, a compositional
caption, semantic and instance masks, a depth map, boxes, per-object attributes and a task label.

Scene `i` of `split` is a pure function of (seed, split, i): its random numbers come from a
generator seeded by a hash of that triple, so the same triple gives the same tensors whatever `n`
is, and different splits draw from different streams (a test checks that no image repeats).

Rendering is vectorised: every object is an inside-test on the pixel grid of a batch of scenes,
after rotating the grid into the object's frame. No pixel is anti-aliased, so masks and image
agree exactly: a background pixel in the mask is exactly the background colour in the image.

Tasks (the `label` of every scene, `ShapesDataset.num_classes` classes):

| task           | scenes                                          | label                                   |
|----------------|-------------------------------------------------|-----------------------------------------|
| "shape"        | exactly one large object, the rest small        | SHAPES index of the large object        |
| "colour"       | exactly one large object, the rest small        | COLOURS index of the large object       |
| "texture"      | exactly one large object, the rest small        | TEXTURES index of the large object      |
| "count"        | 1..max_objects objects                          | the number of objects (0 is never used) |
| "texture_side" | 2..max_objects objects; exactly one striped and | 0 if the striped object's centre is     |
|                | one dotted, the rest solid; their centres at    | left of the dotted one's, 1 if right    |
|                | least 1/10 of the image apart horizontally      |                                         |

"texture_side" needs both scales at once: stripes and dots differ only at the 2-pixel scale
(at size 32), while the answer is the coarse layout of two objects anywhere in the image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset

from course_lib.data.registry import SPLITS, register

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
TEXTURES = ("solid", "stripes", "dots")
TASKS = ("shape", "colour", "texture", "count", "texture_side")
BACKGROUNDS = ("plain", "noisy")

# Every object colour has a zero channel and every background channel is >= 0.35, so no object
# pixel (plain or dark) can ever equal a background pixel.
_RGB = torch.tensor([[255, 0, 0], [0, 190, 0], [0, 80, 255], [255, 215, 0], [215, 0, 215], [0, 205, 230]], dtype=torch.uint8)
_DARK = 0.35  # the second colour of stripes and dots: the object colour times this
_RADIUS = (0.11, 0.19)  # bounding radius of small and large objects, as a fraction of the image side
_PERIOD = 1 / 8  # texture period as a fraction of the image side: 4 pixels at size 32
_MIN_VISIBLE = 0.5  # every object keeps at least half its pixels visible after occlusion
_MIN_SIDE_GAP = 0.1  # texture_side: horizontal gap between the two textured centres
_MAX_ATTEMPTS = 200
_SALT = 0x5A4E5  # separates this world's random streams from any other dataset's
_PER_OBJECT = 8  # uniforms per object: shape, colour, size, texture, x, y, rotation, spare
_PER_SCENE = 5  # uniforms per scene: count, background grey, tint (3)
_SINGULAR = {"stripes": "striped", "dots": "dotted", "solid": ""}


@dataclass
class ShapeObject:
    """One object of a scene; `x`, `y` are its centre in pixels, `rotation` in degrees."""

    shape: str
    colour: str
    size: str
    texture: str
    x: float
    y: float
    rotation: float

    def phrase(self) -> str:
        """'a small red striped circle' (solid textures are not named)."""
        words = [self.size, self.colour, _SINGULAR[self.texture], self.shape]
        return "a " + " ".join(w for w in words if w)


@dataclass
class Scene:
    """One rendered scene. Masks are (H, W) long; `boxes` is (K, 4) pixel xyxy, x1/y1 exclusive."""

    image: Tensor  # (3, H, W) float in [0, 1]
    caption: str
    semantic: Tensor  # 0 background, 1 + SHAPES index of the object on top
    instance: Tensor  # 0 background, k = the k-th object drawn (k >= 1), the one on top
    depth: Tensor  # how many objects are stacked at each pixel (2 where one occludes another)
    boxes: Tensor  # (K, 4) float, the full (unoccluded) extent of each object
    objects: list[ShapeObject] = field(default_factory=list)
    label: int = 0
    task: str = "shape"


def _check_options(n: int, size: int, seed: int, max_objects: int, task: str, background: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size={size!r} must be an int of at least 16 (smaller images cannot show textures)")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int")
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {TASKS}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background={background!r}; expected one of {BACKGROUNDS}")
    low = 2 if task == "texture_side" else 1
    if not isinstance(max_objects, int) or not low <= max_objects <= 6:
        raise ValueError(f"max_objects={max_objects!r} must be an int in {low}..6 for task={task!r}")


def _scene_rngs(indices: Tensor, split: str, seed: int) -> list[np.random.Generator]:
    """One generator per scene, seeded by a hash of (seed, split, index): the split-safe stream."""
    split_id = SPLITS.index(split)
    return [np.random.default_rng([_SALT, seed, split_id, int(i)]) for i in indices]


def _decode(u: Tensor, max_objects: int, task: str) -> dict[str, Tensor]:
    """Turn (N, D) uniforms into scene attributes, applying the task's constraints on the world."""
    n, k = u.shape[0], max_objects
    low = 2 if task == "texture_side" else 1
    count = low + (u[:, 0] * (max_objects - low + 1)).long().clamp(max=max_objects - low)
    obj = rearrange(u[:, _PER_SCENE:], "n (k a) -> n k a", a=_PER_OBJECT)
    shape = (obj[..., 0] * len(SHAPES)).long().clamp(max=len(SHAPES) - 1)
    colour = (obj[..., 1] * len(COLOURS)).long().clamp(max=len(COLOURS) - 1)
    size = (obj[..., 2] * 2).long().clamp(max=1)
    texture = (obj[..., 3] * len(TEXTURES)).long().clamp(max=len(TEXTURES) - 1)
    slot = torch.arange(k).expand(n, k)
    spare = obj[..., 7]  # objects 0 and 1 lend their spare uniforms to pick the task's objects
    first = (spare[:, 0] * count).long().clamp(max=count - 1)
    if task in ("shape", "colour", "texture"):
        size = (slot == first[:, None]).long()
    if task == "texture_side":
        second = (first + 1 + (spare[:, 1] * (count - 1)).long().clamp(max=count - 2)) % count
        texture = torch.where(slot == first[:, None], 1, torch.where(slot == second[:, None], 2, 0))
    radius = torch.tensor(_RADIUS)[size]
    centre = radius[..., None] + obj[..., 4:6] * (1 - 2 * radius[..., None])  # (N, K, 2) inside the image
    rotation = obj[..., 6] * 360.0
    present = slot < count[:, None]
    return dict(count=count, shape=shape, colour=colour, size=size, texture=texture, centre=centre,
                rotation=rotation, present=present, target=first, grey=u[:, 1], tint=u[:, 2:5])


def _inside(attrs: dict[str, Tensor], size: int) -> tuple[Tensor, Tensor]:
    """(N, K, H, W) inside-test of every object, and the (N, K, H, W) 'bright' texture phase."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    dx = grid[None, None, None, :] - attrs["centre"][..., 0, None, None]  # (N, K, 1, W)
    dy = grid[None, None, :, None] - attrs["centre"][..., 1, None, None]  # (N, K, H, 1)
    theta = torch.deg2rad(attrs["rotation"])[..., None, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    lx, ly = cos * dx + sin * dy, cos * dy - sin * dx  # (N, K, H, W) in the object's frame
    radius = torch.tensor(_RADIUS)[attrs["size"]][..., None, None]
    a, b = lx / radius, ly / radius
    abs_a, abs_b = a.abs(), b.abs()
    tests = torch.stack([
        a * a + b * b <= 1.0,  # circle
        torch.maximum(abs_a, abs_b) <= 0.75,  # square
        (b <= 0.5) & (math.sqrt(3) * abs_a - b <= 1.0),  # triangle, apex up, circumradius 1
        ((abs_a <= 0.3) | (abs_b <= 0.3)) & (torch.maximum(abs_a, abs_b) <= 0.95),  # cross
    ])  # (S, N, K, H, W)
    inside = tests.gather(0, attrs["shape"][None, ..., None, None].expand(1, *lx.shape))[0]
    inside &= attrs["present"][..., None, None]
    # Phases are 0.5 at the object's centre: a dot sits there, so even a small object shows one.
    phase_x, phase_y = (lx / _PERIOD + 0.5) % 1.0, (ly / _PERIOD + 0.5) % 1.0
    stripes = phase_x < 0.5
    dots = (phase_x - 0.5) ** 2 + (phase_y - 0.5) ** 2 > 0.3**2
    texture = attrs["texture"][..., None, None]
    bright = torch.where(texture == 0, True, torch.where(texture == 1, stripes, dots))
    return inside, bright


def _background(attrs: dict[str, Tensor], rngs: list[np.random.Generator], size: int, kind: str) -> Tensor:
    """(N, 3, H, W) uint8: a plain grey in 0.4..0.7, or a tinted grey with light per-pixel noise."""
    grey = (0.4 + 0.3 * attrs["grey"])[:, None]
    if kind == "noisy":
        grey = grey + 0.1 * (attrs["tint"] - 0.5)
    level = (grey * 255).round().expand(-1, 3)[..., None, None].expand(-1, 3, size, size)
    if kind == "noisy":
        noise = np.stack([rng.integers(-12, 13, (3, size, size)) for rng in rngs])
        level = level + torch.from_numpy(noise).float()
    return level.clamp(0, 255).to(torch.uint8)


def _visible_enough(attrs: dict[str, Tensor], inside: Tensor, instance: Tensor, task: str) -> Tensor:
    """(N,) bool: every object keeps enough visible pixels, and the task's layout is unambiguous."""
    k = inside.shape[1]
    area = inside.sum(dim=(2, 3))  # (N, K)
    ids = torch.arange(1, k + 1)[None, :, None, None]
    visible = (instance[:, None] == ids).sum(dim=(2, 3))
    ok = ((visible >= _MIN_VISIBLE * area) & (visible >= 1)) | ~attrs["present"]
    ok = ok.all(dim=1)
    if task == "texture_side":
        x = attrs["centre"][..., 0]
        striped = (x * (attrs["texture"] == 1)).sum(1)
        dotted = (x * (attrs["texture"] == 2)).sum(1)
        ok &= (striped - dotted).abs() >= _MIN_SIDE_GAP
    return ok


def _render(attrs: dict[str, Tensor], rngs: list[np.random.Generator], size: int, background: str) -> dict[str, Tensor]:
    """Draw objects in order onto the background; later objects cover earlier ones."""
    inside, bright = _inside(attrs, size)
    k = inside.shape[1]
    image = _background(attrs, rngs, size, background)
    colour = _RGB[attrs["colour"]]  # (N, K, 3)
    dark = (colour.float() * _DARK).round().to(torch.uint8)
    instance = torch.zeros(inside.shape[0], size, size, dtype=torch.long)
    for j in range(k):
        paint = torch.where(bright[:, j, None], colour[:, j, :, None, None], dark[:, j, :, None, None])  # (N, 3, H, W)
        image = torch.where(inside[:, j, None], paint, image)
        instance = torch.where(inside[:, j], j + 1, instance)
    return dict(image=image, instance=instance, inside=inside)


def _boxes(inside: Tensor) -> Tensor:
    """(N, K, 4) pixel xyxy (x1, y1 exclusive) of each object's full extent; zeros for absent slots."""
    size = inside.shape[-1]
    cols, rows = inside.any(dim=2), inside.any(dim=3)  # (N, K, W), (N, K, H)
    pos = torch.arange(size)

    def span(hit: Tensor) -> tuple[Tensor, Tensor]:
        low = torch.where(hit, pos, size).min(dim=-1).values
        high = torch.where(hit, pos + 1, 0).max(dim=-1).values
        return low.clamp(max=high), high

    x0, x1 = span(cols)
    y0, y1 = span(rows)
    return torch.stack([x0, y0, x1, y1], dim=-1).float()


def task_labels(attrs: dict[str, Tensor], task: str) -> Tensor:
    """(N,) long label of each scene for `task` (see the module docstring for the table)."""
    target = attrs["target"][:, None]
    if task == "count":
        return attrs["count"].clone()
    if task == "texture_side":
        x = attrs["centre"][..., 0]
        striped = (x * (attrs["texture"] == 1)).sum(1)
        dotted = (x * (attrs["texture"] == 2)).sum(1)
        return (striped > dotted).long()
    return attrs[task].gather(1, target)[:, 0]


def render_batch(indices: Sequence[int] | Tensor, *, split: str = "train", size: int = 32, seed: int = 0, max_objects: int = 4,
                 task: str = "shape", background: str = "plain") -> dict[str, Tensor]:
    """Render scenes `indices` of `split` at once, the vectorised core of `load("shapes")`.

    Returns (N, ...) tensors: image (3, H, W) uint8, semantic/instance/depth (H, W) long,
    boxes (K, 4), per-object attribute indices (K,) (shape, colour, size, texture), centre (K, 2)
    as fractions of the side, rotation (K,) degrees, present (K,) bool, count and label.
    """
    _check_options(1, size, seed, max_objects, task, background)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    rngs = _scene_rngs(indices, split, seed)
    width = _PER_SCENE + _PER_OBJECT * max_objects
    uniforms = torch.from_numpy(np.stack([rng.random(width) for rng in rngs])).float()
    todo = torch.arange(len(rngs))
    out: dict[str, Tensor] = {}
    for _ in range(_MAX_ATTEMPTS):
        attrs = _decode(uniforms[todo], max_objects, task)
        drawn = _render(attrs, [rngs[i] for i in todo], size, background)
        ok = _visible_enough(attrs, drawn["inside"], drawn["instance"], task)
        _store(out, {**attrs, **drawn}, todo[ok], ok, len(rngs))
        todo = todo[~ok]
        if len(todo) == 0:
            return _finish(out, task)
        uniforms[todo] = torch.from_numpy(np.stack([rngs[i].random(width) for i in todo])).float()
    raise ValueError(f"max_objects={max_objects} at size={size}: could not place the objects visibly; use fewer objects")


def _store(out: dict[str, Tensor], batch: dict[str, Tensor], where: Tensor, ok: Tensor, n: int) -> None:
    """Copy the accepted rows of `batch` into the full-size tensors of `out` at rows `where`."""
    for key, value in batch.items():
        if key not in out:
            out[key] = torch.zeros((n, *value.shape[1:]), dtype=value.dtype)
        out[key][where] = value[ok]


def _finish(out: dict[str, Tensor], task: str) -> dict[str, Tensor]:
    inside = out.pop("inside")
    shape_of_instance = torch.cat([torch.zeros_like(out["shape"][:, :1]), out["shape"] + 1], dim=1)
    out["semantic"] = shape_of_instance.gather(1, rearrange(out["instance"], "n h w -> n (h w)")).view_as(out["instance"])
    out["depth"] = inside.sum(dim=1)
    out["boxes"] = _boxes(inside)
    out["label"] = task_labels(out, task)
    return out


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is relative to `b`, by centre, along the axis where they differ most."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def caption(objects: list[ShapeObject]) -> str:
    """'a small red striped circle left of a large blue square; also a small green dotted cross'."""
    if len(objects) == 1:
        return objects[0].phrase()
    text = f"{objects[0].phrase()} {relation(objects[0], objects[1])} {objects[1].phrase()}"
    if len(objects) > 2:
        text += "; also " + " and ".join(o.phrase() for o in objects[2:])
    return text


CAPTION_PATTERN = re.compile(r"\ba (small|large) (\w+) (?:(striped|dotted) )?(\w+)")  # one object phrase


def parse_caption(text: str) -> tuple[list[tuple[str, str, str, str]], str | None]:
    """The (size, colour, texture, shape) phrases of a caption, and its relation (None for one object)."""
    phrases = [(s, c, {"striped": "stripes", "dotted": "dots", "": "solid"}[t], sh)
               for s, c, t, sh in CAPTION_PATTERN.findall(text)]
    found = re.search(r" (left of|right of|above|below) a ", text)
    return phrases, found.group(1) if found else None


class ShapesDataset(Dataset):
    """Scenes of the shapes world held in memory; `dataset[i]` is a `Scene`.

    For training, `pairs(target)` gives (image, target) pairs, target one of 'label', 'semantic',
    'instance', 'depth'. Images are stored as uint8 and turned into floats on access.
    """

    def __init__(self, batch: dict[str, Tensor], task: str, split: str) -> None:
        self.batch, self.task, self.split = batch, task, split

    def __len__(self) -> int:
        return self.batch["image"].shape[0]

    @property
    def size(self) -> int:
        return self.batch["image"].shape[-1]

    @property
    def num_classes(self) -> int:
        """How many classes the task's label can take."""
        return {"shape": len(SHAPES), "colour": len(COLOURS), "texture": len(TEXTURES),
                "count": self.batch["shape"].shape[1] + 1, "texture_side": 2}[self.task]

    @property
    def images(self) -> Tensor:
        """(N, 3, H, W) float images in [0, 1]."""
        return self.batch["image"].float() / 255

    @property
    def labels(self) -> Tensor:
        return self.batch["label"]

    def objects(self, index: int) -> list[ShapeObject]:
        """The attributes of scene `index`'s objects, in drawing order."""
        b = self.batch
        scale = self.size
        return [
            ShapeObject(SHAPES[b["shape"][index, k]], COLOURS[b["colour"][index, k]], SIZES[b["size"][index, k]],
                        TEXTURES[b["texture"][index, k]], float(b["centre"][index, k, 0]) * scale,
                        float(b["centre"][index, k, 1]) * scale, float(b["rotation"][index, k]))
            for k in range(int(b["count"][index]))
        ]

    def __getitem__(self, index: int) -> Scene:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index={index} out of range for {len(self)} scenes")
        index = index % len(self)
        b, objects = self.batch, self.objects(index)
        return Scene(
            image=b["image"][index].float() / 255, caption=caption(objects), semantic=b["semantic"][index],
            instance=b["instance"][index], depth=b["depth"][index], boxes=b["boxes"][index, : len(objects)],
            objects=objects, label=int(b["label"][index]), task=self.task,
        )

    def pairs(self, target: str = "label") -> _Pairs:
        """A dataset of (image (3, H, W) float, target) for training loops and DataLoaders."""
        if target not in ("label", "semantic", "instance", "depth"):
            raise ValueError(f"target={target!r}; expected one of 'label', 'semantic', 'instance', 'depth'")
        return _Pairs(self.batch["image"], self.batch[target])

    def __repr__(self) -> str:
        return f"ShapesDataset(split={self.split!r}, task={self.task!r}, n={len(self)}, size={self.size})"


class _Pairs(Dataset):
    """(image, target) pairs over uint8 images, converted to float in [0, 1] per item."""

    def __init__(self, images: Tensor, targets: Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float() / 255, self.targets[index]


_CHUNK_PIXELS = 2_000_000  # scenes per rendering chunk * H * W: bounds memory at any resolution


@register("shapes")
def load_shapes(split: str, n: int = 1000, size: int = 32, seed: int = 0, max_objects: int = 4,
                task: str = "shape", background: str = "plain") -> ShapesDataset:
    """`n` scenes of the shapes world at `size` x `size` pixels, labelled for `task`."""
    _check_options(n, size, seed, max_objects, task, background)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    parts = [render_batch(range(start, min(start + chunk, n)), split=split, size=size, seed=seed,
                          max_objects=max_objects, task=task, background=background)
             for start in range(0, n, chunk)]
    batch = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return ShapesDataset(batch, task, split)


def one_object_classes(colours: int = 3) -> list[str]:
    """Names of the classes of `one_object_scenes`: every shape in the first `colours` colours, class id
    shape · colours + colour."""
    if isinstance(colours, bool) or not isinstance(colours, int) or not 1 <= colours <= len(COLOURS):
        raise ValueError(f"colours={colours!r} must be an int from 1 to {len(COLOURS)}")
    return [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS[:colours]]


def one_object_scenes(split: str, n: int, *, size: int = 16, colours: int = 3) -> tuple[Tensor, Tensor, list[str]]:
    """Scenes with one large object whose colour is among the first `colours`, for the generators of notebooks
    21-22: (images in [-1, 1], class ids shape · colours + colour, captions). Of `n` scenes rendered, those in
    other colours are left out (about half for colours=3)."""
    one_object_classes(colours)  # checks colours
    scenes = load_shapes(split, n=n, size=size, max_objects=1, task="shape")
    shape, colour = scenes.batch["shape"][:, 0], scenes.batch["colour"][:, 0]
    keep = (colour < colours).nonzero().flatten()
    return scenes.images[keep] * 2 - 1, (shape * colours + colour)[keep], [scenes[int(i)].caption for i in keep]
