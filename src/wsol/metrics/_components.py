"""Every contour box of every threshold of a CAM in one union-find pass (numba kernel).

wsolevaluation's box sweep (``compute_bboxes_from_scoremaps``) runs OpenCV's border
following (``findContours``, RETR_TREE) once per threshold and takes ``boundingRect`` of every
contour. For a binary map (outside the image counts as 0, as in OpenCV) those contours are
exactly (Suzuki & Abe, 1985; checked against ``findContours`` in the tests):

- one outer border per 8-connected component of 1-pixels — its bounding rectangle is the
  component's: (x_min, y_min, x_max, y_max);
- one hole border per 4-connected component of 0-pixels that does not reach the image
  border — the border runs through the 1-pixels 4-adjacent to the hole, so its rectangle is
  the hole's grown by one pixel: (x_min−1, y_min−1, x_max+1, y_max+1).

wsolevaluation turns a rectangle (x, y, w, h) into the box (x, y, min(x+w, W−1), min(y+h,
H−1)), i.e. (x_min, y_min, min(x_max+1, W−1), min(y_max+1, H−1)).

The upper level sets {q ≥ v} of a map grow as v decreases, so their 8-connected components
only merge: adding the pixels in decreasing order of value to a union-find (union by rank,
path halving) and reading the live components at each threshold gives every outer box of
every threshold in one pass. The lower level sets {q < v} grow as v increases, so the holes
come from a second pass in increasing order with 4-connectivity and a virtual node for
"outside the image"; it stops at the last threshold where a hole could still add a hit
(see :func:`level_set_hits`). Each component's best IoU with the ground-truth boxes is
recomputed only when its rectangle changed. The first pass also counts each component's
holes (Euler number) and bounds the area of its outer contour (cv2.contourArea), so MaxBoxAcc
(V1, the largest contour) needs OpenCV only where those bounds leave the answer open.
Cost: O(H·W·α) per image for all thresholds, against one ``findContours`` per threshold;
``benchmarks/bench_metrics.py`` measures it against wsolevaluation's loop.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numba import njit

from wsol.errors import MetricError


@njit(cache=True, nogil=True)
def _find(parent: np.ndarray, p: int) -> int:
    while parent[p] != p:
        parent[p] = parent[parent[p]]  # path halving
        p = parent[p]
    return p


@njit(cache=True, nogil=True)
def _unlist(r: int, live: np.ndarray, slot_of: np.ndarray, n_live: int) -> int:
    """Remove root ``r`` from the live list (if there); returns the new length."""
    s = slot_of[r]
    if s < 0:
        return n_live
    n_live -= 1
    live[s] = live[n_live]
    slot_of[live[s]] = s
    slot_of[r] = -1
    return n_live


@njit(cache=True, nogil=True, error_model="numpy")
def _best_iou(x0: int, y0: int, x1: int, y1: int, gt: np.ndarray) -> tuple[float, float]:
    """For the box (x0, y0, x1, y1): the max over the GT boxes of the IoU (inclusive pixel
    areas, the same float64 operations as ``wsol.metrics.boxes.box_iou``, so the same
    doubles), and of |box ∩ G| / |G| — a bound on the IoU of any box inside this one."""
    best, cover = -1.0, -1.0
    a0, b0, a1, b1 = float(x0), float(y0), float(x1), float(y1)
    area_a = (a1 - a0 + 1) * (b1 - b0 + 1)
    for k in range(gt.shape[0]):
        iw = min(a1, gt[k, 2]) - max(a0, gt[k, 0]) + 1
        ih = min(b1, gt[k, 3]) - max(b0, gt[k, 1]) + 1
        inter = max(iw, 0.0) * max(ih, 0.0)
        area_b = (gt[k, 2] - gt[k, 0] + 1) * (gt[k, 3] - gt[k, 1] + 1)
        iou = inter / (area_a + area_b - inter)
        if k == 0 or iou > best:
            best = iou
        if k == 0 or inter / area_b > cover:
            cover = inter / area_b
    return best, cover


def _run_starts(eight: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each 8-bit set of added neighbours (bit k: neighbour k in the cyclic order NW, N,
    NE, E, SE, S, SW, W), the neighbours through which p joins a distinct run: two cyclically
    consecutive neighbours are 4-adjacent, so a run of added neighbours lies in one component
    of either connectivity and needs one find. 8-connectivity: the first neighbour of each
    run. 4-connectivity: the axis neighbours (odd k), except one joined to the previous axis
    neighbour through the diagonal between them. All eight added: neighbour N alone."""
    starts = np.zeros((256, 4), dtype=np.int64)
    count = np.zeros(256, dtype=np.int64)
    for mask in range(256):
        on = [(mask >> k) & 1 == 1 for k in range(8)]
        if eight:
            ks = [k for k in range(8) if on[k] and not on[k - 1]]
        else:
            ks = [k for k in (1, 3, 5, 7) if on[k] and not (on[k - 1] and on[k - 2])]
        if not ks and mask == 255:
            ks = [1]
        starts[mask, : len(ks)] = ks
        count[mask] = len(ks)
    return starts, count


