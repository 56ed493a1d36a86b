"""A generated image folder with every kind of file users point the tool at by accident."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import draw

#: Files the pre-scan must exclude, by name, with the class folder they sit in.
BAD = {
    "empty.jpg": "cat",
    "truncated.jpg": "cat",
    "notes.jpg": "dog",  # text with an image extension
    "icon.png": "dog",  # an ICO file: a format outside the allow-list
    "bomb.png": "cat",  # over the pixel limit the test sets
}
#: Valid images in unusual forms, each must load as a 3-channel image.
ODD = (
    "cmyk.jpg",
    "rgba.png",
    "palette_transparent.png",
    "sixteen_bit.png",
    "one_bit.png",
    "grey.png",
    "UPPER.JPG",
    "photo.webp",
    "scan.tif",
    "animated.gif",
    "rotated.jpg",
    "bad_exif.jpg",
)


def _jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def make_hostile(root: Path) -> Path:
    """``root/{train,val}/{cat,dog}`` with good, odd, bad and junk files, and a symlink."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            (folder / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                target = folder if i % 2 else folder / "nested" / "deeper"
                draw(label, rng).save(target / f"{name}{i}.png")
    train = root / "train"
    cat, dog = train / "cat", train / "dog"
    colour = draw(0, rng)
    # Unusable files.
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "truncated.jpg").write_bytes(_jpeg_bytes(colour)[:400])
    (dog / "notes.jpg").write_text("this is not an image\n")
    colour.save(dog / "icon.png", format="ICO")
    Image.new("L", (200, 200)).save(cat / "bomb.png")
    # Odd but valid images.
    Image.new("CMYK", (40, 40), (0, 200, 200, 0)).save(cat / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(cat / "rgba.png")
    palette = colour.convert("P")
    palette.info["transparency"] = 0
    palette.save(cat / "palette_transparent.png", transparency=0)
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(cat / "sixteen_bit.png")
    colour.convert("1").save(cat / "one_bit.png")
    colour.convert("L").save(cat / "grey.png")
    colour.save(cat / "UPPER.JPG", format="JPEG")
    colour.save(dog / "photo.webp", format="WEBP")
    colour.save(dog / "scan.tif", format="TIFF")
    frames = [colour, draw(1, rng)]
    frames[0].save(dog / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    wide = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: 60x20 becomes 20x60
    wide.save(dog / "rotated.jpg", exif=exif.tobytes())
    good = _jpeg_bytes(colour)
    broken_exif = good[:2] + b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\xff" + good[2:]
    (dog / "bad_exif.jpg").write_bytes(broken_exif)
    # Junk that is not an image, and folders that are not classes.
    for junk in (".DS_Store", "Thumbs.db", "desktop.ini"):
        (cat / junk).write_bytes(b"\x00junk")
    (train / "README.md").write_text("about this data\n")
    for hidden in (".ipynb_checkpoints", ".git", "__MACOSX"):
        (train / hidden).mkdir()
        colour.save(train / hidden / "x.png")
    return root


def add_symlink_cycle(root: Path) -> None:
    """A link inside a class folder pointing back at the class folder."""
    os.symlink(root / "train" / "cat", root / "train" / "cat" / "nested" / "loop")
