"""The offline demo world: procedural stickers and posters in the SER30K and ml-latest-small layouts.

Everything is drawn with PIL from a seed, so the world is deterministic and needs no download. It is small on
purpose (the embedded default of ``pigeon-bench run``), yet its users have learnable preferences:

* stickers: a theme (= a user) fixes a character, a palette and a drawing style; its stickers show the 7
  emotions as facial expressions, some with a caption;
* posters: a movie's genres fix its palette and composition, the title is rendered on it; every user likes
  two genres, rates those movies highly and a few others low.

The world knows its own ground truth: the demo datasets' items carry their factors (:data:`FACTOR_COLUMNS`),
so a known-answer method can draw, say, a user's theme with a reference's emotion (``baselines.oracle``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pigeon_bench import artifacts, fileio
from pigeon_bench.data.build import check_seed, progress
from pigeon_bench.data.model import Dataset, dataset_files
from pigeon_bench.data.sticker import EMOTIONS
from pigeon_bench.errors import UserError

DEMO_VERSION = 4  # bump when the drawings, the sizes or the item columns change: the cache key has it

CHARACTERS = ("cat", "bear", "bunny", "blob", "frog", "robot", "ghost", "bird")
# name: (body, accent, background)
PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "peach": ((250, 180, 140), (200, 90, 70), (255, 240, 228)),
    "mint": ((150, 225, 190), (40, 130, 100), (232, 250, 242)),
    "lavender": ((190, 165, 235), (100, 70, 170), (243, 238, 252)),
    "sky": ((130, 190, 245), (30, 90, 170), (230, 242, 255)),
    "lemon": ((250, 225, 100), (190, 130, 20), (255, 251, 226)),
    "coral": ((245, 120, 130), (150, 30, 60), (255, 232, 235)),
    "charcoal": ((95, 95, 110), (235, 200, 60), (215, 215, 222)),
    "forest": ((90, 150, 80), (230, 240, 170), (226, 238, 218)),
}
STYLES = ("flat", "outline", "pixel", "halftone")
# The colour of an emotion's glow behind the character (and of its mark beside the head).
EMOTION_COLOURS: dict[str, tuple[int, int, int]] = {
    "anger": (235, 60, 50), "disgust": (110, 180, 40), "fear": (120, 90, 210), "happiness": (255, 200, 40),
    "neutral": (170, 170, 170), "sadness": (70, 130, 235), "surprise": (255, 140, 20),
}
CAPTIONS = ("OK!", "LOL", "NO", "Hi!", "Yay", "Why?", "Bye", "Wow", "Ugh", "Hmm")
# The ground-truth columns the demo datasets' items carry beside the builders' own (sticker: theme, emotion
# and text; movie: title and genres). ``demo_seed`` is the world's seed: a poster's layout comes from it.
FACTOR_COLUMNS: dict[str, tuple[str, ...]] = {
    "sticker": ("character", "palette", "style", "demo_seed"),
    "movie": ("demo_seed",),
}

# genre: (top colour, bottom colour, accent)
GENRES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "Action": ((255, 150, 40), (150, 20, 10), (255, 235, 120)),
    "Comedy": ((255, 235, 90), (255, 170, 60), (40, 120, 220)),
    "Drama": ((120, 140, 160), (40, 50, 70), (230, 220, 200)),
    "Horror": ((40, 10, 10), (5, 5, 5), (220, 220, 200)),
    "Romance": ((255, 190, 215), (200, 70, 120), (255, 250, 250)),
    "Sci-Fi": ((20, 30, 90), (0, 0, 20), (120, 230, 255)),
    "Animation": ((120, 220, 255), (255, 140, 220), (255, 255, 120)),
    "Crime": ((70, 70, 70), (15, 15, 15), (230, 190, 60)),
}
TITLE_WORDS: dict[str, tuple[str, ...]] = {
    "Action": ("Fury", "Strike", "Steel", "Blast", "Fire", "Rogue", "Siege", "Thunder"),
    "Comedy": ("Party", "Oops", "Buddies", "Picnic", "Chaos", "Giggle", "Wedding", "Summer"),
    "Drama": ("River", "Silence", "Letters", "Winter", "Promise", "Harbor", "Memory", "Road"),
    "Horror": ("Night", "Crypt", "Shadow", "Hollow", "Fang", "Whisper", "Grave", "Mist"),
    "Romance": ("Heart", "Paris", "Kiss", "Forever", "Rose", "Moonlight", "Vows", "Dance"),
    "Sci-Fi": ("Orbit", "Nebula", "Android", "Mars", "Quantum", "Star", "Signal", "Zero"),
    "Animation": ("Bunny", "Dragon", "Toybox", "Rainbow", "Pebble", "Kite", "Jelly", "Cloud"),
    "Crime": ("Heist", "Alibi", "Docks", "Verdict", "Mob", "Ledger", "Smoke", "Badge"),
}


TITLE_TEMPLATES = ("The {a} {b}", "{a} of the {b}", "{a} {b}", "Return to {a}")
DEMO_MARKER = "pigeon-bench-demo.json"  # in each folder of a demo world: what made it
MAX_IMAGE_SIZE = 2048


def _titles_per_genre() -> int:
    """How many different titles the templates make from a genre's words (two different words each)."""
    return min(len({t.format(a=a, b=b) for t in TITLE_TEMPLATES for a in words for b in words if a != b})
               for words in TITLE_WORDS.values())