def _euler_steps() -> np.ndarray:
    """For each 8-bit set of neighbours already in the map (cyclic order of
    :func:`_run_starts`): the change of the Euler number (8-connected components minus
    4-connected holes) when the centre pixel joins the map, from Gray's bit-quad count
    E = (n(Q1) − n(Q3) − 2·n(QD)) / 4 over the four 2×2 quads that hold the centre."""
    quad_sets = ((0, 1, 7, None), (1, 2, None, 3), (7, None, 6, 5), (None, 3, 5, 4))  # TL, TR, BL, BR

    def weight(bits: tuple[int, int, int, int]) -> int:
        n = sum(bits)
        if n == 1:
            return 1
        if n == 3:
            return -1
        return -2 if bits in ((1, 0, 0, 1), (0, 1, 1, 0)) else 0

    steps = np.zeros(256, dtype=np.int64)
    for mask in range(256):
        total = 0
        for quad in quad_sets:
            before = tuple(0 if k is None else (mask >> k) & 1 for k in quad)
            after = tuple(1 if k is None else (mask >> k) & 1 for k in quad)
            total += weight(after) - weight(before)  # type: ignore[arg-type]
        assert total % 4 == 0
        steps[mask] = total // 4
    return steps


_EULER_STEPS = _euler_steps()
#: change of a component's 4-perimeter (pixel edges to non-members) when a pixel joins it:
#: +4 for its own edges, −2 for each axis neighbour (odd k) already in the map
_PERIMETER_STEPS = np.array([4 - 2 * bin(mask & 0b10101010).count("1") for mask in range(256)], dtype=np.int64)
_STARTS_8 = _run_starts(True)
_STARTS_4 = _run_starts(False)


@njit(cache=True, nogil=True)
def _prepare(q, f, mask, order):
    """The pixels in the order the upper level sets take them: decreasing value, raster
    order among equal values (counting sort), written to ``order`` as int64 records: framed
    index p (stride W + 2; bits 0–30), row (bits 31–45) and the bit set of the neighbours
    taken before the pixel (bits 46–53; bit k for neighbour k of the cyclic order of
    :func:`_run_starts`; the frame is never taken). Returns ``n_ge[t]``, the number of
    pixels with value ≥ t (t = 0..256). The lower level sets take the pixels in the
    reverse order, so there the neighbours taken before are the complement of the bit set
    (the frame then counts as taken: it is the outside). Buffers (see :class:`_Workspace`):
    ``f`` the map in a frame of −1 (the frame already set), ``mask`` H×W."""
    H, W = q.shape
    S = W + 2
    f[1:-1, 1:-1] = q
    for y in range(1, H + 1):
        for x in range(1, W + 1):
            c = f[y, x]
            # neighbours earlier in raster order are taken first on a tie (≥), later ones not (>)
            mask[y - 1, x - 1] = (
                (f[y - 1, x - 1] >= c)
                | (f[y - 1, x] >= c) << 1
                | (f[y - 1, x + 1] >= c) << 2
                | (f[y, x + 1] > c) << 3
                | (f[y + 1, x + 1] > c) << 4
                | (f[y + 1, x] > c) << 5
                | (f[y + 1, x - 1] > c) << 6
                | (f[y, x - 1] >= c) << 7
            )
    n_ge = np.zeros(257, dtype=np.int64)
    for y in range(H):
        for x in range(W):
            n_ge[q[y, x]] += 1
    for t in range(255, -1, -1):  # histogram → pixels with value ≥ t
        n_ge[t] += n_ge[t + 1]
    nxt = n_ge[1:].copy()  # next free slot of value v: after all the pixels of value > v
    for y in range(H):
        for x in range(W):
            v = q[y, x]
            i = nxt[v]
            order[i] = ((y + 1) * S + x + 1) | (y << 31) | (np.int64(mask[y, x]) << 46)
            nxt[v] = i + 1
    return n_ge


