"""Heatmaps and overlays of CAMs as RGB uint8 arrays (OpenCV colour maps), and PNG output."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wsol.fileio import atomic_write_bytes


def heatmap(cam: np.ndarray) -> np.ndarray:
    """CAM H×W in [0, 1] -> RGB H×W×3 uint8 (jet colour map)."""
    u8 = np.clip(np.asarray(cam, dtype=np.float32) * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the CAM heatmap over an RGB uint8 image of the same size."""
    return (alpha * heatmap(cam).astype(np.float32) + (1 - alpha) * image.astype(np.float32)).round().astype(np.uint8)


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    """Mask 0/1/255 -> RGB: ROI white, background black, ignore grey."""
    m = np.asarray(mask)
    out = np.zeros((*m.shape, 3), np.uint8)
    out[m == 1] = 255
    out[m == 255] = 128
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def save_png(path: Path, rgb: np.ndarray) -> None:
    atomic_write_bytes(Path(path), encode_png(rgb))
