"""Gesture media a person can watch and reuse: a stick-figure animation (GIF) beside the speech
(WAV), and the motion as BVH for any animation tool.

The animation shows two orthographic views side by side, front (x right, y up, looking down
-z at the body) and side (z to the right), each bone a line between its joint and its
parent, drawn with Pillow. GIF frame delays come in hundredths of a second, so each frame's
delay is the difference of rounded cumulative times, ``round(100 (i + 1) / fps) -
round(100 i / fps)`` hundredths: the animation's total length stays within 10 ms of the
motion's, and it plays in step with the WAV started at the same time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from mmflow.waveforms import save_wav

from .bvh import motion_to_bvh, write_bvh
from .skeleton import Skeleton, forward_kinematics, rotation_6d_to_matrix

PART_COLOURS = {"upper": (40, 90, 200), "hands": (210, 80, 40), "lower": (60, 150, 70)}


def gif_delays(frames: int, fps: float) -> list[int]:
    """Per-frame GIF delays in milliseconds (multiples of 10) whose running sum stays within
    10 ms of ``i / fps``."""
    ticks = np.round(100 * np.arange(frames + 1) / fps).astype(int)
    return [int(10 * d) for d in np.diff(ticks)]


def _views(positions: np.ndarray, size: int, margin: float = 0.1) -> tuple[np.ndarray, ...]:
    """Pixel coordinates ``[F, J, 2]`` of the front (x, y) and side (z, y) views, on one scale
    fitted to the whole motion so the figure does not jump."""
    low, high = positions.min(axis=(0, 1)), positions.max(axis=(0, 1))
    extent = float((high - low).max()) * (1 + 2 * margin) or 1.0
    centre = (low + high) / 2
    scale = size / extent

    def project(horizontal: int) -> np.ndarray:
        x = (positions[..., horizontal] - centre[horizontal]) * scale + size / 2
        y = size / 2 - (positions[..., 1] - centre[1]) * scale
        return np.stack([x, y], axis=-1)

    return project(0), project(2)


def render_frames(positions: np.ndarray, skeleton: Skeleton, size: int = 240) -> list[Image.Image]:
    """One RGB image per frame, ``2 size x size``: the front and side views of joint positions
    ``[F, J, 3]``, each bone coloured by the part of the joint whose rotation moves it (its
    parent's)."""
    if positions.ndim != 3 or positions.shape[1:] != (skeleton.num_joints, 3):
        raise ValueError(
            f"render_frames: positions must be [F, {skeleton.num_joints}, 3], got {positions.shape}"
        )
    part_of = {j: part for part, joints in skeleton.parts.items() for j in joints}
    front, side = _views(positions, size)
    images = []
    for frame in range(len(positions)):
        image = Image.new("RGB", (2 * size, size), "white")
        draw = ImageDraw.Draw(image)
        draw.line([(size, 0), (size, size)], fill=(200, 200, 200))
        for offset, view in ((0, front), (size, side)):
            for joint, parent in enumerate(skeleton.parents):
                if parent < 0:
                    continue
                start, end = view[frame, parent], view[frame, joint]
                colour = PART_COLOURS.get(part_of.get(parent, ""), (0, 0, 0))
                draw.line(
                    [(start[0] + offset, start[1]), (end[0] + offset, end[1])], fill=colour, width=3
                )
        images.append(image)
    return images


def save_gesture_media(
    directory: str | Path,
    name: str,
    skeleton: Skeleton,
    rotations: Tensor,
    root: Tensor,
    fps: float,
    wave: Tensor | None = None,
    sample_rate: int = 16000,
    animation_fps: float = 15.0,
    size: int = 240,
) -> list[Path]:
    """Write ``name.gif`` (the animation at ``animation_fps``, every ``fps / animation_fps``-th
    frame), ``name.wav`` (the speech, if given) and ``name.bvh`` (the motion at ``fps``) for one
    motion: 6-D ``rotations`` ``[F, J, 6]`` and ``root`` ``[F, 3]``. Returns the files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    matrices = rotation_6d_to_matrix(rotations.detach().double().cpu())
    root = root.detach().double().cpu()
    positions = forward_kinematics(skeleton, matrices, root).numpy()
    step = max(1, round(fps / animation_fps))
    shown = positions[::step]
    frames = render_frames(shown, skeleton, size)
    gif = directory / f"{name}.gif"
    frames[0].save(
        gif, save_all=True, append_images=frames[1:], duration=gif_delays(len(shown), fps / step),
        loop=0,
    )  # fmt: skip
    written = [gif]
    if wave is not None:
        written.append(
            save_wav(directory / f"{name}.wav", wave.detach().float().cpu(), sample_rate)
        )
    bvh = motion_to_bvh(skeleton, matrices, root, 1.0 / fps)
    written.append(write_bvh(bvh, directory / f"{name}.bvh"))
    return written


def contact_sheet(images: list[Image.Image], columns: int = 2) -> Image.Image:
    """The images on a grid, ``columns`` wide, in reading order."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * width, (index // columns) * height))
    return sheet


def main(argv: list[str] | None = None) -> list[Path]:
    """Write the media of one recording of the synthetic corpus, and a PNG of four of its
    frames one and a half seconds apart: ``python -m modalities.gesture.media --split test
    --index 0 --out outputs/gesture/media_example``."""
    from jsonargparse import ArgumentParser

    from .data import SyntheticCoSpeech
    from .skeleton import default_skeleton

    parser = ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/gesture/media_example"))
    args = parser.parse_args(argv)
    data = SyntheticCoSpeech()
    data.setup()
    recording = data.recordings[args.split][args.index]
    skeleton = default_skeleton()
    files = save_gesture_media(
        args.out, recording.name, skeleton, recording.rotations, recording.root, data.fps,
        recording.wave, data.sample_rate,
    )  # fmt: skip
    matrices = rotation_6d_to_matrix(recording.rotations.double())
    positions = forward_kinematics(skeleton, matrices, recording.root.double()).numpy()
    chosen = [round(data.fps * (1 + 1.5 * k)) for k in range(4)]
    sheet = contact_sheet(render_frames(positions[chosen], skeleton, size=160))
    files.append(args.out / f"{recording.name}_frames.png")
    sheet.convert("P", palette=Image.ADAPTIVE, colors=16).save(files[-1], optimize=True)
    print("\n".join(str(f) for f in files))
    return files


if __name__ == "__main__":
    main()