@njit(nogil=True, error_model="numpy", inline="always")
def _sweep_pass(H, W, order, n_ge, starts, n_starts, values, gt, holes,
                parent, rank, box, iou, cover, dirty, n_holes, size, perimeter, live, slot_of):
    """The contours of each level set, in one pass over the pixels prepared by
    :func:`_prepare`.

    ``holes=False``: 8-connected components of {q ≥ v} for v in ``values`` (non-increasing,
    0..256), pixels taken from the front of the order, boxes grown by 0.
    ``holes=True``: 4-connected components of {q < v} that do not reach the image border,
    for v in ``values`` (non-decreasing), pixels taken from the back of the order, boxes
    grown by 1; the frame is one component (root 0), present from the start, that the
    components reaching the border join.
    Returns per value: the max and the min over the components of their best IoU with
    ``gt`` (−1 and 2 when there is none); the bounding rectangle of all the components
    (x_min, y_min, x_max, y_max); and, upper level sets only (else −1, 2, −1, 0):

    - the max and min best IoU over the components whose outer contour may be the largest
      one (cv2.contourArea). The area A of an outer contour (a polygon through pixel
      centres) lies between N − P/2 + 1 (N pixels, P pixel edges to non-members: equal for
      rectangles) and (w − 1)(h − 1) of its bounding rectangle, and A ≤ N − 1 without holes
      (Pick's theorem for simple contours; the bounds were checked on 55,000 random
      components, and the tests check the candidates against OpenCV's largest contour); a component whose
      upper bound is below the largest lower bound is never the largest (and a hole's
      contour never exceeds its component's outer contour);
    - the max of the bound |box ∩ G| / |G| on a hole's IoU (see :func:`_best_iou`) over
      the components that enclose a hole;
    - the number of holes. Each component's holes are counted as it grows: a pixel joining
      the map changes the Euler number (components − holes) by ``_EULER_STEPS[mask]`` and
      the number of components by 1 − (the number of components it joins).

    Buffers, one entry per framed pixel (see :class:`_Workspace`), none needing clearing (a
    pixel's entries are written when it is taken, a root's when it is created, and only
    taken pixels and roots are read): union-find ``parent`` and ``rank``; per root its
    ``box`` (x_min, y_min, x_max, y_max), best ``iou`` and ``cover`` bound, ``dirty`` (box
    changed since they were computed), ``n_holes``, ``size`` and ``perimeter``; ``live``:
    the counted roots, ``slot_of`` their slots."""
    S = W + 2
    n = (H + 2) * S
    deltas = np.array([-S - 1, -S, -S + 1, 1, S + 1, S, S - 1, -1], dtype=np.int64)
    jump = np.empty((256, 4), dtype=np.int64)  # offset of each run's first neighbour, per mask
    for a in range(256):
        for b in range(4):
            jump[a, b] = deltas[starts[a, b]]
    n_live = 0
    if holes:  # the frame: one component rooted at index 0, never counted, never outranked
        for y in range(H + 2):
            parent[y * S] = 0
            parent[y * S + S - 1] = 0
        for x in range(S):
            parent[x] = 0
            parent[(H + 1) * S + x] = 0
        rank[0] = n
        slot_of[0] = -1
        n_holes[0] = 0
    grow = 1 if holes else 0
    keep = 0 if holes else 255  # the taken-before bits are the complement in the hole pass

    m = values.shape[0]
    out_max = np.empty(m, dtype=np.float64)
    out_min = np.empty(m, dtype=np.float64)
    out_cover = np.empty(m, dtype=np.float64)
    out_box = np.empty((m, 4), dtype=np.int64)
    out_holes = np.zeros(m, dtype=np.int64)
    out_big_max = np.empty(m, dtype=np.float64)
    out_big_min = np.empty(m, dtype=np.float64)
    total = H * W
    done = 0
    for j in range(m):
        # pixels of {q ≥ v} (front of the order) or {q < v} (back)
        upto = total - n_ge[values[j]] if holes else n_ge[values[j]]
        for k in range(done, upto):
            i = total - 1 - k if holes else k
            packed = order[i]
            p, py = packed & 0x7FFFFFFF, (packed >> 31) & 0x7FFF
            px = p - (py + 1) * S - 1
            mask = (packed >> 46) ^ keep ^ 255
            root = -1  # root of p's component once p has joined one
            touched = 0  # distinct components p joins
            for r in range(n_starts[mask]):
                other = _find(parent, p + jump[mask, r])
                if root < 0:  # p joins its first neighbour's component
                    parent[p] = other
                    root = other
                    touched = 1
                    size[other] += 1
                    if other != 0 and (
                        px < box[other, 0] or py < box[other, 1] or px > box[other, 2] or py > box[other, 3]
                    ):
                        box[other, 0] = min(box[other, 0], px)
                        box[other, 1] = min(box[other, 1], py)
                        box[other, 2] = max(box[other, 2], px)
                        box[other, 3] = max(box[other, 3], py)
                        dirty[other] = True
                    continue
                if other == root:
                    continue
                if rank[root] >= rank[other]:  # union by rank
                    ra, rb = root, other
                else:
                    ra, rb = other, root
                parent[rb] = ra  # rb joins ra
                if rank[ra] == rank[rb]:
                    rank[ra] += 1
                n_holes[ra] += n_holes[rb]
                size[ra] += size[rb]
                perimeter[ra] += perimeter[rb]
                touched += 1
                n_live = _unlist(rb, live, slot_of, n_live)
                root = ra
                if ra != 0:
                    box[ra, 0] = min(box[ra, 0], box[rb, 0])
                    box[ra, 1] = min(box[ra, 1], box[rb, 1])
                    box[ra, 2] = max(box[ra, 2], box[rb, 2])
                    box[ra, 3] = max(box[ra, 3], box[rb, 3])
                    dirty[ra] = True
            if root < 0:  # no neighbour yet: a new component
                parent[p] = p
                rank[p] = 0
                n_holes[p] = 0
                size[p] = 1
                perimeter[p] = 0
                box[p, 0] = box[p, 2] = px
                box[p, 1] = box[p, 3] = py
                dirty[p] = True
                slot_of[p] = n_live
                live[n_live] = p
                n_live += 1
                root = p
            if not holes:  # holes = components − Euler number: Δholes = Δcomponents − ΔEuler
                n_holes[root] += 1 - touched - _EULER_STEPS[mask]
                perimeter[root] += _PERIMETER_STEPS[mask]
        done = max(done, upto)
        lo, hi, cov = 2.0, -1.0, -1.0
        bx0, by0, bx1, by1 = W, H, -1, -1
        largest_low = -1  # 2 × the largest lower bound of an outer contour's area
        for s in range(n_live):
            r = live[s]
            if dirty[r]:
                iou[r], cover[r] = _best_iou(
                    box[r, 0] - grow,
                    box[r, 1] - grow,
                    min(box[r, 2] + 1 + grow, W - 1),
                    min(box[r, 3] + 1 + grow, H - 1),
                    gt,
                )
                dirty[r] = False
            hi = max(hi, iou[r])
            lo = min(lo, iou[r])
            bx0, by0 = min(bx0, box[r, 0]), min(by0, box[r, 1])
            bx1, by1 = max(bx1, box[r, 2]), max(by1, box[r, 3])
            if not holes:
                largest_low = max(largest_low, 2 * size[r] - perimeter[r] + 2)
                if n_holes[r] > 0:
                    cov = max(cov, cover[r])
                    out_holes[j] += n_holes[r]
        big_lo, big_hi = 2.0, -1.0
        for s in range(n_live if not holes else 0):
            r = live[s]
            high = (box[r, 2] - box[r, 0]) * (box[r, 3] - box[r, 1])  # upper bound of the area
            if n_holes[r] == 0:
                high = min(high, size[r] - 1)
            if 2 * high >= largest_low:  # may be the largest
                big_hi = max(big_hi, iou[r])
                big_lo = min(big_lo, iou[r])
        out_max[j], out_min[j], out_cover[j] = hi, lo, cov
        out_big_max[j], out_big_min[j] = big_hi, big_lo
        out_box[j, 0], out_box[j, 1], out_box[j, 2], out_box[j, 3] = bx0, by0, bx1, by1
    return out_max, out_min, out_box, out_big_max, out_big_min, out_cover, out_holes