@dataclass(frozen=True)
class DemoSizes:
    """Sizes of the demo world (defaults: ~18 test samples per scenario); impossible sizes are refused."""

    themes: int = 28
    users: int = 20
    movies_per_genre: int = 8
    image_size: int = 256
    posters_missing: int = 2  # movies with ratings but no poster, to exercise --images

    def __post_init__(self) -> None:
        limits = {"themes": (2, len(CHARACTERS) * len(PALETTES) * len(STYLES)), "users": (2, None),
                  "movies_per_genre": (2, _titles_per_genre()), "image_size": (32, MAX_IMAGE_SIZE),
                  "posters_missing": (0, len(GENRES) * self.movies_per_genre - 1)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                bounds = f"{low}..{high}" if high is not None else f"{low} or more"
                raise UserError(f"demo {name.replace('_', '-')} must be {bounds}, got {value}")


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, size))


# ---------------------------------------------------------------------------------------------- stickers


def _character_layer(character: str, palette: str, emotion: str, s: int, scale: float) -> Image.Image:
    """The character with its expression on a transparent s x s layer."""
    body, accent, _ = PALETTES[palette]
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy, r = s / 2, s * 0.55, s * 0.3 * scale
    if emotion == "anger":
        body = tuple(min(255, int(c * 0.8 + 60)) if i == 0 else int(c * 0.8) for i, c in enumerate(body))
    elif emotion == "disgust":
        body = tuple(int(c * 0.75 + g) for c, g in zip(body, (10, 50, 10), strict=True))
    # Ears and other features behind the head.
    if character == "cat":
        for sx in (-1, 1):
            d.polygon([(cx + sx * r * 0.9, cy - r * 0.3), (cx + sx * r * 0.75, cy - r * 1.35),
                       (cx + sx * r * 0.15, cy - r * 0.85)], fill=body)
    elif character == "bear":
        for sx in (-1, 1):
            ex, ey = cx + sx * r * 0.75, cy - r * 0.8
            d.ellipse([ex - r * 0.33, ey - r * 0.33, ex + r * 0.33, ey + r * 0.33], fill=body)
            d.ellipse([ex - r * 0.16, ey - r * 0.16, ex + r * 0.16, ey + r * 0.16], fill=accent)
    elif character == "bunny":
        for sx in (-1, 1):
            ex = cx + sx * r * 0.45
            d.ellipse([ex - r * 0.2, cy - r * 1.9, ex + r * 0.2, cy - r * 0.5], fill=body)
            d.ellipse([ex - r * 0.09, cy - r * 1.75, ex + r * 0.09, cy - r * 0.7], fill=accent)
    elif character == "frog":
        for sx in (-1, 1):
            ex, ey = cx + sx * r * 0.55, cy - r * 0.75
            d.ellipse([ex - r * 0.32, ey - r * 0.32, ex + r * 0.32, ey + r * 0.32], fill=body)
    elif character == "robot":
        d.line([(cx, cy - r * 1.0), (cx, cy - r * 1.45)], fill=accent, width=max(2, s // 60))
        d.ellipse([cx - r * 0.12, cy - r * 1.6, cx + r * 0.12, cy - r * 1.36], fill=accent)
    # The head.
    if character == "robot":
        d.rounded_rectangle([cx - r, cy - r, cx + r, cy + r * 0.9], radius=r * 0.25, fill=body)
    elif character in ("blob", "frog"):
        d.ellipse([cx - r * 1.2, cy - r * 0.8, cx + r * 1.2, cy + r * 0.85], fill=body)
    elif character == "ghost":
        pts = [(cx - r, cy)]
        pts += [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in np.linspace(math.pi, 0, 24)]
        pts += [(cx + r - 2 * r * i / 6, cy + r * (1.0 if i % 2 == 0 else 0.75)) for i in range(7)]
        d.polygon(pts, fill=body)
    else:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=body)
    if character == "bird":
        beak = [(cx - r * 0.15, cy + r * 0.05), (cx + r * 0.15, cy + r * 0.05), (cx, cy + r * 0.3)]
        d.polygon(beak, fill=accent)
    _draw_face(d, emotion, cx, cy, r, s, accent, beak=character == "bird")
    _draw_mark(d, emotion, cx + r * 1.25, cy - r * 0.95, r * 0.42, max(2, s // 48))
    return layer


def _draw_mark(d: ImageDraw.ImageDraw, emotion: str, x: float, y: float, m: float, w: int) -> None:
    """The emotion's mark beside the head, as stickers draw them (hearts, a tear, an anger vein...), in a
    colour of its own: the emotion reads at a glance, whatever the theme."""
    if emotion == "happiness":  # two hearts
        for hx, hy, hr in ((x, y, m * 0.55), (x - m * 0.6, y + m * 0.75, m * 0.35)):
            d.ellipse([hx - hr, hy - hr * 0.5, hx, hy + hr * 0.5], fill=(240, 60, 110))
            d.ellipse([hx, hy - hr * 0.5, hx + hr, hy + hr * 0.5], fill=(240, 60, 110))
            d.polygon([(hx - hr * 0.97, hy + hr * 0.1), (hx + hr * 0.97, hy + hr * 0.1), (hx, hy + hr * 1.1)],
                      fill=(240, 60, 110))
    elif emotion == "sadness":  # a rain cloud
        for bx, by, br in ((x - m * 0.4, y, m * 0.4), (x + m * 0.1, y - m * 0.25, m * 0.5),
                           (x + m * 0.55, y, m * 0.35)):
            d.ellipse([bx - br, by - br, bx + br, by + br], fill=(120, 130, 160))
        for k in range(3):
            rx = x - m * 0.5 + k * m * 0.5
            d.line([(rx, y + m * 0.5), (rx - m * 0.15, y + m * 1.0)], fill=(60, 120, 255), width=w)
    elif emotion == "anger":  # the cross-popping vein: four curves bowing towards its centre
        for sx, sy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
            ax, ay = x + sx * m * 0.75, y + sy * m * 0.75
            towards = math.degrees(math.atan2(-sy, -sx))
            d.arc([ax - m * 0.6, ay - m * 0.6, ax + m * 0.6, ay + m * 0.6], towards - 50, towards + 50,
                  fill=(230, 20, 20), width=w + 1)
    elif emotion == "surprise":  # an exclamation mark
        d.polygon([(x - m * 0.3, y - m), (x + m * 0.3, y - m), (x + m * 0.1, y + m * 0.4),
                   (x - m * 0.1, y + m * 0.4)], fill=(255, 170, 0))
        d.ellipse([x - m * 0.2, y + m * 0.6, x + m * 0.2, y + m], fill=(255, 170, 0))
    elif emotion == "fear":  # gloom lines
        for k in range(4):
            gx = x - m * 0.7 + k * m * 0.45
            d.line([(gx, y - m), (gx, y + m * 0.8)], fill=(90, 60, 200), width=w)
    elif emotion == "disgust":  # stink lines
        for k in range(3):
            gx = x - m * 0.6 + k * m * 0.6
            pts = [(gx + m * 0.15 * math.sin(i * 1.6), y - m + i * m * 0.3) for i in range(7)]
            d.line(pts, fill=(110, 170, 30), width=w)
    else:  # neutral: an ellipsis
        for k in range(3):
            ex = x - m * 0.6 + k * m * 0.6
            d.ellipse([ex - m * 0.15, y - m * 0.15, ex + m * 0.15, y + m * 0.15], fill=(120, 120, 120))


def _draw_face(d: ImageDraw.ImageDraw, emotion: str, cx: float, cy: float, r: float, s: int,
               accent: tuple[int, int, int], beak: bool) -> None:
    """Eyes, brows and mouth for one of the 7 emotions."""
    ink = (35, 30, 40)
    w = max(2, s // 64)
    ex, ey, er = r * 0.42, cy - r * 0.2, r * 0.11
    my = cy + r * (0.5 if beak else 0.4)
    for sx in (-1, 1):
        x = cx + sx * ex
        if emotion == "happiness":
            d.arc([x - er * 1.3, ey - er, x + er * 1.3, ey + er * 1.6], 200, 340, fill=ink, width=w)
            d.ellipse([x - er * 1.2, ey + er * 2.2, x + er * 0.4, ey + er * 3.2], fill=(255, 150, 160))
        elif emotion in ("surprise", "fear"):
            big = 1.6 if emotion == "surprise" else 1.4
            d.ellipse([x - er * big, ey - er * big, x + er * big, ey + er * big], fill=(255, 255, 255),
                      outline=ink, width=w)
            p = er * (0.7 if emotion == "surprise" else 0.35)
            d.ellipse([x - p, ey - p, x + p, ey + p], fill=ink)
        elif emotion == "disgust":
            d.line([(x - er * 1.3, ey), (x + er * 1.3, ey + sx * er * 0.3)], fill=ink, width=w)
        else:
            d.ellipse([x - er, ey - er, x + er, ey + er], fill=ink)
        # Brows: inner end low when angry, high when sad or afraid.
        inner, outer = x - sx * er * 1.6, x + sx * er * 1.4
        if emotion == "anger":
            d.line([(inner, ey - er * 1.3), (outer, ey - er * 2.6)], fill=ink, width=w + 1)
        elif emotion in ("sadness", "fear"):
            d.line([(inner, ey - er * 2.6), (outer, ey - er * 1.6)], fill=ink, width=w)
    mw = r * 0.35
    if emotion == "happiness":
        d.chord([cx - mw, my - mw * 0.6, cx + mw, my + mw * 0.8], 0, 180, fill=accent, outline=ink, width=w)
    elif emotion == "sadness":
        d.arc([cx - mw, my, cx + mw, my + mw], 200, 340, fill=ink, width=w)
        tx, ty = cx + ex + er, ey + er * 2
        d.ellipse([tx - er * 0.7, ty, tx + er * 0.7, ty + er * 1.8], fill=(90, 160, 255))
    elif emotion == "anger":
        d.rectangle([cx - mw * 0.8, my, cx + mw * 0.8, my + mw * 0.35], fill=(255, 255, 255), outline=ink,
                    width=w)
        d.line([(cx - mw * 0.8, my + mw * 0.17), (cx + mw * 0.8, my + mw * 0.17)], fill=ink,
               width=max(1, w // 2))
    elif emotion == "surprise":
        d.ellipse([cx - mw * 0.35, my - mw * 0.2, cx + mw * 0.35, my + mw * 0.6], fill=ink)
    elif emotion == "fear":
        pts = [(cx - mw + 2 * mw * i / 8, my + (mw * 0.15 if i % 2 else -mw * 0.15)) for i in range(9)]
        d.line(pts, fill=ink, width=w)
        sx0, sy0 = cx - r * 0.9, cy - r * 0.7
        d.polygon([(sx0, sy0), (sx0 - er, sy0 + er * 2), (sx0 + er, sy0 + er * 2)], fill=(120, 190, 255))
    elif emotion == "disgust":
        pts = [(cx - mw + 2 * mw * i / 6, my + (mw * 0.1 if i % 2 else -mw * 0.1)) for i in range(7)]
        d.line(pts, fill=ink, width=w)
        d.ellipse([cx, my, cx + mw * 0.5, my + mw * 0.6], fill=(235, 110, 130))
    else:  # neutral
        d.line([(cx - mw * 0.7, my), (cx + mw * 0.7, my)], fill=ink, width=w)


def _apply_style(layer: Image.Image, style: str, palette: str, s: int) -> Image.Image:
    """Render the character layer in the theme's drawing style."""
    _, accent, _ = PALETTES[palette]
    if style == "outline":
        # Dilate the silhouette: a box blur then a low threshold (much faster than a max filter).
        grown = layer.getchannel("A").filter(ImageFilter.BoxBlur(max(2, s // 64)))
        grown = grown.point(lambda v: 255 if v > 8 else 0)
        ring = Image.new("RGBA", (s, s), (30, 25, 35, 255))
        ring.putalpha(grown)
        return Image.alpha_composite(ring, layer)
    if style == "pixel":
        small = layer.resize((max(8, s // 5), max(8, s // 5)), Image.Resampling.NEAREST)
        return small.resize((s, s), Image.Resampling.NEAREST)
    if style == "halftone":
        dots = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        dd = ImageDraw.Draw(dots)
        step, rad = max(4, s // 24), max(1, s // 96)
        for y in range(0, s, step):
            for x in range((y // step % 2) * step // 2, s, step):
                dd.ellipse([x - rad, y - rad, x + rad, y + rad], fill=(*accent, 150))
        mask = Image.new("L", (s, s), 0)
        mask.paste(dots.getchannel("A"), (0, 0), layer.getchannel("A"))
        dots.putalpha(mask)
        return Image.alpha_composite(layer, dots)
    return layer


def draw_sticker(character: str, palette: str, style: str, emotion: str, caption: str, size: int,
                 rng: np.random.Generator) -> Image.Image:
    """One sticker: the character showing ``emotion`` in the theme's palette and style, maybe a caption."""
    _, accent, background = PALETTES[palette]
    angle = float(rng.uniform(-12, 12))
    scale = float(rng.uniform(0.85, 1.05))
    layer = _apply_style(_character_layer(character, palette, emotion, size, scale), style, palette, size)
    layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR, center=(size / 2, size * 0.55))
    canvas = Image.new("RGBA", (size, size), (*background, 255))
    off = (int((size - layer.width) / 2 + rng.integers(-size // 16, size // 16 + 1)),
           int((size - layer.height) / 2 + rng.integers(-size // 20, size // 20 + 1)))
    glow = tuple(round(0.6 * b + 0.4 * c) for b, c in zip(background, EMOTION_COLOURS[emotion], strict=True))
    cx, cy, r = size / 2 + off[0], size * 0.55 + off[1], size * 0.44
    ImageDraw.Draw(canvas).ellipse([cx - r, cy - r, cx + r, cy + r], fill=(*glow, 255))
    canvas.alpha_composite(layer, (max(off[0], -layer.width + 1), max(off[1], -layer.height + 1)))
    if caption:
        d = ImageDraw.Draw(canvas)
        font = _font(size // 7)
        d.text((size / 2, size * 0.1), caption, fill=accent, font=font, anchor="mm",
               stroke_width=max(1, size // 80), stroke_fill=(255, 255, 255))
    return canvas.convert("RGB")


def theme_name(number: int, character: str, palette: str, style: str) -> str:
    """A theme's folder name, e.g. ``07-mint-frog-pixel`` (the SER30K ``topic``)."""
    return f"{number:02d}-{palette}-{character}-{style}"


def theme_factors(theme: str) -> tuple[str, str, str]:
    """(character, palette, style) of a demo theme from its name (see :func:`theme_name`)."""
    _, palette, character, style = theme.split("-")
    return character, palette, style


def write_demo_stickers(out: Path, seed: int = 0, sizes: DemoSizes = DemoSizes()) -> Path:
    """SER30K layout: Images/<theme>/sticker_<n>.png and Annotations/{train,val,test}.json."""
    out = Path(out)
    rng = _rng(seed, 1)
    combos = [(c, p, st) for c in CHARACTERS for p in PALETTES for st in STYLES]
    picks = rng.choice(len(combos), size=sizes.themes, replace=False)
    annotations: dict[str, list[dict]] = {"train.json": [], "val.json": [], "test.json": []}
    jobs = []
    for t, pick in enumerate(picks.tolist()):
        character, palette, style = combos[pick]
        theme = theme_name(t + 1, character, palette, style)
        trng = _rng(seed, 2, t)
        for n in range(1, int(trng.integers(8, 15)) + 1):
            emotion_index = int(trng.integers(len(EMOTIONS)))
            caption = str(CAPTIONS[trng.integers(len(CAPTIONS))]) if trng.random() < 0.3 else ""
            sub_seed = int(trng.integers(2**31))
            jobs.append((theme, n, character, palette, style, emotion_index, caption, sub_seed))
    for theme, n, character, palette, style, emotion_index, caption, s in progress(jobs, "drawing stickers"):
        file_name = f"sticker_{n}.png"
        image = draw_sticker(character, palette, style, EMOTIONS[emotion_index], caption, sizes.image_size,
                             np.random.default_rng(s))
        fileio.save_image(out / "Images" / theme / file_name, image)
        split = ("train.json", "val.json", "test.json")[_rng(seed, 3, s).choice(3, p=[0.8, 0.1, 0.1])]
        annotations[split].append({"topic": theme, "file_name": file_name, "anno": emotion_index + 1,
                                   "text": caption})
    for name, entries in annotations.items():
        fileio.write_json(out / "Annotations" / name, {"annotations": entries})
    return out


# ---------------------------------------------------------------------------------------------- posters


def _gradient(w: int, h: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    arr = (np.array(top)[None, None] * (1 - t) + np.array(bottom)[None, None] * t).repeat(w, axis=1)
    return Image.fromarray(arr.round().astype(np.uint8), "RGB")


def _motif(d: ImageDraw.ImageDraw, genre: str, box: tuple[float, float, float, float],
           colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    """The genre's composition inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2 + rng.uniform(-w, w) * 0.08, y0 + h / 2 + rng.uniform(-h, h) * 0.08
    r = min(w, h) * 0.35
    if genre == "Action":  # starburst explosion and diagonal slashes
        n = 14
        pts = [(cx + (r if i % 2 == 0 else r * 0.45) * math.cos(2 * math.pi * i / n + 0.2),
                cy + (r if i % 2 == 0 else r * 0.45) * math.sin(2 * math.pi * i / n + 0.2)) for i in range(n)]
        d.polygon(pts, fill=colour)
        for k in range(3):
            off = (k - 1) * w * 0.25
            d.line([(x0 + off, y1), (x0 + off + w * 0.6, y0)], fill=colour, width=max(2, int(w / 40)))
    elif genre == "Comedy":  # bubbles
        for _ in range(7):
            bx, by, br = x0 + rng.uniform(0, w), y0 + rng.uniform(0, h), r * rng.uniform(0.15, 0.45)
            d.ellipse([bx - br, by - br, bx + br, by + br], outline=colour, width=max(2, int(w / 50)))
    elif genre == "Drama":  # a lone silhouette
        d.ellipse([cx - r * 0.3, cy - r * 0.9, cx + r * 0.3, cy - r * 0.3], fill=colour)
        d.chord([cx - r * 0.7, cy - r * 0.25, cx + r * 0.7, cy + r * 1.1], 180, 360, fill=colour)
    elif genre == "Horror":  # a pale moon and drips from the top
        d.ellipse([cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5], fill=colour)
        for k in range(6):
            dx = x0 + w * (k + 0.5) / 6
            d.polygon([(dx - w / 24, y0), (dx + w / 24, y0), (dx, y0 + h * rng.uniform(0.1, 0.3))],
                      fill=(150, 0, 0))
    elif genre == "Romance":  # hearts
        for _ in range(3):
            hx, hy, hr = cx + rng.uniform(-r, r), cy + rng.uniform(-r, r) * 0.6, r * rng.uniform(0.3, 0.6)
            d.ellipse([hx - hr, hy - hr * 0.5, hx, hy + hr * 0.5], fill=colour)
            d.ellipse([hx, hy - hr * 0.5, hx + hr, hy + hr * 0.5], fill=colour)
            d.polygon([(hx - hr * 0.97, hy + hr * 0.1), (hx + hr * 0.97, hy + hr * 0.1), (hx, hy + hr * 1.1)],
                      fill=colour)
    elif genre == "Sci-Fi":  # a ringed planet among stars
        for _ in range(25):
            sx, sy = x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)
            d.point((sx, sy), fill=(255, 255, 255))
        d.ellipse([cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6], fill=colour)
        d.ellipse([cx - r, cy - r * 0.22, cx + r, cy + r * 0.22], outline=(255, 255, 255),
                  width=max(2, int(w / 60)))
    elif genre == "Animation":  # big rounded friendly shapes
        for k in range(3):
            bx = x0 + w * (0.25 + 0.25 * k)
            br = r * (0.35 + 0.1 * (k % 2))
            box_k = [bx - br, cy - br, bx + br, cy + br]
            if br < 6:  # PIL cannot round corners this small
                d.ellipse(box_k, fill=colour)
            else:
                d.rounded_rectangle(box_k, radius=br * 0.6, fill=colour, outline=(255, 255, 255),
                                    width=max(2, int(w / 60)))
    else:  # Crime: blinds and a frame
        for k in range(8):
            yy = y0 + h * k / 8
            d.rectangle([x0, yy, x1, yy + h / 24], fill=colour)
        d.rectangle([cx - r * 0.5, cy - r * 0.7, cx + r * 0.5, cy + r * 0.7], outline=colour,
                    width=max(2, int(w / 40)))


def draw_poster(title: str, genres: list[str], size: int, rng: np.random.Generator) -> Image.Image:
    """A poster: the first genre sets palette and main motif, a second genre adds a small motif; the title."""
    w, h = round(size * 2 / 3), size
    top, bottom, accent = GENRES[genres[0]]
    im = _gradient(w, h, top, bottom)
    d = ImageDraw.Draw(im)
    _motif(d, genres[0], (0, h * 0.05, w, h * 0.75), accent, rng)
    if len(genres) > 1:
        _motif(d, genres[1], (w * 0.6, h * 0.05, w * 0.95, h * 0.3), GENRES[genres[1]][2], rng)
    d.rectangle([0, h * 0.78, w, h], fill=tuple(int(c * 0.5) for c in bottom))
    font = _font(max(10, h // 16))
    lines = _wrap(title, d, font, w * 0.9)
    for i, line in enumerate(lines[:2]):
        d.text((w / 2, h * (0.84 + 0.08 * i)), line, fill=accent, font=font, anchor="mm")
    return im


def _wrap(text: str, d: ImageDraw.ImageDraw, font, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and d.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def write_demo_movies(out: Path, seed: int = 0, sizes: DemoSizes = DemoSizes()) -> Path:
    """ml-latest-small layout: ratings.csv, movies.csv, links.csv, README.txt and posters/<movieId>.jpg."""
    out = Path(out)
    rng = _rng(seed, 10)
    genre_names = list(GENRES)
    movies = []
    used_titles: set[str] = set()
    movie_id = 0
    for g_index, genre in enumerate(genre_names):
        for _ in range(sizes.movies_per_genre):
            movie_id += 1
            genres = [genre]
            if rng.random() < 0.5:
                other = [x for x in genre_names if x != genre]
                genres.append(str(other[rng.integers(len(other))]))
            words = TITLE_WORDS[genre]
            while True:
                a, b = rng.choice(len(words), size=2, replace=False)
                name = str(rng.choice(TITLE_TEMPLATES)).format(a=words[a], b=words[b])
                if name not in used_titles:
                    used_titles.add(name)
                    break
            year = int(rng.integers(1975, 2019))
            movies.append({"movieId": movie_id, "title": f"{name} ({year})", "genres": "|".join(genres),
                           "primary": g_index})
    movies_df = pd.DataFrame(movies)
    ratings = []
    timestamp = 1_000_000_000
    for user in range(1, sizes.users + 1):
        urng = _rng(seed, 11, user)
        liked_genres = urng.choice(len(genre_names), size=2, replace=False)
        liked_pool = movies_df[movies_df["primary"].isin(liked_genres)]["movieId"].to_numpy()
        other_pool = movies_df[~movies_df["primary"].isin(liked_genres)]["movieId"].to_numpy()
        n_liked = int(urng.integers(14, 18))
        picks = list(urng.choice(liked_pool, size=min(n_liked - 2, len(liked_pool)), replace=False))
        picks += list(urng.choice(other_pool, size=2, replace=False))  # a little noise, as in real histories
        low = list(urng.choice(np.setdiff1d(other_pool, picks), size=5, replace=False))
        events = [(int(m), float(urng.choice([4.0, 4.5, 5.0]))) for m in picks]
        events += [(int(m), float(urng.choice([1.0, 2.0, 2.5, 3.0, 3.5]))) for m in low]
        for i in urng.permutation(len(events)).tolist():
            # Some ratings share a timestamp, as in MovieLens; the builder keeps their file order.
            timestamp += 0 if urng.random() < 0.1 else int(urng.integers(60, 86_400))
            ratings.append({"userId": user, "movieId": events[i][0], "rating": events[i][1],
                            "timestamp": timestamp})
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "ratings.csv", pd.DataFrame(ratings))
    _write_csv(out / "movies.csv", movies_df[["movieId", "title", "genres"]])
    links = pd.DataFrame({"movieId": movies_df["movieId"],
                          "imdbId": [f"{9_000_000 + m:07d}" for m in movies_df["movieId"]],
                          "tmdbId": [str(900_000 + m) for m in movies_df["movieId"]]})
    _write_csv(out / "links.csv", links)
    fileio.write_text(out / "README.txt", "Synthetic pigeon-bench demo world in the ml-latest-small layout. "
                  "Procedural posters; not MovieLens data.\n")
    missing = set(movies_df["movieId"].iloc[-sizes.posters_missing:]) if sizes.posters_missing else set()
    for m in progress([r for r in movies if r["movieId"] not in missing], "drawing posters"):
        rng_m = poster_rng(seed, m["movieId"])
        image = draw_poster(m["title"], m["genres"].split("|"), sizes.image_size, rng_m)
        fileio.save_image(out / "posters" / f"{m['movieId']}.jpg", image)
    return out


def poster_rng(seed: int, movie_id: int) -> np.random.Generator:
    """The random layout (motif positions and sizes) of a movie's poster in the world of ``seed``."""
    return _rng(seed, 12, int(movie_id))


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    fileio.write_text(path, df.to_csv(index=False, lineterminator="\n"))


# ---------------------------------------------------------------------------------------------- world + cache


def write_demo_world(out: str | Path, seed: int = 0, sizes: DemoSizes = DemoSizes()) -> dict[str, Path]:
    """Write ``out/ser30k/`` (SER30K layout) and ``out/ml-latest-small/`` (CSVs + posters/<movieId>.jpg).

    Each folder is written whole (beside, then swapped in), replacing an earlier demo world there; a folder
    of other data is refused.
    """
    out = Path(out)
    check_seed(seed)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    writers = {"sticker": ("ser30k", write_demo_stickers), "movie": ("ml-latest-small", write_demo_movies)}
    for name, _ in writers.values():
        folder = out / name
        if folder.exists() and not _replaceable(folder):
            raise UserError(f"{folder} holds data that is not a demo world (no {DEMO_MARKER}): choose "
                            "another --out")
    marker = {"version": DEMO_VERSION, "seed": seed, "sizes": dataclasses.asdict(sizes)}
    for name, writer in writers.values():
        with fileio.whole_dir(out / name, "the demo world folder") as tmp:
            writer(tmp, seed, sizes)
            fileio.write_json(tmp / DEMO_MARKER, marker)
    return {scenario: out / name for scenario, (name, _) in writers.items()}


def _replaceable(folder: Path) -> bool:
    """An empty folder, or one an earlier ``write_demo_world`` wrote."""
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / DEMO_MARKER).is_file())


def build_demo_datasets(world: Path, out: Path, seed: int = 0,
                        relative_paths: bool = True) -> dict[str, Path]:
    """Run both builders on a demo world; image paths relative to the dataset folders by default."""
    from pigeon_bench.data.movie import build_movie
    from pigeon_bench.data.sticker import build_sticker

    build_sticker(world / "ser30k", out / "sticker", seed=seed, relative_paths=relative_paths)
    movies = world / "ml-latest-small"
    build_movie(movies, out / "movie", images=movies / "posters", seed=seed, relative_paths=relative_paths)
    for scenario in ("sticker", "movie"):
        add_factor_columns(out / scenario, scenario, seed)
    return {"sticker": out / "sticker", "movie": out / "movie"}


def add_factor_columns(folder: Path, scenario: str, seed: int) -> None:
    """Append the ground-truth :data:`FACTOR_COLUMNS` of ``scenario`` to a demo dataset's items (the
    builders' own columns keep their values; samples are untouched, stats record the new table's digest)."""
    dataset = Dataset(folder)
    items = dataset.items_df.copy()
    if scenario == "sticker":
        factors = [theme_factors(t) for t in items["theme"]]
        for i, column in enumerate(("character", "palette", "style")):
            items[column] = [f[i] for f in factors]
    items["demo_seed"] = np.int64(seed)
    files, _ = dataset_files(items, dataset.samples_df, {})
    samples = (folder / "samples.parquet").read_bytes()  # kept byte for byte
    stats = {**dataset.stats, "sha256": {"items.parquet": fileio.sha256(files["items.parquet"]),
                                         "samples.parquet": fileio.sha256(samples)}}
    fileio.write_bytes(folder / "items.parquet", files["items.parquet"])
    fileio.write_json(folder / "stats.json", stats)


def demo_factors(dataset: Dataset) -> pd.DataFrame | None:
    """The items (indexed by item id) with their ground-truth factor columns, or None when ``dataset`` is not
    a demo dataset (its items lack them)."""
    columns = FACTOR_COLUMNS.get(dataset.scenario or "")
    items = dataset.items_df
    if columns is None or not set(columns) <= set(items.columns):
        return None
    return items.set_index(items["item_id"].astype(str))


def ensure_demo_datasets(cache_root: str | Path | None = None, seed: int = 0,
                         sizes: DemoSizes | None = None) -> dict[str, Path]:
    """The demo datasets {"sticker": dir, "movie": dir}, built once into ``<cache>/demo/v<N>/seed-<seed>/``
    (an artifact: see ``pigeon_bench.artifacts``). Other ``sizes`` get their own folder."""
    sizes = sizes or DemoSizes()
    name = f"seed-{seed}"
    if sizes != DemoSizes():
        name += "-" + "-".join(str(v) for v in dataclasses.astuple(sizes))

    def build(tmp: Path) -> None:
        write_demo_world(tmp / "world", seed, sizes)
        build_demo_datasets(tmp / "world", tmp, seed)

    final = artifacts.ensure(f"demo/v{DEMO_VERSION}", name, build, root=cache_root)
    return {"sticker": final / "sticker", "movie": final / "movie"}


def demo_dataset(scenario: str) -> Dataset:
    """The demo world's dataset of ``scenario`` (sticker or movie), built once into the cache."""
    from pigeon_bench.scenarios import scenarios

    return Dataset(ensure_demo_datasets()[scenarios.get(scenario).demo_key])