@njit(cache=True, nogil=True, error_model="numpy")
def _sweep_upper(H, W, order, n_ge, starts, n_starts, values, gt,
                 parent, rank, box, iou, cover, dirty, n_holes, size, perimeter, live, slot_of):
    """:func:`_sweep_pass` over the upper level sets (its own compiled code: ``holes`` is a
    constant there, its branches folded away)."""
    return _sweep_pass(H, W, order, n_ge, starts, n_starts, values, gt, False,
                       parent, rank, box, iou, cover, dirty, n_holes, size, perimeter, live, slot_of)


@njit(cache=True, nogil=True, error_model="numpy")
def _sweep_lower(H, W, order, n_ge, starts, n_starts, values, gt,
                 parent, rank, box, iou, cover, dirty, n_holes, size, perimeter, live, slot_of):
    """:func:`_sweep_pass` over the lower level sets (the holes)."""
    return _sweep_pass(H, W, order, n_ge, starts, n_starts, values, gt, True,
                       parent, rank, box, iou, cover, dirty, n_holes, size, perimeter, live, slot_of)


class _Workspace(threading.local):
    """Per-thread buffers of the kernels (≈ 60 bytes per pixel), reused across images of one
    size: fresh multi-megabyte arrays would cost a page fault per 4 KiB on every call. Only
    maps up to ``KEEP_PIXELS`` are kept between calls, so a large map's buffers are freed."""

    KEEP_PIXELS = 1 << 18  # ≈ 16 MB per thread
    shape: tuple[int, int] | None = None
    prep: tuple[np.ndarray, ...]
    order: tuple[np.ndarray, ...]
    sweep: tuple[np.ndarray, ...]

    def get(self, H: int, W: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        if self.shape == (H, W):
            return self.prep, self.order, self.sweep
        n = (H + 2) * (W + 2)
        buffers = (
            (np.full((H + 2, W + 2), -1, dtype=np.int16), np.empty((H, W), dtype=np.uint8)),
            (np.empty(H * W, dtype=np.int64),),
            (
                np.empty(n, dtype=np.int32),  # parent
                np.empty(n, dtype=np.int32),  # rank
                np.empty((n, 4), dtype=np.int32),  # box
                np.empty(n, dtype=np.float64),  # iou
                np.empty(n, dtype=np.float64),  # cover
                np.empty(n, dtype=np.bool_),  # dirty
                np.empty(n, dtype=np.int32),  # n_holes
                np.empty(n, dtype=np.int32),  # size
                np.empty(n, dtype=np.int32),  # perimeter
                np.empty(n, dtype=np.int32),  # live
                np.empty(n, dtype=np.int32),  # slot_of
            ),
        )
        if n <= self.KEEP_PIXELS:
            self.shape = (H, W)
            self.prep, self.order, self.sweep = buffers
        return buffers


_WORKSPACE = _Workspace()


def level_set_hits(
    q: np.ndarray, thresholds: np.ndarray, gt: np.ndarray, deltas: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The contours of the maps {q ≥ t}, t in ``thresholds`` (non-decreasing, 0..256), as
    findContours (RETR_TREE) finds them. ``q``: H×W uint8; ``gt``: K×4 boxes. Returns
    per threshold:

    - ``hits`` (len(deltas) × L): some contour's box has IoU ≥ δ with a ``gt`` box;
    - ``big_max``, ``big_min``: max and min best IoU over the contours that may be the
      largest (−1 and 2 where the map is empty): where both are on one side of a δ, so is
      the largest contour's;
    - ``extent`` (L × 4): bounding rectangle of the map's pixels (x_min, y_min, x_max, y_max);
    - ``count``: the number of pixels of the map (equal counts: equal maps).

    The hole pass runs only as far as it can change an answer: a hole's box lies inside its
    component's box B, so its IoU with a box G is at most |B ∩ G| / |G|; where that bound,
    over the components that enclose a hole, stays below every δ the outer contours miss,
    holes cannot add a hit."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    gt = np.ascontiguousarray(gt, dtype=np.float64)
    t = np.ascontiguousarray(thresholds, dtype=np.int64)
    d = np.asarray(deltas, dtype=np.float64)[:, None]
    H, W = q.shape
    if H >= 2**15 or W >= 2**15:
        raise MetricError(
            f"box metrics: CAMs up to 32767 pixels a side, got {H}×{W}; evaluate boxes on CAMs resized "
            "to the image size (or smaller), as wsolevaluation does"
        )
    prep, order, work = _WORKSPACE.get(H, W)
    n_ge = _prepare(q, *prep, *order)
    upper: Any = _sweep_upper  # numba dispatchers: mypy cannot see the kernels' signatures
    lower: Any = _sweep_lower
    outer_max, _, extent, big_max, big_min, cover, _ = (
        a[::-1] for a in upper(H, W, *order, n_ge, *_STARTS_8, t[::-1].copy(), gt, *work)
    )
    hits = outer_max[None] >= d
    need = ((cover[None] >= d) & ~hits).any(axis=0)
    if need.any():
        last = int(np.flatnonzero(need)[-1]) + 1
        hole_max = lower(H, W, *order, n_ge, *_STARTS_4, t[:last].copy(), gt, *work)[0]
        hits[:, :last] |= hole_max[None] >= d
    return hits, big_max, big_min, extent, n_ge[t]
